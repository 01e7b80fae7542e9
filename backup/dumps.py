"""Local dumps: `<db>-<UTC time>.dump` files (pg_dump's custom format) in the backup
directory, each with a `.meta` file beside it (JSON: the Alembic revision inside the dump,
its off-site copy, its last verification).

A dump is written under a temporary name, read back in full with pg_restore, and only then
renamed into place: a `.dump` file is always a whole, readable backup."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backup.errors import BackupError
from backup.state import write_json
from backup.tools import run

STAMP = "%Y%m%dT%H%M%SZ"


def dump_revision(path: Path, env: Mapping[str, str]) -> str:
    """Alembic's revision as stored in a dump: the one row of alembic_version's data.
    Empty when the dump has no such table (a database never migrated)."""
    try:
        text = run(
            ["pg_restore", "--data-only", "--table=alembic_version", "--file=-", str(path)],
            env=env,
        )
    except BackupError:
        return ""
    copying = False
    for line in text.splitlines():
        if line.startswith("COPY "):
            copying = True
        elif copying and line != "\\.":
            return line.strip()
        elif copying:
            return ""
    return ""


class Dumps:
    def __init__(self, directory: Path, database: str) -> None:
        self.directory = directory
        self.database = database
        self.pattern = re.compile(rf"^{re.escape(database)}-([0-9]{{8}}T[0-9]{{6}}Z)\.dump$")

    # -- naming ----------------------------------------------------------------------
    def names(self) -> list[str]:
        """Backup file names, newest first."""
        try:
            found = [p.name for p in self.directory.iterdir() if self.pattern.match(p.name)]
        except OSError as error:
            raise BackupError(f"cannot read {self.directory}: {error.strerror}") from None
        return sorted(found, reverse=True)

    def stamp(self, name: str) -> datetime:
        match = self.pattern.match(name)
        if not match:
            raise BackupError(f"{name} is not a backup file name ({self.database}-<time>.dump)")
        return datetime.strptime(match.group(1), STAMP).replace(tzinfo=UTC)

    def path(self, name: str) -> Path:
        return self.directory / name

    # -- metadata --------------------------------------------------------------------
    def meta(self, name: str) -> dict[str, Any]:
        try:
            text = (self.directory / f"{name}.meta").read_text()
        except OSError:
            return {}
        try:
            data = json.loads(text)
        except ValueError:  # the first format: revision=<rev> lines
            pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
            return {key: value for key, value in pairs}
        return data if isinstance(data, dict) else {}

    def update_meta(self, name: str, **values: Any) -> None:
        meta = self.meta(name)
        meta.update(values)
        write_json(self.directory / f"{name}.meta", meta)

    def remove(self, name: str) -> None:
        for path in (self.path(name), self.directory / f"{name}.meta"):
            path.unlink(missing_ok=True)

    def remove_leftovers(self) -> list[str]:
        """Partial files from a run that was killed (a stop that outlasted the grace
        period, a crash, a lost host). Only call this holding the run lock."""
        removed = []
        for path in self.directory.glob(".*.partial"):
            path.unlink(missing_ok=True)
            removed.append(path.name)
        return removed

    # -- taking one ------------------------------------------------------------------
    def new_name(self) -> str:
        """A name no backup has: two runs in the same second take the next second."""
        while True:
            name = f"{self.database}-{time.strftime(STAMP, time.gmtime())}.dump"
            if not self.path(name).exists():
                return name
            time.sleep(1.01 - time.time() % 1)

    def take(self, env: Mapping[str, str]) -> tuple[str, str]:
        """pg_dump (one snapshot, so consistent under write load), read back in full, then
        renamed into place. Returns the name and the Alembic revision inside it."""
        name = self.new_name()
        partial = self.directory / f".{name}.partial"
        try:
            run(
                ["pg_dump", "--format=custom", "--compress=6", f"--file={partial}"],
                env=env,
                what="pg_dump",
            )
            # Every byte read back (all data decompressed): a dump that cannot restore is a
            # failed backup now, not a surprise later.
            run(
                ["pg_restore", "--file=/dev/null", str(partial)],
                env=env,
                what="the new dump does not read back",
            )
            # The revision inside this dump's snapshot, read from the dump: asking the server
            # again could see a later migration, or no server at all.
            revision = dump_revision(partial, env)
            write_json(
                self.directory / f"{name}.meta",
                {
                    "revision": revision or "none",
                    "created": time.time(),
                    "bytes": partial.stat().st_size,
                },
            )
            partial.replace(self.path(name))
        except OSError as error:
            partial.unlink(missing_ok=True)
            raise BackupError(
                f"could not write {name} into {self.directory}: {error.strerror}"
            ) from None
        except BaseException:
            partial.unlink(missing_ok=True)
            if not self.path(name).exists():
                (self.directory / f"{name}.meta").unlink(missing_ok=True)
            raise
        return name, revision
