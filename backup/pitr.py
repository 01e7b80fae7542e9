"""Point-in-time recovery with pgBackRest: Postgres archives every WAL segment to the
bucket (archive_command, in the db container), and this service takes base backups (full,
then differential) beside it. A restore picks the base backup before the target and
replays WAL up to it.

Why pgBackRest: it is packaged by Debian and by PGDG (the official Postgres image's own
repository), so it installs from the base image's apt sources and always matches the
server; it archives, backs up, expires and restores with one repository format, encrypts
the repository, checks every WAL segment's header against the cluster, and can drop WAL
instead of letting a long outage fill pg_wal (archive-push-queue-max). WAL-G is a single
Go binary that no distribution ships (a download to pin and verify by hand); Barman wants a
server of its own. pgBackRest's own encryption is symmetric (a passphrase on this server),
so the passphrase is also stored in the bucket encrypted to the age public key: the bucket
and the private key are enough to restore.

pgBackRest reads its settings from PGBACKREST_* variables, built here from the same .env as
everything else; the backup container reads the data directory read-only, and connects to
Postgres over TCP (libpq's PGHOST), as pg_dump does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from backup.config import S3, STANZA, Pitr
from backup.errors import BackupError
from backup.tools import run

PASSPHRASE_KEY = "keys/pitr-passphrase.age"  # noqa: S105 (an object name)
# pgBackRest's exit code when the repository holds another cluster's archive.
STANZA_MISMATCH = "[028]"


def pgbackrest_env(
    s3: S3, pitr: Pitr | None, *, pgdata: str, pg_user: str, passphrase: str | None = None
) -> dict[str, str]:
    env = {
        "PGBACKREST_STANZA": STANZA,
        "PGBACKREST_PG1_PATH": pgdata,
        "PGBACKREST_PG1_USER": pg_user,
        "PGBACKREST_REPO1_TYPE": "s3",
        "PGBACKREST_REPO1_PATH": f"/{s3.prefix}/pitr",
        "PGBACKREST_REPO1_S3_BUCKET": s3.bucket,
        "PGBACKREST_REPO1_S3_ENDPOINT": s3.host,
        "PGBACKREST_REPO1_STORAGE_PORT": str(s3.port),
        "PGBACKREST_REPO1_S3_REGION": s3.region,
        "PGBACKREST_REPO1_S3_KEY": s3.access_key_id,
        "PGBACKREST_REPO1_S3_KEY_SECRET": s3.secret_access_key,
        "PGBACKREST_REPO1_S3_URI_STYLE": "path" if s3.path_style else "host",
        "PGBACKREST_REPO1_CIPHER_TYPE": "aes-256-cbc",
        "PGBACKREST_REPO1_CIPHER_PASS": passphrase or (pitr.passphrase if pitr else ""),
        # Small files bundled into few objects: a base backup is tens of requests, not
        # thousands.
        "PGBACKREST_REPO1_BUNDLE": "y",
        "PGBACKREST_COMPRESS_TYPE": "zst",
        # Back up now rather than after the next spread checkpoint (minutes).
        "PGBACKREST_START_FAST": "y",
        # Logs go to stderr (the container's log); no files on a read-only filesystem.
        "PGBACKREST_LOG_LEVEL_FILE": "off",
        "PGBACKREST_LOG_LEVEL_CONSOLE": "off",
        "PGBACKREST_LOG_LEVEL_STDERR": "warn",
        "PGBACKREST_LOCK_PATH": "/tmp/pgbackrest",  # noqa: S108 (a tmpfs)
        # pgBackRest retries a connection for about 4 x io-timeout before it fails (seen:
        # 120 s at 30): fail in about a minute and a half; the service retries on its own.
        "PGBACKREST_IO_TIMEOUT": "20",
        "PGBACKREST_DB_TIMEOUT": "600",
    }
    if pitr:
        env["PGBACKREST_REPO1_RETENTION_FULL"] = str(pitr.keep_full)
        env["PGBACKREST_ARCHIVE_PUSH_QUEUE_MAX"] = f"{pitr.queue_max_mb}MiB"
        env["PGBACKREST_ARCHIVE_TIMEOUT"] = "120"
    if s3.ca_file:
        env["PGBACKREST_REPO1_STORAGE_CA_FILE"] = s3.ca_file
    return env


class Pgbackrest:
    def __init__(
        self,
        s3: S3,
        pitr: Pitr | None,
        *,
        pgdata: str,
        pg_user: str,
        postgres_env: Mapping[str, str],
        passphrase: str | None = None,
    ) -> None:
        self.pitr = pitr
        self.where = f"s3://{s3.bucket}/{s3.prefix}/pitr"
        self.env = {
            **postgres_env,
            **pgbackrest_env(s3, pitr, pgdata=pgdata, pg_user=pg_user, passphrase=passphrase),
        }

    def run(self, *args: str, timeout: float | None = None) -> str:
        return run(["pgbackrest", *args], env=self.env, what="pgbackrest", timeout=timeout)

    def ensure_stanza(self) -> None:
        """Create the repository for this cluster (a no-op when it exists and matches)."""
        try:
            self.run("stanza-create", timeout=300)
        except BackupError as error:
            if STANZA_MISMATCH in str(error):
                raise BackupError(
                    "the point-in-time archive in the bucket belongs to another database "
                    "cluster (this one was created anew, e.g. restored from a dump on a new "
                    "server): to archive this one there from now on, run "
                    "`docker compose exec backup backup pitr-adopt`"
                ) from None
            raise

    def adopt(self) -> None:
        """Make this cluster the repository's current one (its history stays)."""
        self.run("stanza-upgrade", timeout=300)

    def info(self) -> dict[str, Any]:
        data = json.loads(self.run("info", "--output=json", timeout=120) or "[]")
        return data[0] if isinstance(data, list) and data else {}

    def base_backup(self, now: float | None = None) -> tuple[str, str]:
        """A full backup when the newest full one is older than BACKUP_PITR_FULL_EVERY (or
        there is none), a differential one otherwise. Returns (type, label)."""
        assert self.pitr is not None
        now = time.time() if now is None else now
        last_full = newest_full(self.info())
        kind = "full" if last_full is None or now - last_full > self.pitr.full_every else "diff"
        self.run("backup", f"--type={kind}", timeout=6 * 3600)
        backups = self.info().get("backup") or [{}]
        return kind, str(backups[-1].get("label", "?"))

    def restore(self, target: datetime | None) -> None:
        """Into the (stopped) cluster's data directory: to `target`, or to the end of the
        archive. Postgres replays WAL at its next start and promotes when it gets there."""
        args = ["restore", "--delta"]
        if target is not None:
            args += [
                "--type=time",
                f"--target={target.astimezone(UTC):%Y-%m-%d %H:%M:%S.%f+00}",
                "--target-action=promote",
            ]
        self.run(*args, timeout=6 * 3600)


def newest_full(info: Mapping[str, Any]) -> float | None:
    fulls = [
        float(backup["timestamp"]["stop"])
        for backup in info.get("backup") or []
        if backup.get("type") == "full"
    ]
    return max(fulls) if fulls else None


def newest_base(info: Mapping[str, Any]) -> float | None:
    stops = [float(backup["timestamp"]["stop"]) for backup in info.get("backup") or []]
    return max(stops) if stops else None


def oldest_restorable(info: Mapping[str, Any]) -> float | None:
    """The earliest time a restore can reach: the end of the oldest base backup."""
    stops = [float(backup["timestamp"]["stop"]) for backup in info.get("backup") or []]
    return min(stops) if stops else None
