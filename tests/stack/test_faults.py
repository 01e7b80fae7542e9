"""Faults on one running stack: each test breaks something, then checks what a user sees.

Tests share one stack for speed; `healthy` brings it back to full health before each.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
import pytest

from berth.settings import Settings
from tests.stack import service
from tests.stack.faults import (
    Load,
    Outcome,
    Request,
    app_connections,
    app_request_seconds,
    bring_back_db,
    host_pid,
    kill_from_host,
    pause,
    report,
    requests_waiting_on_locks,
    summary,
    table_locked,
    wait_workers,
    worker_pids,
)
from tests.stack.harness import Stack, parse_docker_time, wait_for

OUTAGE_SECONDS = 15
FREEZE_SECONDS = 20
WORKERS = 2
DEFAULTS = Settings.model_fields
CONNECT_TIMEOUT = DEFAULTS["db_connect_timeout_seconds"].default
REQUEST_DEADLINE = DEFAULTS["request_timeout_seconds"].default
POOL_PER_WORKER = DEFAULTS["db_pool_size"].default + DEFAULTS["db_max_overflow"].default
DEADLINE_ANSWER = {"detail": "the request took too long, try again shortly"}
DATABASE_UNAVAILABLE = {"detail": "database unavailable, try again shortly"}
# How late an asyncio timer may fire in a worker on a busy 2-core machine (CI measured 0.252
# once, with the whole suite's containers sharing two cores).
TIMER_SLACK = 0.5
# Every load here sends far more than this; fewer means the load itself went wrong.
MIN_REQUESTS = 100
MIN_REQUESTS_AFTER_RECOVERY = 20


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


def deleting(ids: list[list[int]]) -> Request:
    """Every other request a DELETE of one of this client's own items (tagged with its
    id), the rest GETs: both go through the idempotent router."""

    def request(client: httpx.Client, worker: int, number: int) -> tuple[httpx.Response, str]:
        if number % 2 == 0:
            return service.read(client, worker, number)
        item_id = ids[worker][number // 2]
        return client.delete(f"/api/items/{item_id}"), str(item_id)

    return request


def seed_items(stack: Stack, prefix: str, count: int) -> list[int]:
    rows = stack.psql(
        f"INSERT INTO items (name, price) SELECT '{prefix}-' || n, 1 "
        f"FROM generate_series(1, {count}) AS n RETURNING id"
    )
    return [int(row) for row in rows.split()]


@service.example_only  # DELETEs of the example's items
def test_a_killed_worker_is_replaced_and_only_its_own_requests_fail(healthy: Stack) -> None:
    """The kill lands while requests are provably on the worker: a table lock holds every
    request in the database, and the victim is a worker with a DELETE waiting there.

    Those requests get Traefik's 502 and none of them is applied: the dead worker's
    transactions roll back. Traefik does not re-send them: its retry middleware retries
    only a request it could not send, and retrying on a 502 status (Traefik 3.7's
    `retry.status`) made Traefik itself collapse at 64 connections (bench/tuning.md).
    Every other request succeeds."""
    stack = healthy
    clients, per_client = 8, 400
    ids = seed_items(stack, f"doomed-{time.time_ns()}", clients * per_client // 2)
    own_ids = [ids[client::clients] for client in range(clients)]
    before = worker_pids(stack)

    def replacement() -> set[int] | None:
        now = worker_pids(stack)
        return now - before if len(now) == WORKERS and now != before else None

    def worker_with_a_waiting_delete() -> tuple[int, list[str]] | None:
        waiting = requests_waiting_on_locks(stack)
        return next(((pid, q) for pid, q in waiting.items() if "DELETE" in q), None)

    load = Load(stack, deleting(own_ids), clients=clients, max_requests=per_client)
    with load:
        time.sleep(2)
        with table_locked(stack):  # released well inside DB_STATEMENT_TIMEOUT_MS (10 s)
            victim, waiting = wait_for(
                worker_with_a_waiting_delete, timeout=6, interval=0.1, what="a waiting DELETE"
            )
            killed_at = time.time()
            kill_from_host(victim)
        replacements = wait_for(replacement, timeout=30, interval=0.05, what="a new worker")
        replaced_after = time.time() - killed_at
        time.sleep(3)
        load.keep_until(MIN_REQUESTS)
    assert victim not in worker_pids(stack)
    assert len(replacements) == 1
    load.join()
    assert len(load.outcomes) >= MIN_REQUESTS
    failures = load.failures()
    # Only requests that were on the victim at the kill failed: at most one per client,
    # each sent before the kill, each a 502 from Traefik.
    assert len(failures) <= clients, failures
    assert all(f.status == 502 and f.started < killed_at for f in failures), failures
    assert load.successes_after(killed_at + replaced_after) > 0

    # Each DELETE was applied once or not at all: every 204's item is gone, and every
    # failed DELETE's item is still there (the killed worker's transaction rolled back).
    deleted = [o.tag for o in load.outcomes if o.tag and o.ok]
    kept = [f.tag for f in failures if f.tag]
    assert stack.psql(f"SELECT count(*) FROM items WHERE id IN ({','.join(deleted)})") == "0"
    if kept:
        still = stack.psql(f"SELECT count(*) FROM items WHERE id IN ({','.join(kept)})")
        assert still == str(len(kept))
    report(
        "worker killed",
        replaced_after_seconds=round(replaced_after, 2),
        requests_waiting_on_the_killed_worker=len(waiting),
        deletes_waiting_on_the_killed_worker=waiting.count("DELETE"),
        **summary(load),
    )


def test_a_crashed_app_container_restarts_by_itself(healthy: Stack) -> None:
    stack = healthy
    restarts = stack.container("app").attrs["RestartCount"]
    # A pause: while no app is routed, Traefik's 404s come back as fast as they are sent.
    load = Load(stack, request=service.read, clients=4, max_seconds=120, timeout=10, pause=0.02)
    with load, stack.watch_health() as health:
        time.sleep(2)
        killed_at = time.time()
        kill_from_host(host_pid(stack, "app"))
        # Generous guards, not the claim: the README quotes one run's measurement.
        wait_for(
            lambda: stack.container("app").attrs["RestartCount"] == restarts + 1,
            timeout=60,
            interval=0.1,
            what="Docker to restart the app",
        )
        healthy_at = health.wait("app", "healthy", after=killed_at, timeout=90)
        restarted_at = parse_docker_time(stack.state("app")["StartedAt"])
        # The first request the restarted container served (one sent in the instant after
        # the kill can still meet a dying worker).
        serving = wait_for(
            lambda: next((o for o in load.outcomes if o.ok and o.started > restarted_at), None),
            timeout=30,
            interval=0.1,
            what="a request served after the restart",
        )
        time.sleep(3)
        load.keep_until(len(load.outcomes) + MIN_REQUESTS_AFTER_RECOVERY)
    assert stack.state("app")["Status"] == "running"
    failures = load.failures()

    def timeline(outcomes: list[Outcome]) -> list[tuple[float, int | str | None]]:
        return [(round(o.started - killed_at, 2), o.status or o.error) for o in outcomes]

    # Clients see the restart as Traefik's 502 (routed to the dead container) or 404 (no
    # healthy app to route to), only between the crash and the first request served. A
    # request whose answer was on its way at the kill may lose its connection instead
    # (Traefik had sent the headers), but only one already in flight then...
    in_flight = [f for f in failures if f.status is None]
    # (killed_at is taken just before the kill is sent: allow for the sending)
    assert all(f.started < killed_at + 0.25 for f in in_flight), timeline(in_flight)
    assert len(in_flight) <= 4, timeline(in_flight)  # one per client at most
    assert {f.status for f in failures} - {None} <= {404, 502}, timeline(failures)
    assert all(killed_at - 1 <= f.started <= serving.ended for f in failures), timeline(failures)
    # ...and every request after that succeeds.
    after = [o for o in load.outcomes if o.started > serving.ended]
    assert len(after) >= MIN_REQUESTS_AFTER_RECOVERY
    assert all(o.ok for o in after), timeline([o for o in after if not o.ok])
    report(
        "app container killed",
        healthy_after_seconds=round(healthy_at - killed_at, 2),
        serving_through_traefik_after_seconds=round(serving.ended - killed_at, 2),
        **summary(load),
    )


@service.needs_resource  # the 503s of the service's own reads
def test_database_outage_gives_fast_503s_and_heals_without_restart(healthy: Stack) -> None:
    stack = healthy
    app_started = stack.state("app")["StartedAt"]
    with Load(stack, request=service.mixed, clients=4, max_seconds=90, pause=0.05) as load:
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
        load.keep_until(MIN_REQUESTS)
    assert ready.json()["status"] == "not ready"
    assert ready.json()["reason"].startswith("database unavailable")
    assert len(load.outcomes) >= MIN_REQUESTS
    failures = load.failures()
    assert failures, "the outage should have been visible"
    app_seconds = app_request_seconds(stack, [failure.request_id for failure in failures])
    for failure in failures:
        assert failure.status == 503, failure  # no 500, 502 or dropped connection
        assert json.loads(failure.body) == DATABASE_UNAVAILABLE, failure
        # Within the connect timeout, as the app measured it (its access log)...
        assert app_seconds[failure.request_id] <= CONNECT_TIMEOUT + TIMER_SLACK, failure
        assert went_away - 1 <= failure.started <= recovered, failure
    # ...and as the client saw it, through Traefik on a busy machine.
    assert max(f.seconds for f in failures) < CONNECT_TIMEOUT + 1, failures
    assert load.successes_after(recovered) > 0
    assert stack.state("app")["StartedAt"] == app_started  # healed without a restart
    time.sleep(1)
    connections = app_connections(stack)
    assert connections.get("idle in transaction", 0) == 0
    assert connections.get("active", 0) == 0  # the load has stopped: nothing is running
    assert sum(connections.values()) <= WORKERS * POOL_PER_WORKER  # no pool outgrew itself
    report(
        "database stopped for 15 s",
        outage_seconds=round(came_back - went_away, 1),
        recovered_after_db_start_seconds=round(recovered - came_back, 2),
        slowest_503_in_the_app_seconds=round(max(app_seconds[f.request_id] for f in failures), 3),
        app_connections_after=connections,
        **summary(load),
    )


@service.needs_resource  # the 503s of the service's own reads
def test_frozen_database_answers_503_at_the_deadline(healthy: Stack) -> None:
    """A paused Postgres keeps its sockets open: without the request deadline, a request
    on a pooled connection would wait for as long as the freeze lasts."""
    stack = healthy
    with Load(stack, request=service.mixed, clients=4, max_seconds=90, timeout=40) as load:
        time.sleep(2)
        frozen_at = time.time()
        pause(stack, "db")
        time.sleep(FREEZE_SECONDS)  # longer than the request deadline
        thawed_at = time.time()
        stack.run("unpause", "db")
        with stack.client() as client:
            wait_for(lambda: client.get("/health/ready").status_code == 200, timeout=30)
        recovered = time.time()
        time.sleep(2)
        load.keep_until(MIN_REQUESTS)
    assert len(load.outcomes) >= MIN_REQUESTS
    failures = load.failures()
    app_seconds = app_request_seconds(stack, [failure.request_id for failure in failures])
    at_the_deadline = []
    for failure in failures:
        # Two answers, both long before the freeze ends: a request on a pooled connection
        # gets the deadline's 503 at the deadline; one that needed a new connection gets
        # the connect timeout's 503 (a paused server accepts TCP, then says nothing).
        assert failure.status == 503, failure
        assert frozen_at - 1 <= failure.started <= thawed_at, failure
        in_the_app = app_seconds[failure.request_id]
        if json.loads(failure.body) == DEADLINE_ANSWER:
            assert REQUEST_DEADLINE <= in_the_app <= REQUEST_DEADLINE + TIMER_SLACK, failure
            assert REQUEST_DEADLINE <= failure.seconds < FREEZE_SECONDS, failure
            at_the_deadline.append(failure)
        else:
            assert json.loads(failure.body) == DATABASE_UNAVAILABLE, failure
            assert in_the_app <= CONNECT_TIMEOUT + TIMER_SLACK, failure
    assert at_the_deadline, f"no request reached the deadline: {failures}"
    assert load.successes_after(recovered) > 0
    time.sleep(2)
    connections = app_connections(stack)
    assert connections.get("idle in transaction", 0) == 0
    report(
        "database frozen for 20 s",
        frozen_seconds=round(thawed_at - frozen_at, 1),
        answered_at_the_deadline=len(at_the_deadline),
        slowest_503_in_the_app_seconds=round(max(app_seconds[f.request_id] for f in failures), 3),
        app_connections_after=connections,
        **summary(load),
    )


@service.example_only  # the acknowledged items, looked up in their table
def test_acknowledged_writes_survive_a_database_crash(healthy: Stack) -> None:
    stack = healthy
    with Load(stack, request=service.write, clients=4, max_seconds=60) as load:
        time.sleep(3)
        stack.container("db").kill(signal="SIGKILL")
        crashed_at = time.time()
        time.sleep(3)
        recovered = bring_back_db(stack)
        time.sleep(3)
        wait_for(
            lambda: sum(outcome.status == 201 for outcome in load.outcomes) >= MIN_REQUESTS,
            timeout=120,
            what=f"{MIN_REQUESTS} acknowledged writes",
        )
    acknowledged = [outcome.tag for outcome in load.outcomes if outcome.status == 201]
    assert len(acknowledged) >= MIN_REQUESTS
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


@service.needs_resource  # the 503s of the service's own reads
def test_host_reboot_app_first_waits_for_the_database(healthy: Stack) -> None:
    stack = healthy
    migrate_ran = stack.state("migrate")["StartedAt"]
    stack.run("stop")
    # Docker starts containers in any order after a reboot; take the worst one: the edge
    # (Traefik, and the socket proxy it reads the engine through), then the app, then db.
    stack.container("socket-proxy").start()
    stack.container("traefik").start()
    stack.container("app").start()
    with stack.client() as client:

        def not_ready() -> bool:
            try:
                return client.get("/health/ready").status_code == 503
            except httpx.TransportError:  # Traefik still starting: no TLS yet
                return False

        # Alive, healthy and routed while the db is down: Traefik only routes healthy apps.
        wait_for(not_ready, timeout=60, what="the app routed, and not ready")
        for _ in range(10):  # about 10 s with no database
            ready = client.get("/health/ready")
            assert ready.status_code == 503
            assert ready.json()["status"] == "not ready"
            read = client.get(service.READ_PATH)
            assert read.status_code == 503
            assert read.json() == {"detail": "database unavailable, try again shortly"}
            time.sleep(1)
        assert stack.container("app").attrs["RestartCount"] == 0  # no crash loop
        stack.container("db").start()
        wait_for(lambda: client.get("/health/ready").status_code == 200, timeout=60)
        assert client.get(service.READ_PATH).status_code == 200
    assert stack.state("migrate")["StartedAt"] == migrate_ran  # not needed again
    assert "database not reachable (attempt" in stack.logs("app")
    report("reboot, app started before the db", seconds_without_db=10, app_restarts=0)


def test_failing_migration_deployed_in_order_leaves_the_app_serving(healthy: Stack) -> None:
    """The deploy order: build the image, run the migration as a one-shot, and only if it
    succeeds, `up` the app. A failing migration then changes nothing that is running."""
    stack = healthy
    app_id = stack.container("app").id
    failing = ("-f", "tests/stack/compose/failing-migration.yaml")
    with Load(stack, request=service.mixed, clients=2, max_seconds=60) as load:
        time.sleep(1)
        migration = stack.run(*failing, "run", "--rm", "migrate", check=False)
        # Even a plain `up` with the failing migration must not take the app down.
        up = stack.run(*failing, "up", "--detach", check=False)
        time.sleep(2)
        load.keep_until(MIN_REQUESTS)
    assert migration.returncode != 0
    assert "berth: migration failed: revision 0002 raised DataError" in migration.stderr
    assert up.returncode != 0
    assert 'service "migrate" didn\'t complete successfully' in up.stderr
    assert stack.psql("SELECT version_num FROM alembic_version") == "0001"
    assert stack.psql("SELECT to_regclass('half_done') IS NULL") == "t"
    colour = "table_name = 'alembic_version' AND column_name = 'colour'"
    assert stack.psql(f"SELECT count(*) FROM information_schema.columns WHERE {colour}") == "0"
    assert stack.container("app").id == app_id
    assert stack.state("app")["Status"] == "running"
    load.assert_no_failures(min_requests=MIN_REQUESTS)
    report("failing migration deployed", **summary(load))
