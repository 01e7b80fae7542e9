"""Every variable the backup service reads is documented in .env.example and passed
through by compose.yaml: a setting that Compose drops would silently do nothing."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def read_by_the_service() -> set[str]:
    names: set[str] = set()
    for source in (ROOT / "backup").glob("*.py"):
        names |= set(re.findall(r'"(BACKUP_[A-Z0-9_]+?)(?:_FILE)?"', source.read_text()))
    return names


def test_every_backup_variable_is_documented_and_passed_through() -> None:
    names = read_by_the_service()
    assert {"BACKUP_SCHEDULE", "BACKUP_S3_BUCKET", "BACKUP_PITR_PASSPHRASE"} <= names
    example = (ROOT / ".env.example").read_text()
    compose = (ROOT / "compose.yaml").read_text()
    names.discard("BACKUP_MAX_AGE_HOURS")  # read only to say it was replaced
    names.discard("BACKUP_DIR")  # the path inside the container, fixed by compose.yaml
    undocumented = {name for name in names if not re.search(rf"^# {name}=", example, re.M)}
    assert not undocumented
    dropped = {name for name in names if not re.search(rf"^\s+{name}:", compose, re.M)}
    assert not dropped
