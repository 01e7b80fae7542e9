"""What the health check, the metrics and `list` read: each step's last success and last
failure, kept as JSON in the backup directory (so a manual `backup now` in another
container counts too), and the scheduler's live figures in /tmp (a tmpfs, gone on restart).

Backups, uploads, verifications and restores take the run lock (`.lock`), so two of them
never overlap: a scheduled backup and a manual one in the same second cannot collide, and
whatever `.partial` file exists while the lock is held is left over from a killed run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from backup.errors import BackupError
from backup.tools import log

LIVE_FILE = Path("/tmp/berth-backup-live.json")  # noqa: S108 (the container's own tmpfs)


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically: a reader sees the old file or the new one, never half of one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data, indent=1, sort_keys=True))
    temporary.replace(path)


@contextlib.contextmanager
def locked(path: Path, *, waiting: str = "") -> Iterator[None]:
    """An exclusive flock on `path`, held for the block; says so if it has to wait."""
    try:
        handle = path.open("a")
    except OSError as error:
        raise BackupError(f"cannot write to {path.parent}: {error.strerror}") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                log(waiting)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


class State:
    """The results file, `<backup dir>/.state.json`: one section per step."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / ".state.json"
        self.lock = directory / ".state.lock"

    def read(self) -> dict[str, Any]:
        return read_json(self.path)

    def section(self, step: str) -> dict[str, Any]:
        value = self.read().get(step)
        return value if isinstance(value, dict) else {}

    def update(self, step: str, /, **values: Any) -> None:
        with locked(self.lock):
            data = self.read()
            section: dict[str, Any] = {}
            if isinstance(data.get(step), dict):
                section = data[step]
            section.update(values)
            data[step] = section
            write_json(self.path, data)

    def succeeded(self, step: str, /, **values: Any) -> None:
        self.update(step, last_success=time.time(), error="", retry_at=None, **values)

    def failed(self, step: str, error: str, /, **values: Any) -> None:
        self.update(step, last_failure=time.time(), error=error, **values)


def failing(section: dict[str, Any]) -> bool:
    """The step's last attempt failed."""
    return float(section.get("last_failure") or 0) > float(section.get("last_success") or 0)
