"""Restores. A dump (local, or fetched from the bucket and decrypted with the private key)
goes into a new database first; only when that has fully succeeded are the names swapped,
in one transaction, and the replaced database is kept. A point-in-time restore replaces
the stopped cluster's data directory from pgBackRest's base backup and WAL.

Anything wrong (a missing or unreadable file, a failed restore, the app still connected)
is refused with one line, and nothing changes."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from backup.config import Settings
from backup.errors import BackupError
from backup.operations import Operations
from backup.pitr import PASSPHRASE_KEY, oldest_restorable
from backup.tools import (
    alembic_revision,
    log,
    psql,
    quote_identifier,
    quote_literal,
    restore_into_new_database,
    run,
)

APP_NAME = "berth-app"  # the app's application_name (berth/db.py)


@contextlib.contextmanager
def identity_file(source: str) -> Iterator[Path]:
    """The age private key: a file path, or "-" to read it from standard input into a
    private temporary file (the container's tmpfs), removed afterwards."""
    if source != "-":
        path = Path(source)
        if not path.is_file():
            raise BackupError(f"no private key file at {source}")
        yield path
        return
    key = sys.stdin.read()
    if "AGE-SECRET-KEY-" not in key:
        raise BackupError("standard input holds no age private key (AGE-SECRET-KEY-...)")
    descriptor, name = tempfile.mkstemp(prefix="berth-identity-")
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(key)
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def restore_dump(
    ops: Operations, name: str, *, force: bool, offsite: bool = False, identity: str = ""
) -> None:
    directory = ops.settings.directory
    if not offsite:
        path = Path(name) if name.startswith("/") else directory / name
        if not path.is_file():
            raise BackupError(
                f"no backup named {name} in {directory} (see: list); nothing was changed"
            )
        _restore_file(ops, name, path, force=force)
        return
    if ops.offsite is None:
        raise BackupError(
            "off-site copies are not configured (BACKUP_S3_BUCKET); nothing was changed"
        )
    if not identity:
        raise BackupError(
            "an off-site copy is decrypted with your private key: "
            "--identity FILE, or --identity - to read it from standard input"
        )
    objects = ops.offsite.dumps()
    if name == "latest":
        if not objects:
            raise BackupError(f"no off-site copies in {ops.offsite.where}; nothing was changed")
        name = max(objects, key=lambda found: ops.dumps.stamp(found))
    elif name not in objects:
        raise BackupError(
            f"no off-site copy named {name} in {ops.offsite.where} (see: list); nothing was changed"
        )
    download = directory / f".restore-{name}.partial"
    try:
        with identity_file(identity) as key:
            started = time.monotonic()
            ops.offsite.download(f"dumps/{name}.age", key, download)
        log(
            f"fetched and decrypted {name} from {ops.offsite.where} "
            f"in {time.monotonic() - started:.1f}s"
        )
        _restore_file(ops, name, download, force=force)
    except BackupError as error:
        if "nothing was changed" in str(error):
            raise
        raise BackupError(f"{error}; nothing was changed") from None
    finally:
        download.unlink(missing_ok=True)


def _restore_file(ops: Operations, name: str, path: Path, *, force: bool) -> None:
    env = ops.env
    database = ops.settings.database
    try:
        run(["pg_restore", "--list", str(path)], env=env)
    except BackupError as error:
        detail = str(error).removeprefix("pg_restore: ")
        raise BackupError(
            f"{name} is not a readable pg_dump archive ({detail}); nothing was changed"
        ) from None
    connected = int(
        psql(
            "SELECT count(*) FROM pg_stat_activity "
            f"WHERE datname = {quote_literal(database)} AND application_name = '{APP_NAME}'",
            env,
        )
    )
    if connected and not force:
        raise BackupError(
            f"the app is connected to {database} ({connected} connections): stop it first "
            "(docker compose stop app), or pass --force; nothing was changed"
        )
    target = f"{database}_restoring"
    old = f"{database}_before_restore_{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    started = time.monotonic()
    try:
        restore_into_new_database(path, target, env, what="pg_restore")
    except BackupError as error:
        with contextlib.suppress(BackupError):
            psql(f"DROP DATABASE IF EXISTS {quote_identifier(target)}", env)
        detail = str(error).removeprefix("pg_restore: ")
        raise BackupError(f"restoring {name} failed ({detail}); nothing was changed") from None
    restored_in = time.monotonic() - started
    revision = alembic_revision(target, env)
    _swap(env, database, target, old)
    log(f"restored {name} into {database} in {restored_in:.1f}s (alembic revision {revision})")
    log(
        f"the database it replaced is kept as {old}; when satisfied: "
        f'docker compose exec db dropdb -U "$POSTGRES_USER" {old}'
    )


def _swap(env: dict[str, str], database: str, target: str, old: str) -> None:
    """No connection may reach either database while it is renamed. Terminations are waited
    for (up to 5 s each), and both renames happen in one transaction, so a failure leaves
    the names as they were."""
    db, tgt, previous = (quote_identifier(n) for n in (database, target, old))
    script = f"""
ALTER DATABASE {db} WITH ALLOW_CONNECTIONS false;
SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity
 WHERE datname = {quote_literal(database)} AND pid <> pg_backend_pid();
BEGIN;
ALTER DATABASE {db} RENAME TO {previous};
ALTER DATABASE {tgt} RENAME TO {db};
ALTER DATABASE {previous} WITH ALLOW_CONNECTIONS true;
COMMIT;
"""
    try:
        run(
            ["psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-d", "postgres"],
            env=env,
            input=script,
            what="psql",
        )
    except BackupError as error:
        with contextlib.suppress(BackupError):
            psql(f"ALTER DATABASE {db} WITH ALLOW_CONNECTIONS true", env)
            psql(f"DROP DATABASE IF EXISTS {tgt}", env)
        raise BackupError(
            f"swapping in the restored database failed ({error}); nothing was changed"
        ) from None


# -- point in time ---------------------------------------------------------------------
def parse_target(text: str) -> datetime | None:
    """ "latest" (the end of the archive), or a time with its zone:
    2026-11-24T10:15:00Z, "2026-11-24 10:15:00+01:00"."""
    if text == "latest":
        return None
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BackupError(
            f'"{text}" is not a time: use e.g. 2026-11-24T10:15:00Z, or "latest"'
        ) from None
    if moment.tzinfo is None:
        raise BackupError(f'"{text}" has no time zone: add Z (UTC) or an offset like +01:00')
    return moment


def restore_point_in_time(
    settings: Settings, ops: Operations, target_text: str, *, check_only: bool = False
) -> None:
    """With `check_only`, everything but the restore: the target, the settings, the
    bucket, a base backup before the target (backup/restore-to asks this before it stops
    anything)."""
    target = parse_target(target_text)
    if not check_only and (Path(settings.pgdata) / "postmaster.pid").exists():
        raise BackupError(
            "the database is running: stop it first (docker compose stop db); nothing was changed"
        )
    if ops.pgbackrest is None:
        raise BackupError("point-in-time recovery is off (BACKUP_PITR=off)")
    pgbackrest = ops.pgbackrest
    info = pgbackrest.info()
    oldest = oldest_restorable(info)
    if oldest is None:
        raise BackupError("the bucket holds no base backup to restore from; nothing was changed")
    if target is not None:
        if target.timestamp() < oldest:
            earliest = datetime.fromtimestamp(oldest, UTC)
            raise BackupError(
                f"{target_text} is before the oldest base backup: the earliest "
                f"time that can be restored is {earliest:%Y-%m-%dT%H:%M:%SZ}; "
                "nothing was changed"
            )
        if target.timestamp() > time.time():
            raise BackupError(f"{target_text} is in the future; nothing was changed")
    if check_only:
        log(f"{target_text} can be restored from {ops.pgbackrest.where}")
        return
    started = time.monotonic()
    pgbackrest.restore(target)
    what = f"to {target:%Y-%m-%dT%H:%M:%S.%fZ}" if target else "to the end of the archive"
    log(
        f"restored the data directory from the newest suitable base backup in "
        f"{time.monotonic() - started:.1f}s; Postgres replays WAL {what} at its next start, "
        "then promotes"
    )


def fetch_passphrase(ops: Operations, identity: str) -> str:
    """pgBackRest's passphrase as stored in the bucket, decrypted with the private key."""
    if ops.offsite is None:
        raise BackupError("off-site copies are not configured (BACKUP_S3_BUCKET)")
    with identity_file(identity) as key, tempfile.TemporaryDirectory() as scratch:
        plain = Path(scratch) / "passphrase"
        ops.offsite.download(PASSPHRASE_KEY, key, plain)
        text = plain.read_text().strip()
    if not text:
        raise BackupError(f"{PASSPHRASE_KEY} in the bucket is empty")
    return text
