"""The steps, each run under the run lock, each recording its outcome for the health
check and the metrics: a dump, its off-site copy, a pgBackRest base backup, retention on
both sides, and the verification of the newest backup."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from backup.config import Settings, postgres_env
from backup.dumps import Dumps
from backup.errors import BackupError
from backup.offsite import Offsite
from backup.pitr import Pgbackrest, newest_base
from backup.retention import to_keep
from backup.schedule import format_duration
from backup.state import State, locked
from backup.tools import (
    alembic_revision,
    log,
    psql,
    quote_identifier,
    quote_literal,
    restore_into_new_database,
)


def human_size(size: float) -> str:
    for unit in ("B", "K", "M", "G"):
        if size < 1024 or unit == "G":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}T"


class Operations:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.env = postgres_env()
        self.dumps = Dumps(settings.directory, settings.database)
        self.state = State(settings.directory)
        self.offsite = (
            Offsite(settings.s3, settings.age_recipient) if settings.s3 is not None else None
        )
        self.pgbackrest = (
            Pgbackrest(
                settings.s3,
                settings.pitr,
                pgdata=settings.pgdata,
                pg_user=settings.pg_user,
                postgres_env=self.env,
            )
            if settings.s3 is not None and settings.pitr is not None
            else None
        )

    # -- the run lock --------------------------------------------------------------
    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the run lock; whatever partial file exists then is from a killed run."""
        with locked(
            self.settings.directory / ".lock",
            waiting="waiting for the backup run in progress to finish",
        ):
            for name in self.dumps.remove_leftovers():
                log(f"removed {name}, left by an interrupted run")
            yield

    # -- a dump --------------------------------------------------------------------
    def dump(self) -> str:
        try:
            name, revision = self.dumps.take(self.env)
        except BackupError as error:
            self.state.failed("backup", str(error))
            log(f"error: backup failed: {error}")
            raise
        size = human_size(self.dumps.path(name).stat().st_size)
        self.state.succeeded("backup", name=name)
        log(f"wrote {name} ({size}, alembic revision {revision or 'none'})")
        return name

    def protected(self) -> set[str]:
        """Never pruned: the newest backup verified good."""
        good = self.state.section("verify").get("good")
        return {good} if isinstance(good, str) and good else set()

    def prune(self) -> None:
        names = self.dumps.names()
        stamps = {name: self.dumps.stamp(name) for name in names}
        protected = self.protected() | self.awaiting_upload(names)
        keep = to_keep(
            stamps,
            daily=self.settings.keep_daily,
            weekly=self.settings.keep_weekly,
            protected=protected,
        )
        for name in names:
            if name not in keep:
                self.dumps.remove(name)
                log(f"pruned {name}")

    # -- off-site ------------------------------------------------------------------
    def awaiting_upload(self, names: list[str] | None = None) -> set[str]:
        """Local backups with no off-site copy yet that off-site retention would keep."""
        if self.offsite is None:
            return set()
        names = self.dumps.names() if names is None else names
        pending = {name for name in names if not self.dumps.meta(name).get("offsite")}
        if not pending:
            return set()
        uploaded = {name for name in names if self.dumps.meta(name).get("offsite")}
        stamps = {name: self.dumps.stamp(name) for name in pending | uploaded}
        keep = to_keep(
            stamps, daily=self.settings.offsite_keep_daily, weekly=self.settings.offsite_keep_weekly
        )
        return pending & keep

    def upload(self) -> int:
        """Copy every local backup still awaiting its off-site copy, newest first."""
        assert self.offsite is not None
        uploaded = 0
        try:
            for name in sorted(self.awaiting_upload(), reverse=True):
                meta = self.dumps.meta(name)
                started = time.monotonic()
                record = self.offsite.upload(
                    self.dumps.path(name), name, str(meta.get("revision", "none"))
                )
                record["uploaded"] = time.time()
                self.dumps.update_meta(name, offsite=record)
                self.state.update("offsite", newest=name, newest_at=record["uploaded"])
                log(
                    f"copied {name} off-site to {self.offsite.where} "
                    f"({human_size(record['bytes'])} encrypted, "
                    f"{time.monotonic() - started:.1f}s)"
                )
                uploaded += 1
        except BackupError as error:
            self.state.failed("upload", str(error))
            log(f"error: off-site upload failed: {error}")
            raise
        self.state.succeeded("upload")
        return uploaded

    def prune_offsite(self) -> None:
        try:
            self._prune_offsite()
        except BackupError as error:
            self.state.failed("upload", f"off-site retention: {error}")
            log(f"error: off-site retention failed: {error}")
            raise

    def _prune_offsite(self) -> None:
        assert self.offsite is not None
        objects = self.offsite.dumps()
        stamps = {}
        for name in objects:
            with contextlib.suppress(BackupError):
                stamps[name] = self.dumps.stamp(name)
        # The last copy verified good, by this server or by the one before it.
        protected = self.protected() | {self.offsite.last_verified() or ""}
        keep = to_keep(
            stamps,
            daily=self.settings.offsite_keep_daily,
            weekly=self.settings.offsite_keep_weekly,
            protected=protected,
        )
        for name in sorted(set(stamps) - keep):
            self.offsite.delete(name)
            log(f"pruned {name} off-site")
        if keep:
            newest = max(keep, key=lambda name: stamps[name])
            self.state.update(
                "offsite", newest=newest, newest_at=objects[newest].timestamp(), count=len(keep)
            )

    # -- point in time -------------------------------------------------------------
    def base_backup(
        self, *, unless_newer_than: float | None = None, else_flush: bool = False
    ) -> float:
        """A pgBackRest base backup (creating the repository first if need be); with
        `unless_newer_than`, only if the bucket's newest is older than that many seconds,
        and otherwise, with `else_flush`, the current WAL switched and archived, so that
        everything written so far is in the bucket. Returns when the newest base backup
        finished."""
        assert self.pgbackrest is not None
        try:
            self.pgbackrest.ensure_stanza()
            newest = newest_base(self.pgbackrest.info())
            if (
                unless_newer_than is not None
                and newest
                and time.time() - newest < unless_newer_than
            ):
                if else_flush:
                    self.pgbackrest.run("check", timeout=300)  # switches WAL, waits for it
                    log("archived the current WAL (the last base backup is recent)")
                self.state.succeeded("base")
                return newest
            started = time.monotonic()
            kind, label = self.pgbackrest.base_backup()
        except BackupError as error:
            self.state.failed("base", str(error))
            log(f"error: base backup failed: {error}")
            raise
        self.state.succeeded("base", label=label)
        log(f"base backup {label} ({kind}) in {time.monotonic() - started:.1f}s")
        return time.time()

    # -- verification --------------------------------------------------------------
    def newest_complete(self) -> str | None:
        """The newest backup whose off-site copy exists (when off-site is on)."""
        for name in self.dumps.names():
            if self.offsite is None or self.dumps.meta(name).get("offsite"):
                return name
        return None

    def verify(self) -> dict[str, int] | None:
        """Restore the newest backup into a scratch database and check it: pg_restore
        succeeds, the Alembic revision is the one recorded in the dump, every table's rows
        are counted; and its off-site copy is byte for byte what was uploaded."""
        name = self.newest_complete()
        if name is None:
            log("verify: no backup to verify yet")
            return None
        try:
            started = time.monotonic()
            tables = self._restore_and_count(name)
            self._check_offsite_copy(name)
        except BackupError as error:
            self.dumps.update_meta(
                name, verified={"at": time.time(), "ok": False, "error": str(error)}
            )
            self.state.failed("verify", str(error), name=name)
            log(f"error: verification failed: {error}")
            raise
        seconds = time.monotonic() - started
        if self.offsite is not None:
            try:
                self.offsite.mark_verified(name, time.time())
            except BackupError as error:
                self.state.failed("verify", f"recording {name} as verified: {error}", name=name)
                raise
        self.dumps.update_meta(name, verified={"at": time.time(), "ok": True, "tables": tables})
        self.state.succeeded("verify", name=name, good=name, tables=tables)
        rows = ", ".join(f"{table}={count}" for table, count in sorted(tables.items()))
        offsite = "; off-site copy intact" if self.offsite else ""
        log(
            f"verified {name}: restored in {seconds:.1f}s, "
            f"alembic revision {self.dumps.meta(name).get('revision', 'none')}, "
            f"rows: {rows or 'no tables'}{offsite}"
        )
        return tables

    def _restore_and_count(self, name: str) -> dict[str, int]:
        scratch = f"{self.settings.database}_verify"
        drop = f"DROP DATABASE IF EXISTS {quote_identifier(scratch)}"
        try:
            restore_into_new_database(
                self.dumps.path(name), scratch, self.env,
                what=f"{name} does not restore: pg_restore",
            )  # fmt: skip
            expected = str(self.dumps.meta(name).get("revision", "none"))
            restored = alembic_revision(scratch, self.env)
            if restored != expected:
                raise BackupError(
                    f"{name} restored at Alembic revision {restored}, "
                    f"but the dump recorded {expected}"
                )
            return count_rows(scratch, self.env)
        finally:
            with contextlib.suppress(BackupError):
                psql(drop, self.env)

    def _check_offsite_copy(self, name: str) -> None:
        if self.offsite is None:
            return
        record = self.dumps.meta(name).get("offsite") or {}
        expected = str(record.get("sha256", ""))
        actual, size = self.offsite.checksum(name)
        if actual != expected:
            raise BackupError(
                f"the off-site copy of {name} is corrupt: its SHA-256 is {actual[:16]}... "
                f"({size} bytes), the upload's was {expected[:16]}... "
                f"({record.get('bytes', '?')} bytes)"
            )

    # -- reporting -----------------------------------------------------------------
    def listing(self) -> list[str]:
        lines = [f"{'BACKUP':<34} {'SIZE':>7}  {'REVISION':<12} {'OFF-SITE':<9} VERIFIED"]
        good = self.protected()
        for name in self.dumps.names():
            meta = self.dumps.meta(name)
            verified: dict[str, Any] = meta.get("verified") or {}
            if verified:
                at = datetime.fromtimestamp(float(verified.get("at", 0)), UTC)
                check = f"{'ok' if verified.get('ok') else 'FAILED'} {at:%Y-%m-%dT%H:%MZ}"
            else:
                check = "-"
            if name in good:
                check += " (last good)"
            offsite = "copied" if meta.get("offsite") else ("pending" if self.offsite else "-")
            size = human_size(self.dumps.path(name).stat().st_size)
            lines.append(
                f"{name:<34} {size:>7}  {meta.get('revision', '?')!s:<12} {offsite:<9} {check}"
            )
        if self.offsite is not None:
            lines.append(self._offsite_summary())
        if self.pgbackrest is not None:
            lines.append(self._pitr_summary())
        return lines

    def _offsite_summary(self) -> str:
        assert self.offsite is not None
        try:
            objects = self.offsite.dumps()
        except BackupError as error:
            return f"off-site ({self.offsite.where}): cannot list: {error}"
        if not objects:
            return f"off-site ({self.offsite.where}): no copies yet"
        newest = max(objects, key=lambda name: objects[name])
        age = time.time() - objects[newest].timestamp()
        return (
            f"off-site ({self.offsite.where}): {len(objects)} copies, newest {newest}, "
            f"uploaded {format_duration(age)} ago"
        )

    def _pitr_summary(self) -> str:
        assert self.pgbackrest is not None
        try:
            info = self.pgbackrest.info()
        except BackupError as error:
            return f"point-in-time: cannot read the archive: {error}"
        backups = info.get("backup") or []
        if not backups:
            return "point-in-time: no base backup yet"
        oldest = datetime.fromtimestamp(float(backups[0]["timestamp"]["stop"]), UTC)
        archive = (info.get("archive") or [{}])[-1]
        return (
            f"point-in-time: {len(backups)} base backups; restorable from "
            f"{oldest:%Y-%m-%dT%H:%M:%SZ}; WAL archived up to "
            f"{archive.get('max', '?')}"
        )


def count_rows(database: str, env: dict[str, str]) -> dict[str, int]:
    tables = psql(
        "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name) "
        "FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
        "AND table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
        env,
        database=database,
    ).splitlines()
    if not tables:
        return {}
    counts = " UNION ALL ".join(
        f"SELECT {quote_literal(table)}, count(*) FROM {table}" for table in tables
    )
    result = {}
    for line in psql(counts, env, database=database).splitlines():
        table, _, count = line.rpartition("|")
        result[table.removeprefix("public.")] = int(count)
    return result
