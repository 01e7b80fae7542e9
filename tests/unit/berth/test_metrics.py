"""Metrics added up in memory give what prometheus_client's own calls give, and two
scrapes at once never trip over a dead worker's files."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import httpx
import psycopg
import pytest
from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from testcontainers.community.postgres import PostgresContainer

from berth import metrics
from berth.application import build_app
from berth.metrics import (
    LATENCY,
    POOL_CHECKED_OUT,
    POOL_OPEN,
    RequestMetrics,
    _add_to_histogram,
)
from berth.settings import Settings
from tests.unit.conftest import admin_connection


def test_added_up_latencies_equal_observing_each_one() -> None:
    registry = CollectorRegistry()
    buckets = LATENCY._upper_bounds[:-1]  # the same buckets, without +Inf
    reference = Histogram("reference_seconds", "", ["route"], registry=registry, buckets=buckets)
    batched = Histogram("batched_seconds", "", ["route"], registry=registry, buckets=buckets)
    values = [0.0, 0.005, 0.0051, 0.3, 1, 14.9, 15, 99]
    gathered = RequestMetrics()
    for value in values:
        reference.labels("/x").observe(value)
        gathered.started()
        gathered.record("GET", "/x", 200, value, None)
    _, latencies, _ = gathered._added_up()
    (histogram,) = latencies.values()
    _add_to_histogram(batched.labels("/x"), histogram)
    text = generate_latest(registry).decode()
    ours = sorted(line.replace("batched", "reference") for line in text.splitlines()
                  if line.startswith("batched_seconds_"))  # fmt: skip
    theirs = sorted(line for line in text.splitlines() if line.startswith("reference_seconds_")
                    and "_created" not in line)  # fmt: skip
    assert [line for line in ours if "_created" not in line] == theirs


def test_a_flush_writes_counts_and_the_in_flight_gauge() -> None:
    gathered = RequestMetrics()
    before = metrics.REQUESTS.labels("GET", "/flushed", "200")._value.get()
    for _ in range(3):
        gathered.started()
    for _ in range(2):
        gathered.record("GET", "/flushed", 200, 0.01, None)
    gathered.flush()
    assert metrics.REQUESTS.labels("GET", "/flushed", "200")._value.get() == before + 2
    assert metrics.IN_FLIGHT._value.get() == 1


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True)
    return int(child.stdout)


@pytest.mark.parametrize("round_", range(3))
def test_concurrent_scrapes_never_fail_on_a_dead_workers_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, round_: int
) -> None:
    monkeypatch.setattr(metrics, "MULTIPROCESS_DIR", str(tmp_path))
    pids = [dead_pid() for _ in range(40)]
    for pid in pids:
        for mode in ("livesum", "liveall", "livemax"):
            (tmp_path / f"gauge_{mode}_{pid}.db").write_bytes(b"")
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def scrape() -> None:
        start.wait()
        try:
            metrics.exposition()
        except BaseException as exc:
            errors.append(exc)

    scrapers = [threading.Thread(target=scrape) for _ in range(4)]
    for scraper in scrapers:
        scraper.start()
    for scraper in scrapers:
        scraper.join()
    assert errors == []
    assert [name for name in os.listdir(tmp_path) if name.startswith("gauge_live")] == []


def gauge(value: Gauge) -> float:
    return float(value._value.get())  # one process, no multiprocess dir: its own value


async def test_pool_gauges_stay_true_when_reconnects_fail(
    postgres: PostgresContainer, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database restart closes the pooled connections; while it is down, each checkout
    drops a closed one and fails to reconnect. SQLAlchemy then checks the record back in
    without a checkout ever having completed: counted naively, the in-use gauge went
    negative (-328 after a 15 s outage under load)."""
    in_use, opened = gauge(POOL_CHECKED_OUT), gauge(POOL_OPEN)
    application = build_app(settings, title="t")
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/health/ready")).status_code == 200

            async def refused(*args: object, **kwargs: object) -> object:
                raise psycopg.OperationalError("connection refused (the database is down)")

            with monkeypatch.context() as down:
                down.setattr(psycopg.AsyncConnection, "connect", refused)
                with admin_connection(postgres) as connection:
                    connection.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = 'berth-app'"
                    )
                for _ in range(5):
                    assert (await client.get("/health/ready")).status_code == 503
                assert gauge(POOL_CHECKED_OUT) == in_use
            assert (await client.get("/health/ready")).status_code == 200  # back up
            assert gauge(POOL_CHECKED_OUT) == in_use
            assert gauge(POOL_OPEN) >= opened
    assert gauge(POOL_CHECKED_OUT) == in_use
    assert gauge(POOL_OPEN) == opened  # disposed: every connection it opened is closed
