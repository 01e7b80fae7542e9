"""The backup service on a schedule, hardened as every container is (no root, no
capabilities, a read-only root filesystem): backups appear by themselves; a failing one
turns the service unhealthy with the error in its log and is retried with backoff, so it
recovers long before the next slot; it turns unhealthy when the newest backup grows too old;
and a restart removes what a killed run left."""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Callable

import pytest

from tests.stack.faults import wait_healthy
from tests.stack.harness import Stack, wait_for


def health(stack: Stack) -> str:
    return str(stack.state("backup")["Health"]["Status"])


def log_times(log: str, pattern: str) -> list[float]:
    """Epoch times of the log lines matching `pattern`."""
    stamps = re.findall(rf"^(\S+Z) backup: {pattern}", log, re.MULTILINE)
    return [calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")) for stamp in stamps]


PERIOD = 40


@pytest.fixture(scope="module")
def stack(stack_factory: Callable[..., Stack]) -> Stack:
    stack = stack_factory(
        BACKUP_SCHEDULE=f"every {PERIOD}s", BACKUP_RETRY_DELAY="1s", BACKUP_HEALTH_INTERVAL="2s"
    )
    stack.up()
    return stack


def test_a_failed_backup_is_retried_with_backoff_not_at_the_next_slot(stack: Stack) -> None:
    period = PERIOD
    log = stack.logs("backup")
    assert f'scheduled "every {period}s"' in log
    # A server that comes up with no recent backup takes one at once.
    wait_for(lambda: "wrote berth-" in stack.logs("backup"), timeout=30, what="a backup")
    assert health(stack) == "healthy"
    assert stack.container("backup").attrs["HostConfig"]["ReadonlyRootfs"] is True

    stack.run("stop", "app", "db")
    wait_for(lambda: health(stack) == "unhealthy", timeout=period + 30,
             what="the backup service to turn unhealthy")  # fmt: skip
    log = stack.logs("backup")
    assert "error: backup failed: pg_dump:" in log
    assert 'could not translate host name "db"' in log or "connection to server" in log
    assert stack.state("backup")["Health"]["Log"][-1]["Output"].startswith(
        "last backup failed: pg_dump:"
    )
    failed_at = log_times(log, "error: backup failed")[0]
    wait_for(lambda: "retrying backup in 2s (attempt 3)" in stack.logs("backup"), timeout=30,
             what="a second, longer wait")  # fmt: skip

    stack.run("start", "db")
    wait_healthy(stack, "backup", timeout=60)
    log = stack.logs("backup")
    recovered = re.search(r"backup succeeded on attempt (\d+)", log)
    assert recovered, log
    assert int(recovered.group(1)) >= 3
    # The retry brought it back, well before the slot after the one that failed.
    wrote = [moment for moment in log_times(log, "wrote ") if moment > failed_at]
    assert wrote
    assert wrote[0] < failed_at + period


def test_unhealthy_when_the_newest_backup_is_too_old_and_leftovers_go_at_start(
    stack: Stack,
) -> None:
    stack.set_env(BACKUP_MAX_AGE="20s", BACKUP_SCHEDULE="03:00")
    stack.up("backup")  # recreated: daily at 03:00
    wait_for(lambda: health(stack) == "unhealthy", timeout=60, what="staleness")
    output = stack.state("backup")["Health"]["Log"][-1]["Output"]
    assert re.match(r"newest backup is \d+s old \(limit 20s\)", output), output

    # A run killed mid-dump (a stop that outlasted its grace period) leaves a partial file;
    # the service removes it when it starts again.
    leftover = ".berth-20261124T030000Z.dump.partial"
    stack.run("exec", "-T", "backup", "sh", "-c", f"echo half > /backups/{leftover}")
    stack.run("restart", "backup")
    wait_healthy(stack, "backup", timeout=60)  # a new backup: the old one was too old
    assert f"removed {leftover}, left by an interrupted run" in stack.logs("backup")
    listing = stack.run("exec", "-T", "backup", "ls", "-a", "/backups").stdout.split()
    assert leftover not in listing
