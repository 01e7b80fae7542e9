"""Faults on one running stack: each test breaks something, then checks what a user sees.

Tests share one stack for speed; `healthy` brings it back to full health before each.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from tests.stack.faults import (
    Load,
    app_connections,
    bring_back_db,
    create_item,
    get_items,
    host_pid,
    kill_from_host,
    mixed,
    report,
    summary,
    wait_healthy,
    wait_workers,
    worker_pids,
)
from tests.stack.harness import Stack, wait_for

OUTAGE_SECONDS = 15
CONNECT_TIMEOUT = 3  # DB_CONNECT_TIMEOUT_SECONDS's default
WORKERS = 2


@pytest.fixture(scope="module")
def stack(stack_factory: Callable[..., Stack]) -> Stack:
    stack = stack_factory(WEB_CONCURRENCY=str(WORKERS))
    stack.up()
    return stack


@pytest.fixture
def healthy(stack: Stack) -> Stack:
    stack.up()
    wait_workers(stack, WORKERS, what="both workers")
    with stack.client() as client:
        wait_for(
            lambda: client.get("/health/ready").status_code == 200,
            timeout=30,
            what="readiness through Traefik",
        )
    return stack


def test_a_killed_worker_is_replaced_and_only_its_requests_fail(healthy: Stack) -> None:
    stack = healthy
    before = worker_pids(stack)

    def replacement() -> set[int] | None:
        now = worker_pids(stack)
        return now - before if len(now) == WORKERS else None

    with Load(stack, request=get_items, clients=4, max_seconds=40) as load:
        time.sleep(2)
        victim = min(before)
        killed_at = time.time()
        kill_from_host(victim)
        replacements = wait_for(
            replacement,
            timeout=20,
            interval=0.05,
            what="a new worker",
        )
        replaced_after = time.time() - killed_at
        time.sleep(3)
    assert victim not in worker_pids(stack)
    assert len(replacements) == 1
    failures = load.failures()
    # Only requests on the killed worker may fail: at most one per client.
    assert len(failures) <= load.clients, failures
    assert all(killed_at - 1 <= f.started <= killed_at + 1 for f in failures), failures
    assert load.successes_after(killed_at + replaced_after) > 0
    report("worker killed", replaced_after_seconds=round(replaced_after, 2), **summary(load))


def test_a_crashed_app_container_restarts_by_itself(healthy: Stack) -> None:
    stack = healthy
    container = stack.container("app")
    restarts = container.attrs["RestartCount"]
    killed_at = time.monotonic()
    kill_from_host(host_pid(stack, "app"))
    wait_for(
        lambda: stack.container("app").attrs["RestartCount"] == restarts + 1,
        timeout=30,
        interval=0.1,
        what="Docker to restart the app",
    )
    wait_healthy(stack, "app", timeout=60)
    healthy_after = time.monotonic() - killed_at
    with stack.client() as client:
        wait_for(lambda: client.get("/api/items").status_code == 200, timeout=15)
    serving_after = time.monotonic() - killed_at
    assert stack.state("app")["Status"] == "running"
    report(
        "app container killed",
        healthy_after_seconds=round(healthy_after, 2),
        serving_through_traefik_after_seconds=round(serving_after, 2),
    )


def test_database_outage_gives_fast_503s_and_heals_without_restart(healthy: Stack) -> None:
    stack = healthy
    app_started = stack.state("app")["StartedAt"]
    with Load(stack, request=mixed, clients=4, max_seconds=90, pause=0.05) as load:
        time.sleep(2)
        went_away = time.time()
        stack.run("stop", "db")
        with stack.client() as client:

            def not_ready() -> httpx.Response | None:
                response = client.get("/health/ready")
                return response if response.status_code == 503 else None

            ready = wait_for(not_ready, timeout=10, what="not ready")
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.time() - went_away)))
        came_back = time.time()
        recovered = bring_back_db(stack)
        time.sleep(2)
    assert ready.json()["status"] == "not ready"
    assert ready.json()["reason"].startswith("database unavailable")
    failures = load.failures()
    assert failures, "the outage should have been visible"
    for failure in failures:
        assert failure.status == 503, failure  # no 500, 502 or dropped connection
        assert failure.body.startswith('{"detail":"database unavailable'), failure
        assert failure.seconds < CONNECT_TIMEOUT + 1, failure  # fails fast, never hangs
        assert went_away - 1 <= failure.started <= recovered, failure
    assert load.successes_after(recovered) > 0
    assert stack.state("app")["StartedAt"] == app_started  # healed without a restart
    time.sleep(1)
    connections = app_connections(stack)
    assert connections.get("idle in transaction", 0) == 0
    assert sum(connections.values()) <= WORKERS * 5  # DB_POOL_SIZE per worker, no leaks
    report(
        "database stopped for 15 s",
        outage_seconds=round(came_back - went_away, 1),
        recovered_after_db_start_seconds=round(recovered - came_back, 2),
        app_connections_after=connections,
        **summary(load),
    )


def test_frozen_database_answers_503_at_the_deadline(healthy: Stack) -> None:
    """A paused Postgres keeps its sockets open: without the request deadline, a request
    on a pooled connection would wait for as long as the freeze lasts."""
    stack = healthy
    with Load(stack, request=mixed, clients=4, max_seconds=90, timeout=40) as load:
        time.sleep(2)
        frozen_at = time.time()
        stack.run("pause", "db")
        time.sleep(OUTAGE_SECONDS + 5)  # longer than the 15 s request deadline
        thawed_at = time.time()
        stack.run("unpause", "db")
        with stack.client() as client:
            wait_for(lambda: client.get("/health/ready").status_code == 200, timeout=30)
        recovered = time.time()
        time.sleep(2)
    failures = load.failures()
    assert failures
    for failure in failures:
        assert failure.status == 503, failure
        assert failure.seconds < 16, failure  # the 15 s deadline, plus scheduling
    assert load.successes_after(recovered) > 0
    time.sleep(2)
    connections = app_connections(stack)
    assert connections.get("idle in transaction", 0) == 0
    report(
        "database frozen for 20 s",
        frozen_seconds=round(thawed_at - frozen_at, 1),
        app_connections_after=connections,
        **summary(load),
    )


def test_acknowledged_writes_survive_a_database_crash(healthy: Stack) -> None:
    stack = healthy
    with Load(stack, request=create_item, clients=4, max_seconds=60) as load:
        time.sleep(3)
        stack.container("db").kill(signal="SIGKILL")
        crashed_at = time.time()
        time.sleep(3)
        recovered = bring_back_db(stack)
        time.sleep(3)
    acknowledged = [outcome.tag for outcome in load.outcomes if outcome.status == 201]
    assert load.successes_after(recovered) > 0
    assert any(outcome.started < crashed_at for outcome in load.outcomes if outcome.ok)
    names = ",".join(f"'{name}'" for name in acknowledged)
    present = int(stack.psql(f"SELECT count(*) FROM items WHERE name IN ({names})"))
    assert present == len(acknowledged)
    assert "database system was interrupted" in stack.logs("db")  # it really crashed
    report(
        "database SIGKILLed under writes",
        acknowledged=len(acknowledged),
        present_after_recovery=present,
        lost=len(acknowledged) - present,
        **summary(load),
    )


def test_database_stop_and_start_is_a_clean_shutdown(healthy: Stack) -> None:
    stack = healthy
    since = time.time()
    stack.run("stop")
    stack.up()
    log = stack.run("logs", "--no-log-prefix", "--since", str(int(since)), "db").stdout
    assert "database system is shut down" in log
    assert "database system was shut down at" in log
    assert "not properly shut down" not in log
    assert "automatic recovery in progress" not in log


def test_host_reboot_app_first_waits_for_the_database(healthy: Stack) -> None:
    stack = healthy
    migrate_ran = stack.state("migrate")["StartedAt"]
    stack.run("stop")
    # Docker starts containers in any order after a reboot; take the worst one.
    stack.container("traefik").start()
    stack.container("app").start()
    with stack.client() as client:
        # Alive, healthy and routed while the db is down: Traefik only routes healthy apps.
        wait_for(lambda: client.get("/health/ready").status_code == 503, timeout=60)
        for _ in range(10):  # about 10 s with no database
            ready = client.get("/health/ready")
            assert ready.status_code == 503
            assert ready.json()["status"] == "not ready"
            items = client.get("/api/items")
            assert items.status_code == 503
            assert items.json() == {"detail": "database unavailable, try again shortly"}
            time.sleep(1)
        assert stack.container("app").attrs["RestartCount"] == 0  # no crash loop
        stack.container("db").start()
        wait_for(lambda: client.get("/health/ready").status_code == 200, timeout=60)
        assert client.get("/api/items").status_code == 200
    assert stack.state("migrate")["StartedAt"] == migrate_ran  # not needed again
    assert "database not reachable (attempt" in stack.logs("app")


def test_failing_migration_deployed_in_order_leaves_the_app_serving(healthy: Stack) -> None:
    """The deploy order: build the image, run the migration as a one-shot, and only if it
    succeeds, `up` the app. A failing migration then changes nothing that is running."""
    stack = healthy
    app_id = stack.container("app").id
    failing = ("-f", "tests/stack/compose/failing-migration.yaml")
    with Load(stack, request=mixed, clients=2, max_seconds=60) as load:
        time.sleep(1)
        migration = stack.run(*failing, "run", "--rm", "migrate", check=False)
        # Even a plain `up` with the failing migration must not take the app down.
        up = stack.run(*failing, "up", "--detach", check=False)
        time.sleep(2)
    assert migration.returncode != 0
    assert "berth: migration failed: revision 0002 raised DataError" in migration.stderr
    assert up.returncode != 0
    assert 'service "migrate" didn\'t complete successfully' in up.stderr
    assert stack.psql("SELECT version_num FROM alembic_version") == "0001"
    assert stack.psql("SELECT to_regclass('half_done') IS NULL") == "t"
    assert stack.psql("SELECT count(*) FROM information_schema.columns "
                      "WHERE table_name = 'items' AND column_name = 'colour'") == "0"  # fmt: skip
    assert stack.container("app").id == app_id
    assert stack.state("app")["Status"] == "running"
    assert load.failures() == []
    report("failing migration deployed", **summary(load))
