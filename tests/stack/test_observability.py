"""Metrics added up across workers, a request id in each response and log line, and
rotated logs for every service."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.stack.faults import (
    Load,
    app_connections,
    kill_from_host,
    wait_workers,
    worker_pids,
)
from tests.stack.harness import Stack, wait_for
from tests.stack.service import READ_PARAMS, READ_PATH, example_only, read

WORKERS = 2


@pytest.fixture(scope="module")
def stack(stack_factory: Callable[..., Stack]) -> Stack:
    stack = stack_factory(WEB_CONCURRENCY=str(WORKERS))
    stack.up()
    wait_workers(stack, WORKERS)
    return stack


def scrape(stack: Stack, url: str = "http://127.0.0.1:8000/metrics") -> str:
    code = f"import urllib.request; print(urllib.request.urlopen({url!r}).read().decode())"
    return stack.run("exec", "-T", "app", "python", "-c", code).stdout


def counter(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def gauge(text: str, name: str) -> float:
    """A gauge without labels (the multiprocess sum of every live worker's value)."""
    return sum(float(line.split()[1]) for line in text.splitlines() if line.startswith(name + " "))


def app_log_lines(stack: Stack) -> list[dict[str, Any]]:
    lines = []
    for line in stack.logs("app").splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def line_for(stack: Stack, request_id: str) -> dict[str, Any] | None:
    """The app's access-log line for this request id, once it is written."""
    return next((e for e in app_log_lines(stack) if e.get("request_id") == request_id), None)


def test_metrics_add_up_across_workers(stack: Stack) -> None:
    before = counter(scrape(stack), "berth_http_requests_total", route=READ_PATH)
    # Concurrent clients make Traefik open several connections to the app, which the
    # kernel hands to whichever worker accepts first: the requests spread over both.
    with Load(stack, request=read, clients=8, max_requests=40) as load:
        load.join()
    requests = len(load.outcomes)
    assert requests == 8 * 40
    assert load.failures() == []
    files = stack.run("exec", "-T", "app", "ls", "/tmp/metrics").stdout.split()
    pids_with_counters = {name.rsplit("_", 1)[1] for name in files if name.startswith("counter_")}
    assert len(pids_with_counters) >= WORKERS  # both workers counted requests
    # Each scrape is answered by whichever worker accepts it; every one sees the sum.
    for _ in range(6):
        text = scrape(stack)
        total = counter(text, "berth_http_requests_total", route=READ_PATH)
        assert total - before == requests
    assert "berth_http_request_duration_seconds_bucket" in text
    assert "berth_db_pool_connections_in_use" in text
    assert "berth_http_requests_in_flight" in text


def metric_files(stack: Stack) -> dict[str, set[int]]:
    """Worker pids (inside the container) that have files of each kind in the metrics dir."""
    names = stack.run("exec", "-T", "app", "ls", "/tmp/metrics").stdout.split()
    kinds: dict[str, set[int]] = {"counter": set(), "gauge_live": set()}
    for name in names:
        pid = int(name.rsplit("_", 1)[1].removesuffix(".db"))
        for kind in kinds:
            if name.startswith(kind):
                kinds[kind].add(pid)
    return kinds


def test_dead_workers_gauges_are_dropped_and_their_counters_kept(stack: Stack) -> None:
    with Load(stack, request=read, clients=8, max_requests=20) as load:
        load.join()
    assert len(load.outcomes) == 8 * 20
    assert load.failures() == []
    before = metric_files(stack)
    assert len(before["gauge_live"]) == WORKERS
    counted = counter(scrape(stack), "berth_http_requests_total", route=READ_PATH)
    victim = next(iter(worker_pids(stack)))
    survivors = worker_pids(stack) - {victim}
    kill_from_host(victim)
    wait_workers(stack, WORKERS, lambda pids: victim not in pids and survivors < pids,
                 "uvicorn to replace the killed worker")  # fmt: skip
    with stack.client() as client:  # the new worker answers, so it has gauges too
        wait_for(lambda: len(metric_files(stack)["gauge_live"]) > WORKERS, timeout=30)
        for _ in range(20):
            assert client.get(READ_PATH).status_code == 200

    def dead_gauges_gone() -> str | None:
        text = scrape(stack)  # a scrape removes the gauges of workers that died
        return text if len(metric_files(stack)["gauge_live"]) == WORKERS else None

    text = wait_for(dead_gauges_gone, timeout=30, what="the dead worker's gauges to go")
    after = metric_files(stack)
    dead = before["gauge_live"] - after["gauge_live"]
    assert len(dead) == 1
    assert dead <= after["counter"]  # its counters stay: what it served was served
    assert counter(text, "berth_http_requests_total", route=READ_PATH) >= counted + 20
    # The pools' gauge counts the live workers' connections only, as Postgres sees them.
    open_gauge = gauge(text, "berth_db_pool_connections_open")
    assert open_gauge == sum(app_connections(stack).values())


def test_metrics_are_not_routed_publicly(stack: Stack) -> None:
    with stack.client() as client:
        assert client.get("/metrics").status_code == 404
        assert client.get("/metrics/").status_code == 404


def test_traefik_metrics_are_internal(stack: Stack) -> None:
    text = scrape(stack, "http://traefik:8082/metrics")
    assert "traefik_entrypoint_requests_total" in text
    published = stack.container("traefik").attrs["NetworkSettings"]["Ports"]
    assert "8082/tcp" not in published or not published["8082/tcp"]


def test_request_id_is_returned_and_logged(stack: Stack) -> None:
    sent = f"test-{uuid.uuid4().hex}"
    with stack.client() as client:
        echoed = client.get(READ_PATH, headers={"X-Request-ID": sent})
        generated = client.get(READ_PATH, params=READ_PARAMS)
        hostile = client.get(READ_PATH, headers={"X-Request-ID": 'a b" forged="1'})
    assert echoed.headers["x-request-id"] == sent
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["x-request-id"])
    assert re.fullmatch(r"[0-9a-f]{32}", hostile.headers["x-request-id"])

    line = wait_for(lambda: line_for(stack, sent), timeout=10, what="the log line")
    assert line["method"] == "GET"
    assert line["path"] == READ_PATH
    assert line["status"] == 200
    assert line["duration_ms"] > 0
    assert line["level"] == "INFO"
    assert line_for(stack, generated.headers["x-request-id"]) is not None


