"""The `backup` service: one loop that runs each job when it is due, and retries a failed
one with backoff (BACKUP_RETRY_DELAY, doubling, at most an hour, and never later than the
job's next regular run); a monitor thread that keeps a heartbeat and reads the WAL
archiver's figures every few seconds; and the metrics endpoint on :9102.

Jobs: `backup` (a dump on BACKUP_SCHEDULE; at start too, when the newest backup is older
than the schedule's period, so a server that was off at 03:00 catches up), then `upload`
(off-site copies) and retention; `base` (a pgBackRest base backup every
BACKUP_PITR_BASE_EVERY); `verify` on BACKUP_VERIFY_SCHEDULE.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType

from backup.config import METRICS_PORT, Settings
from backup.errors import BackupError, Stopping
from backup.operations import Operations
from backup.pitr import PASSPHRASE_KEY
from backup.schedule import backoff, format_duration
from backup.state import LIVE_FILE, read_json, write_json
from backup.status import metrics, read_wal, snapshot
from backup.tools import log

MONITOR_INTERVAL = 5
MAX_RETRY_DELAY = 3600
NEVER = math.inf


@dataclass
class Job:
    name: str
    step: Callable[[], None]
    due: float = NEVER
    failures: int = 0
    next_regular: Callable[[float], float] = lambda now: NEVER


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ops = Operations(settings)
        self.stop = threading.Event()
        schedule = settings.schedule
        verify = settings.verify_schedule
        self.jobs = {
            "backup": Job("backup", self.backup, next_regular=schedule.next_after),
            "upload": Job("upload", self.upload),
            "base": Job("base", self.base_backup),
            "verify": Job(
                "verify",
                self.verify,
                next_regular=verify.next_after if verify else lambda now: NEVER,
            ),
        }
        self.passphrase_stored = False

    # -- the jobs ------------------------------------------------------------------
    def backup(self) -> None:
        self.ops.dump()
        if self.ops.offsite is not None:
            self.jobs["upload"].due = 0.0  # next, before any other job that is due
        self.ops.prune()

    def upload(self) -> None:
        assert self.ops.offsite is not None
        self.ops.upload()
        self.ops.prune_offsite()
        self.ops.prune()
        base = self.jobs["base"]
        if base.failures:
            base.due = time.time()  # the bucket is back: no need to wait out its backoff

    def base_backup(self) -> None:
        assert self.ops.pgbackrest is not None
        assert self.settings.pitr is not None
        if self.jobs["upload"].failures:
            # pgBackRest takes a minute and a half to give up on a bucket rclone just failed
            # to reach; the upload's success brings this forward.
            error = "skipped: the bucket is unreachable (see the off-site upload's error)"
            self.ops.state.failed("base", error)
            log(f"base backup {error}")
            raise BackupError(error)
        if not self.passphrase_stored and self.ops.offsite is not None:
            # So that the bucket and the private key are all a restore needs.
            self.ops.offsite.put_secret(PASSPHRASE_KEY, self.settings.pitr.passphrase)
            self.passphrase_stored = True
        newest = self.ops.base_backup(unless_newer_than=self.settings.pitr.base_every)
        self.jobs["base"].due = newest + self.settings.pitr.base_every

    def verify(self) -> None:
        self.ops.verify()
        if self.ops.offsite is not None:
            self.ops.prune_offsite()
        self.ops.prune()

    # -- the loop ------------------------------------------------------------------
    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stopping)
        settings = self.settings
        log(
            f'scheduled "{settings.schedule.text}" (UTC) into {settings.directory}; keeping '
            f"{settings.keep_daily} daily and {settings.keep_weekly} weekly"
        )
        if self.ops.offsite is not None:
            log(
                f"off-site copies to {self.ops.offsite.where}, encrypted to "
                f"{settings.age_recipient[:12]}...; keeping {settings.offsite_keep_daily} "
                f"daily and {settings.offsite_keep_weekly} weekly"
            )
        if settings.pitr is not None and settings.s3 is not None:
            log(
                f"point-in-time recovery: WAL and base backups to s3://{settings.s3.bucket}/"
                f"{settings.s3.prefix}/pitr; a base backup every "
                f"{format_duration(settings.pitr.base_every)}, a full one every "
                f"{format_duration(settings.pitr.full_every)}, keeping "
                f"{settings.pitr.keep_full} full"
            )
        if settings.verify_schedule is not None:
            log(f'verifying the newest backup "{settings.verify_schedule.text}" (UTC)')
        write_json(LIVE_FILE, {"started": time.time(), "heartbeat": time.time()})
        threading.Thread(target=self._monitor, name="monitor", daemon=True).start()
        threading.Thread(target=self._serve_metrics, name="metrics", daemon=True).start()
        try:
            with self.ops.exclusive():
                pass  # removes what a killed run left behind, before anything else
            self._first_runs(time.time())
            while True:
                job = min(self.jobs.values(), key=lambda job: job.due)
                self._sleep_until(job.due)
                self._run(job)
        except Stopping:
            log("stopping")
            return 0
        finally:
            self.stop.set()

    def _first_runs(self, now: float) -> None:
        newest = self.ops.dumps.names()[:1]
        age = now - self.ops.dumps.stamp(newest[0]).timestamp() if newest else NEVER
        backup = self.jobs["backup"]
        # Catch up at once when the newest backup is older than the schedule's period (the
        # server was off at 03:00) or than BACKUP_MAX_AGE (the health check says so).
        overdue = age > min(self.settings.schedule.period, self.settings.max_age)
        backup.due = now if overdue else backup.next_regular(now)
        if self.ops.offsite is not None and self.ops.awaiting_upload():
            self.jobs["upload"].due = now
        if self.ops.pgbackrest is not None:
            self.jobs["base"].due = now  # creates the repository; a base backup if due
        verify = self.jobs["verify"]
        if self.settings.verify_schedule is not None:
            last = float(self.ops.state.section("verify").get("last_success") or 0)
            overdue = now - last > self.settings.verify_schedule.period
            verify.due = now if overdue and newest else verify.next_regular(now)

    def _run(self, job: Job) -> None:
        now = time.time()
        job.due = job.next_regular(now)
        try:
            with self.ops.exclusive():
                job.step()
        except BackupError:
            job.failures += 1
            failed_at = time.time()
            delay = backoff(job.failures, self.settings.retry_delay, MAX_RETRY_DELAY)
            job.due = min(failed_at + delay, job.due)
            self.ops.state.update(job.name, retry_at=job.due if job.due < NEVER else None)
            log(
                f"retrying {job.name} in {format_duration(round(job.due - failed_at))} "
                f"(attempt {job.failures + 1})"
            )
        else:
            if job.failures:
                log(f"{job.name} succeeded on attempt {job.failures + 1}")
            job.failures = 0

    def _sleep_until(self, due: float) -> None:
        while (remaining := due - time.time()) > 0:
            time.sleep(min(remaining, 1.0))

    def _stopping(self, signum: int, frame: FrameType | None) -> None:
        raise Stopping

    # -- the monitor and the metrics ------------------------------------------------
    def _monitor(self) -> None:
        while not self.stop.is_set():
            live = read_json(LIVE_FILE)
            live["heartbeat"] = time.time()
            if self.settings.pitr is not None:
                try:
                    live["wal"] = read_wal(self.ops.env)
                    live["wal_error"] = ""
                except (BackupError, ValueError) as error:
                    live["wal_error"] = str(error)
            with contextlib.suppress(OSError):
                write_json(LIVE_FILE, live)
            self.stop.wait(MONITOR_INTERVAL)

    def _serve_metrics(self) -> None:
        settings = self.settings

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = metrics(snapshot(settings)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # no line per scrape

        try:
            server = ThreadingHTTPServer(("", METRICS_PORT), Handler)
        except OSError as error:
            log(f"error: metrics endpoint :{METRICS_PORT} unavailable: {error.strerror}")
            return
        server.serve_forever()
