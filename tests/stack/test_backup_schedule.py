"""The backup service on a schedule: backups appear by themselves, and a failing one
turns the service unhealthy with the error in its log, until a backup succeeds again."""

from __future__ import annotations

from collections.abc import Callable

from tests.stack.faults import wait_healthy
from tests.stack.harness import Stack, wait_for


def test_scheduled_backups_and_their_failures_are_visible(
    stack_factory: Callable[..., Stack],
) -> None:
    stack = stack_factory(BACKUP_SCHEDULE="every 3s", BACKUP_HEALTH_INTERVAL="2s")
    stack.up()
    assert 'scheduled "every 3s"' in stack.logs("backup")
    wait_for(lambda: "wrote berth-" in stack.logs("backup"), timeout=20, what="a backup")
    assert "alembic revision 0001)" in stack.logs("backup")  # read from the dump itself
    assert stack.state("backup")["Health"]["Status"] == "healthy"

    stack.run("stop", "app", "db")
    wait_for(
        lambda: stack.state("backup")["Health"]["Status"] == "unhealthy",
        timeout=30,
        what="the backup service to turn unhealthy",
    )
    log = stack.logs("backup")
    assert "error: backup failed: pg_dump:" in log
    assert 'could not translate host name "db"' in log or "connection to server" in log
    health = stack.state("backup")["Health"]["Log"][-1]["Output"]
    assert health.startswith("last backup failed: pg_dump:")

    stack.run("start", "db")
    wait_healthy(stack, "backup", timeout=60)  # recovered