def test_logged_client_is_the_real_one(stack: Stack) -> None:
    sent = f"client-{uuid.uuid4().hex}"
    missing = f"/api/items/{uuid.uuid4().int % 10**12 + 10**12}"
    with stack.client() as client:
        # A 404: Traefik's access log keeps errors (not every request), so both sides log it.
        client.get(missing, headers={"X-Request-ID": sent, "X-Forwarded-For": "203.0.113.9"})
    traefik_ip = stack.container("traefik").attrs["NetworkSettings"]["Networks"][
        f"{stack.project}_proxy"
    ]["IPAddress"]
    line = wait_for(
        lambda: line_for(stack, sent),
        timeout=10,
    )
    assert line["client"] not in (traefik_ip, "203.0.113.9")
    proxy_seen = wait_for(
        lambda: [json.loads(entry) for entry in stack.logs("traefik").splitlines()
                 if f'"RequestPath":"{missing}"' in entry],
        timeout=10, what="Traefik's access log line",
    )  # fmt: skip
    assert proxy_seen[0]["ClientHost"] == line["client"]
    assert proxy_seen[0]["DownstreamStatus"] == 404


def test_every_service_rotates_its_logs(stack: Stack) -> None:
    for service in ("traefik", "db", "migrate", "app", "backup", "preflight"):
        config = stack.container(service).attrs["HostConfig"]["LogConfig"]
        assert config["Type"] == "local", service
        assert config["Config"] == {"max-size": "10m", "max-file": "5"}, service


@example_only  # a 422 from the items example's route
def test_every_answer_is_json_logged_even_errors(stack: Stack) -> None:
    with stack.client() as client:
        response = client.get("/api/items/not-a-number")
    assert response.status_code == 422
    request_id = response.headers["x-request-id"]
    line = wait_for(
        lambda: line_for(stack, request_id),
        timeout=10,
    )
    assert line["status"] == 422
    non_json = [raw for raw in stack.logs("app").splitlines() if raw and not raw.startswith("{")]
    assert non_json == []
