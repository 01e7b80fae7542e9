"""Local backup files (names, metadata, leftovers) and restore targets, without a database."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backup.dumps import Dumps
from backup.errors import BackupError
from backup.restore import parse_target


def test_names_newest_first_and_their_times(tmp_path: Path) -> None:
    for name in ("berth-20261124T030000Z.dump", "berth-20261125T030000Z.dump",
                 "other-20261126T030000Z.dump", "berth-20261126T030000Z.dump.meta"):  # fmt: skip
        (tmp_path / name).write_text("x")
    dumps = Dumps(tmp_path, "berth")
    assert dumps.names() == ["berth-20261125T030000Z.dump", "berth-20261124T030000Z.dump"]
    assert dumps.stamp("berth-20261125T030000Z.dump") == datetime(2026, 11, 25, 3, tzinfo=UTC)


def test_a_new_name_is_never_one_that_exists(tmp_path: Path) -> None:
    dumps = Dumps(tmp_path, "berth")
    first = dumps.new_name()
    (tmp_path / first).write_text("taken")
    started = time.monotonic()
    second = dumps.new_name()
    assert second != first
    assert time.monotonic() - started < 1.5  # the next second, not longer


def test_metadata_in_both_formats(tmp_path: Path) -> None:
    dumps = Dumps(tmp_path, "berth")
    (tmp_path / "berth-20261124T030000Z.dump.meta").write_text("revision=0001\n")
    assert dumps.meta("berth-20261124T030000Z.dump") == {"revision": "0001"}
    dumps.update_meta("berth-20261124T030000Z.dump", offsite={"sha256": "ab"})
    stored = json.loads((tmp_path / "berth-20261124T030000Z.dump.meta").read_text())
    assert stored == {"revision": "0001", "offsite": {"sha256": "ab"}}


def test_leftovers_are_partial_files_only(tmp_path: Path) -> None:
    for name in (".berth-20261124T030000Z.dump.partial", ".restore-x.dump.partial",
                 "berth-20261124T030000Z.dump", ".state.json"):  # fmt: skip
        (tmp_path / name).write_text("x")
    removed = Dumps(tmp_path, "berth").remove_leftovers()
    assert sorted(removed) == [".berth-20261124T030000Z.dump.partial", ".restore-x.dump.partial"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".state.json", "berth-20261124T030000Z.dump",
    ]  # fmt: skip


def test_restore_targets() -> None:
    assert parse_target("latest") is None
    assert parse_target("2026-11-24T10:15:00Z") == datetime(2026, 11, 24, 10, 15, tzinfo=UTC)
    moment = parse_target("2026-11-24 11:15:00.5+01:00")
    assert moment is not None
    assert moment.astimezone(UTC) == datetime(2026, 11, 24, 10, 15, 0, 500000, tzinfo=UTC)
    with pytest.raises(BackupError, match="has no time zone"):
        parse_target("2026-11-24 10:15")
    with pytest.raises(BackupError, match="is not a time"):
        parse_target("yesterday")
