"""The backup service's settings, read once from the environment (.env via compose.yaml).

Every variable is documented in .env.example. Secrets also come from files: NAME_FILE names
a file holding NAME (a Docker secret). A value that cannot work is a ConfigError with one
line naming the variable, before anything runs.

This is plain standard-library code rather than pydantic-settings (berth/settings.py)
because it runs on the database image's Debian Python, which has no third-party packages.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from backup.errors import ConfigError
from backup.schedule import Schedule, parse_duration

AGE_RECIPIENT = re.compile(r"^age1[02-9ac-hj-np-z]{58}$")
BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# pgBackRest's stanza: one name per cluster; the bucket prefix keeps installations apart.
STANZA = "berth"
METRICS_PORT = 9102
# compose.yaml mounts BACKUP_S3_CA_FILE here, or the empty backup/no-s3-ca.pem when unset.
S3_CA_FILE = "/run/berth/s3-ca.pem"


def secret(env: Mapping[str, str], name: str) -> str:
    """The contents of the file that NAME_FILE names (without the final newline), or NAME.
    An empty file counts as not given: compose.secrets.yaml mounts the files `make secrets`
    creates empty, and a value still in .env then keeps working."""
    path = env.get(f"{name}_FILE", "")
    if path:
        try:
            value = Path(path).read_text().rstrip("\r\n")
        except OSError as error:
            raise ConfigError(f"{name}_FILE={path}: {error.strerror}") from None
        if value:
            return value
    return env.get(name, "")


def number(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, "") or str(default)
    if not text.isdigit():
        raise ConfigError(f'{name}="{text}" is not a whole number')
    return int(text)


def switch(env: Mapping[str, str], name: str, default: bool) -> bool:
    text = (env.get(name, "") or ("on" if default else "off")).lower()
    if text not in {"on", "off", "true", "false", "1", "0", "yes", "no"}:
        raise ConfigError(f'{name}="{text}": use on or off')
    return text in {"on", "true", "1", "yes"}


@dataclass(frozen=True)
class S3:
    """Where off-site copies go: any S3-compatible store (AWS S3, Backblaze B2, MinIO...)."""

    endpoint: str  # scheme://host[:port], as rclone takes it
    host: str
    port: int
    secure: bool
    region: str
    bucket: str
    prefix: str  # no leading or trailing slash
    access_key_id: str
    secret_access_key: str
    path_style: bool
    ca_file: str | None  # a private CA to trust (self-hosted stores); None: the system's


@dataclass(frozen=True)
class Pitr:
    """Point-in-time recovery: pgBackRest archives WAL and takes base backups into the
    same bucket, encrypted with `passphrase`."""

    passphrase: str
    base_every: int  # seconds: a base backup when the newest one is older
    full_every: int  # seconds: a full base backup when the last full one is older
    keep_full: int
    archive_timeout: int  # seconds: Postgres switches WAL at least this often when busy
    max_lag: int  # seconds a finished WAL segment may wait for the archive before an alert
    queue_max_mb: int  # pg_wal budget for WAL waiting to be archived


def load_s3(env: Mapping[str, str]) -> S3 | None:
    bucket = env.get("BACKUP_S3_BUCKET", "")
    if not bucket:
        return None
    if not BUCKET.match(bucket):
        raise ConfigError(f'BACKUP_S3_BUCKET="{bucket}" is not a valid bucket name')
    endpoint = env.get("BACKUP_S3_ENDPOINT", "")
    parts = urlsplit(endpoint)
    if parts.scheme not in {"https", "http"} or not parts.hostname or parts.path not in {"", "/"}:
        raise ConfigError(
            f'BACKUP_S3_ENDPOINT="{endpoint}": use the store\'s URL, '
            "e.g. https://s3.eu-central-1.amazonaws.com"
        )
    secure = parts.scheme == "https"
    key_id = secret(env, "BACKUP_S3_ACCESS_KEY_ID")
    key = secret(env, "BACKUP_S3_SECRET_ACCESS_KEY")
    if not key_id or not key:
        raise ConfigError(
            "BACKUP_S3_BUCKET is set, so BACKUP_S3_ACCESS_KEY_ID and "
            "BACKUP_S3_SECRET_ACCESS_KEY (or their _FILE variants) are required"
        )
    style = env.get("BACKUP_S3_URI_STYLE", "") or "path"
    if style not in {"path", "host"}:
        raise ConfigError(f'BACKUP_S3_URI_STYLE="{style}": use path or host')
    return S3(
        endpoint=f"{parts.scheme}://{parts.netloc}",
        host=parts.hostname,
        port=parts.port or (443 if secure else 80),
        secure=secure,
        region=env.get("BACKUP_S3_REGION", "") or "us-east-1",
        bucket=bucket,
        prefix=(env.get("BACKUP_S3_PREFIX", "") or "berth").strip("/"),
        access_key_id=key_id,
        secret_access_key=key,
        path_style=style == "path",
        ca_file=S3_CA_FILE if _non_empty(S3_CA_FILE) else None,
    )


def load_pitr(env: Mapping[str, str], s3: S3 | None) -> Pitr | None:
    if s3 is None or not switch(env, "BACKUP_PITR", True):
        return None
    if not s3.secure:
        raise ConfigError(
            f"BACKUP_S3_ENDPOINT={s3.endpoint}: point-in-time recovery (pgBackRest) needs "
            "https; use an https endpoint, or BACKUP_PITR=off"
        )
    passphrase = secret(env, "BACKUP_PITR_PASSPHRASE")
    if len(passphrase) < 20:
        raise ConfigError(
            "BACKUP_PITR_PASSPHRASE (or _FILE) must be set, at least 20 characters, to "
            "encrypt WAL and base backups (e.g. `openssl rand -base64 48`); or BACKUP_PITR=off"
        )
    return Pitr(
        passphrase=passphrase,
        base_every=parse_duration(
            env.get("BACKUP_PITR_BASE_EVERY", "") or "1d", "BACKUP_PITR_BASE_EVERY"
        ),
        full_every=parse_duration(
            env.get("BACKUP_PITR_FULL_EVERY", "") or "7d", "BACKUP_PITR_FULL_EVERY"
        ),
        keep_full=max(1, number(env, "BACKUP_PITR_KEEP_FULL", 2)),
        archive_timeout=parse_duration(
            env.get("BACKUP_WAL_ARCHIVE_TIMEOUT", "") or "60s", "BACKUP_WAL_ARCHIVE_TIMEOUT"
        ),
        max_lag=parse_duration(env.get("BACKUP_WAL_MAX_LAG", "") or "5m", "BACKUP_WAL_MAX_LAG"),
        queue_max_mb=max(64, number(env, "BACKUP_WAL_QUEUE_MAX_MB", 2048)),
    )


def _non_empty(path: str) -> bool:
    try:
        return os.path.getsize(path) > 0
    except OSError:
        return False


@dataclass(frozen=True)
class Settings:
    directory: Path
    database: str
    schedule: Schedule
    keep_daily: int
    keep_weekly: int
    max_age: int
    retry_delay: int
    verify_schedule: Schedule | None
    s3: S3 | None
    age_recipient: str
    offsite_keep_daily: int
    offsite_keep_weekly: int
    pitr: Pitr | None
    pgdata: str
    pg_user: str
    # Seconds between two runs of the healthcheck once it has passed (backup/status.py).
    health_interval: int = 5

    @property
    def verify_max_age(self) -> int:
        period = self.verify_schedule.period if self.verify_schedule else 0
        return 2 * period + 3600


def load(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    if env.get("BACKUP_MAX_AGE_HOURS"):
        raise ConfigError(
            "BACKUP_MAX_AGE_HOURS was replaced by BACKUP_MAX_AGE, a duration: "
            f"BACKUP_MAX_AGE={env['BACKUP_MAX_AGE_HOURS']}h"
        )
    database = env.get("PGDATABASE", "")
    if not database:
        raise ConfigError("PGDATABASE is not set")
    schedule = Schedule.parse(env.get("BACKUP_SCHEDULE", "") or "03:00", "BACKUP_SCHEDULE")
    max_age_text = env.get("BACKUP_MAX_AGE", "")
    max_age = (
        parse_duration(max_age_text, "BACKUP_MAX_AGE")
        if max_age_text
        else 2 * schedule.period + 3600
    )
    verify_text = env.get("BACKUP_VERIFY_SCHEDULE", "") or "04:30"
    verify = None if verify_text == "off" else Schedule.parse(verify_text, "BACKUP_VERIFY_SCHEDULE")
    s3 = load_s3(env)
    recipient = env.get("BACKUP_AGE_RECIPIENT", "").strip()
    if s3 and not AGE_RECIPIENT.match(recipient):
        raise ConfigError(
            "BACKUP_S3_BUCKET is set, so BACKUP_AGE_RECIPIENT must be an age public key "
            "(age1..., from `age-keygen`): off-site copies are encrypted to it"
        )
    return Settings(
        directory=Path(env.get("BACKUP_DIR", "") or "/backups"),
        database=database,
        schedule=schedule,
        keep_daily=number(env, "BACKUP_KEEP_DAILY", 7),
        keep_weekly=number(env, "BACKUP_KEEP_WEEKLY", 4),
        max_age=max_age,
        retry_delay=parse_duration(
            env.get("BACKUP_RETRY_DELAY", "") or "30s", "BACKUP_RETRY_DELAY"
        ),
        verify_schedule=verify,
        s3=s3,
        age_recipient=recipient,
        offsite_keep_daily=number(env, "BACKUP_OFFSITE_KEEP_DAILY", 30),
        offsite_keep_weekly=number(env, "BACKUP_OFFSITE_KEEP_WEEKLY", 12),
        pitr=load_pitr(env, s3),
        pgdata=env.get("PGDATA", "") or "/var/lib/postgresql/data",
        pg_user=env.get("PGUSER", "") or "postgres",
        health_interval=health_interval(env),
    )


MAX_HEALTH_INTERVAL = 60  # compose.yaml's healthcheck timeout is longer


def health_interval(env: Mapping[str, str]) -> int:
    text = env.get("BACKUP_HEALTH_INTERVAL", "") or "5s"
    seconds = parse_duration(text, "BACKUP_HEALTH_INTERVAL")
    if seconds > MAX_HEALTH_INTERVAL:
        raise ConfigError(
            f"BACKUP_HEALTH_INTERVAL={text}: at most "
            f"{MAX_HEALTH_INTERVAL}s (a failing backup must show promptly)"
        )
    return seconds


def postgres_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for psql, pg_dump and pgBackRest: PGPASSWORD from
    POSTGRES_PASSWORD_FILE when that is how the password is given (PGPASSFILE, libpq reads
    itself)."""
    env = dict(os.environ if env is None else env)
    if not env.get("PGPASSWORD") and not env.get("PGPASSFILE"):
        password = secret(env, "POSTGRES_PASSWORD")
        if password:
            env["PGPASSWORD"] = password
    env.setdefault("PGOPTIONS", "-c client_min_messages=warning")
    env.setdefault("PGCONNECT_TIMEOUT", "10")
    return env
