"""Health and metrics, from one reading of the state: the health check (`backup health`,
Docker's healthcheck) lists every problem in one line; the metrics endpoint serves the same
facts as Prometheus text.

The WAL archiver is watched from here because a failing archive_command never stops
Postgres by itself: every WAL segment waits in pg_wal until it is archived, so the volume
fills at the write rate until Postgres stops. The service turns unhealthy as soon as
archiving fails, when a finished segment has waited longer than BACKUP_WAL_MAX_LAG (an
archive that hangs rather than fails), and when the WAL waiting passes half of
BACKUP_WAL_QUEUE_MAX_MB.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from backup.config import Settings
from backup.dumps import Dumps
from backup.errors import BackupError
from backup.schedule import format_duration
from backup.state import LIVE_FILE, State, failing, read_json
from backup.tools import psql

WAL_SEGMENT = 16 * 1024 * 1024
HEARTBEAT_LIMIT = 60  # seconds without a heartbeat: the scheduler is stuck or gone

WAL_QUERY = """
SELECT current_setting('archive_mode'), archived_count, failed_count,
  coalesce(extract(epoch FROM last_archived_time), 0),
  coalesce(extract(epoch FROM last_failed_time), 0), coalesce(last_failed_wal, ''),
  (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'),
  coalesce((SELECT extract(epoch FROM now() - min(modification))
            FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'), 0),
  (SELECT coalesce(sum(size), 0) FROM pg_ls_waldir())
FROM pg_stat_archiver
"""


def read_wal(env: dict[str, str]) -> dict[str, Any]:
    """The archiver's figures from pg_stat_archiver and pg_wal itself."""
    fields = psql(WAL_QUERY, env, timeout=10).split("|")
    mode, archived, failed, last_archived, last_failed, failed_wal, ready, lag, size = fields
    return {
        "archive_mode": mode,
        "archived_count": int(archived),
        "failed_count": int(failed),
        "last_archived": float(last_archived),
        "last_failed": float(last_failed),
        "last_failed_wal": failed_wal,
        "ready": int(ready),
        "lag": float(lag),
        "bytes": int(size),
        "at": time.time(),
    }


@dataclass
class Snapshot:
    """Everything health and metrics look at, read once."""

    settings: Settings
    now: float
    state: dict[str, Any]
    live: dict[str, Any]
    newest_local: float | None
    local_count: int
    problems: list[str] = field(default_factory=list)

    def section(self, name: str) -> dict[str, Any]:
        value = self.state.get(name)
        return value if isinstance(value, dict) else {}

    @property
    def wal(self) -> dict[str, Any]:
        wal = self.live.get("wal")
        fresh = isinstance(wal, dict) and self.now - float(wal.get("at", 0)) < HEARTBEAT_LIMIT
        return wal if fresh and isinstance(wal, dict) else {}


def snapshot(settings: Settings, now: float | None = None) -> Snapshot:
    now = time.time() if now is None else now
    dumps = Dumps(settings.directory, settings.database)
    try:
        names = dumps.names()
    except BackupError:
        names = []
    snap = Snapshot(
        settings=settings,
        now=now,
        state=State(settings.directory).read(),
        live=read_json(LIVE_FILE),
        newest_local=dumps.stamp(names[0]).timestamp() if names else None,
        local_count=len(names),
    )
    snap.problems = problems(snap)
    return snap


def problems(snap: Snapshot) -> list[str]:
    settings, now = snap.settings, snap.now
    found = []
    started = float(snap.live.get("started") or now)
    # the scheduler
    heartbeat = float(snap.live.get("heartbeat") or 0)
    if now - heartbeat > HEARTBEAT_LIMIT:
        found.append(
            "the scheduler is not running (no heartbeat for "
            f"{format_duration(now - heartbeat) if heartbeat else 'ever'})"
        )
    # local dumps
    backup = snap.section("backup")
    if failing(backup):
        found.append(f"last backup failed: {backup.get('error')}{_retry(backup, now)}")
    limit = settings.max_age
    if snap.newest_local is not None and now - snap.newest_local > limit:
        found.append(
            f"newest backup is {format_duration(now - snap.newest_local)} old "
            f"(limit {format_duration(limit)})"
        )
    elif snap.newest_local is None and now - started > limit:
        found.append("no backup has succeeded yet")
    # off-site copies
    if settings.s3 is not None:
        upload = snap.section("upload")
        if failing(upload):
            found.append(f"off-site upload failed: {upload.get('error')}{_retry(upload, now)}")
        newest = float(snap.section("offsite").get("newest_at") or 0)
        if newest and now - newest > limit:
            found.append(
                f"newest off-site copy is {format_duration(now - newest)} old "
                f"(limit {format_duration(limit)})"
            )
        elif not newest and now - started > limit:
            found.append("no off-site copy has succeeded yet")
    # verification
    verify = snap.section("verify")
    if failing(verify):
        found.append(f"verification failed: {verify.get('error')}")
    elif settings.verify_schedule is not None:
        verified = float(verify.get("last_success") or 0)
        since = now - (verified or started)
        if since > settings.verify_max_age:
            found.append(
                f"no backup verified for {format_duration(since)} "
                f"(limit {format_duration(settings.verify_max_age)})"
            )
    # point in time
    if settings.pitr is not None:
        base = snap.section("base")
        if failing(base):
            found.append(f"base backup failed: {base.get('error')}{_retry(base, now)}")
        found.extend(wal_problems(snap.wal, settings.pitr.max_lag, settings.pitr.queue_max_mb))
    return found


def wal_problems(wal: dict[str, Any], max_lag: int, queue_max_mb: int) -> list[str]:
    if not wal:
        return []
    if wal["archive_mode"] != "on":
        return [
            "WAL archiving is off in the database: recreate it with the new settings "
            "(docker compose up -d db)"
        ]
    found = []
    if wal["ready"] and wal["last_failed"] > wal["last_archived"]:
        found.append(
            f"WAL archiving is failing ({wal['ready']} segments waiting, last failed "
            f"{wal['last_failed_wal']}; see `docker compose logs db`)"
        )
    elif wal["ready"] and wal["lag"] > max_lag:
        found.append(
            f"WAL archiving is behind: a segment has waited {format_duration(wal['lag'])} "
            f"(limit {format_duration(max_lag)}; {wal['ready']} waiting)"
        )
    waiting_mb = wal["ready"] * WAL_SEGMENT // 2**20
    if waiting_mb > queue_max_mb // 2:
        found.append(
            f"{waiting_mb} MB of WAL waiting to be archived (at {queue_max_mb} MB "
            "pgBackRest drops it to keep Postgres running, and point-in-time "
            "recovery has a gap until the next base backup)"
        )
    return found


def _retry(section: dict[str, Any], now: float) -> str:
    retry_at = section.get("retry_at")
    if not retry_at:
        return ""
    return f" (retrying in {format_duration(float(retry_at) - now)})"


# -- metrics ---------------------------------------------------------------------------
def metrics(snap: Snapshot) -> str:
    """Prometheus text format (0.0.4)."""
    lines: list[str] = []

    def gauge(
        name: str, help_text: str, value: float | None, kind: str = "gauge", labels: str = ""
    ) -> None:
        if value is None:
            return
        if not any(line.startswith(f"# HELP berth_backup_{name} ") for line in lines):
            lines.append(f"# HELP berth_backup_{name} {help_text}")
            lines.append(f"# TYPE berth_backup_{name} {kind}")
        lines.append(f"berth_backup_{name}{labels} {value:.3f}".rstrip("0").rstrip("."))

    def stamp(section: str, key: str) -> float | None:
        value = snap.section(section).get(key)
        return float(value) if value else None

    now = snap.now
    gauge("healthy", "1 when the backup service's health check passes.", 0 if snap.problems else 1)
    gauge(
        "last_success_timestamp_seconds",
        "When the last dump succeeded.",
        stamp("backup", "last_success"),
    )
    gauge(
        "last_failure_timestamp_seconds",
        "When a dump last failed.",
        stamp("backup", "last_failure"),
    )
    gauge("failing", "1 while the last dump attempt failed.", int(failing(snap.section("backup"))))
    gauge("local_backups", "Dumps kept in the backup volume.", snap.local_count)
    if snap.newest_local is not None:
        gauge("newest_age_seconds", "Age of the newest local dump.", now - snap.newest_local)
    if snap.settings.s3 is not None:
        newest = stamp("offsite", "newest_at")
        gauge(
            "offsite_last_success_timestamp_seconds",
            "When the newest good off-site copy was uploaded.",
            newest,
        )
        if newest:
            gauge(
                "offsite_newest_age_seconds", "Age of the newest good off-site copy.", now - newest
            )
        gauge(
            "offsite_upload_failing",
            "1 while the last upload attempt failed.",
            int(failing(snap.section("upload"))),
        )
    verify = snap.section("verify")
    gauge(
        "last_verified_timestamp_seconds",
        "When a backup last passed verification (restored into a scratch database).",
        stamp("verify", "last_success"),
    )
    gauge("verify_failing", "1 while the last verification failed.", int(failing(verify)))
    for table, count in sorted((verify.get("tables") or {}).items()):
        gauge(
            "verified_rows",
            "Rows per table in the last verified backup.",
            float(count),
            labels=f'{{table="{table}"}}',
        )
    if snap.settings.pitr is not None:
        gauge(
            "base_backup_last_success_timestamp_seconds",
            "When the last pgBackRest base backup succeeded.",
            stamp("base", "last_success"),
        )
        gauge(
            "base_backup_failing",
            "1 while the last base backup attempt failed.",
            int(failing(snap.section("base"))),
        )
        wal = snap.wal
        if wal:
            gauge(
                "wal_archive_failing",
                "1 while Postgres fails to archive WAL.",
                int(bool(wal["ready"]) and wal["last_failed"] > wal["last_archived"]),
            )
            gauge(
                "wal_archived_total",
                "WAL segments archived (pg_stat_archiver).",
                wal["archived_count"],
                "counter",
            )
            gauge(
                "wal_failed_total",
                "Failed WAL archive attempts (pg_stat_archiver).",
                wal["failed_count"],
                "counter",
            )
            gauge(
                "wal_last_archived_timestamp_seconds",
                "When a WAL segment was last archived.",
                wal["last_archived"] or None,
            )
            gauge("wal_pending_segments", "WAL segments waiting to be archived.", wal["ready"])
            gauge(
                "wal_archive_lag_seconds",
                "How long the oldest segment waiting to be archived has waited.",
                wal["lag"],
            )
            gauge("wal_bytes", "Size of pg_wal.", wal["bytes"])
            gauge(
                "wal_queue_max_bytes",
                "WAL waiting beyond this is dropped to keep Postgres running.",
                snap.settings.pitr.queue_max_mb * 2**20,
            )
    return "\n".join(lines) + "\n"


# Docker runs the healthcheck `interval` after the container starts and after each run ends
# (compose.yaml: 500 ms). This engine has no `start_interval` (API 1.41), so the check paces
# itself, as the app's (berth/healthcheck.py): until its first pass a run retries for up to
# STARTUP_WAIT_SECONDS, so `docker compose up --wait` sees the service healthy as soon as
# its scheduler runs, instead of BACKUP_HEALTH_INTERVAL later; after it, a run pauses, then
# checks once, so checks stay BACKUP_HEALTH_INTERVAL apart.
DOCKER_INTERVAL_SECONDS = 0.5
STARTUP_WAIT_SECONDS = 10.0
STARTUP_POLL_SECONDS = 0.2
PASSED = "/tmp/berth-health-passed"  # noqa: S108 - the container's own tmpfs, empty at start


def paced_health(settings: Settings, passed: str = PASSED) -> list[str]:
    """The problems found by this run of the healthcheck (none: healthy), paced as above."""
    if os.path.exists(passed):
        time.sleep(max(0.0, settings.health_interval - DOCKER_INTERVAL_SECONDS))
        deadline = time.monotonic()  # one check
    else:
        deadline = time.monotonic() + STARTUP_WAIT_SECONDS
    while True:
        found = snapshot(settings).problems
        if not found:
            with open(passed, "a"):
                pass
            return found
        if time.monotonic() >= deadline:
            return found
        time.sleep(STARTUP_POLL_SECONDS)
