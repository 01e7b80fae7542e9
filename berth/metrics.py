"""Prometheus metrics, added up across all uvicorn workers.

Each worker is its own process, so a scrape reaches one worker at a time. With
PROMETHEUS_MULTIPROC_DIR set (compose.yaml points it at the container's tmpfs, empty at
every start), prometheus_client keeps each process's values in files there, and a scrape
of any worker sums them all. Counters of workers that died stay in the sum; gauges of dead
workers are removed at each scrape, so they don't count forever.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import Response

MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if MULTIPROCESS_DIR:
    Path(MULTIPROCESS_DIR).mkdir(parents=True, exist_ok=True)

REQUESTS = Counter(
    "berth_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
LATENCY = Histogram(
    "berth_http_request_duration_seconds",
    "Time from request to the end of the response",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15),
)
IN_FLIGHT = Gauge(
    "berth_http_requests_in_flight", "Requests being handled", multiprocess_mode="livesum"
)
POOL_CHECKED_OUT = Gauge(
    "berth_db_pool_connections_in_use",
    "Database connections checked out of the pools",
    multiprocess_mode="livesum",
)
POOL_OPEN = Gauge(
    "berth_db_pool_connections_open",
    "Database connections the pools hold open",
    multiprocess_mode="livesum",
)

_LIVE_GAUGE_FILE = re.compile(r"^gauge_live\w*_(\d+)\.db$")


def watch_pool(engine: AsyncEngine) -> None:
    """Track the pool through its events, so a scrape never touches the pool itself."""
    pool = engine.sync_engine.pool

    @event.listens_for(pool, "connect")
    def _opened(*_: object) -> None:
        POOL_OPEN.inc()

    @event.listens_for(pool, "close")
    def _closed(*_: object) -> None:
        POOL_OPEN.dec()

    @event.listens_for(pool, "checkout")
    def _out(*_: object) -> None:
        POOL_CHECKED_OUT.inc()

    @event.listens_for(pool, "checkin")
    def _in(*_: object) -> None:
        POOL_CHECKED_OUT.dec()


def _forget_dead_workers(directory: str) -> None:
    for name in os.listdir(directory):
        match = _LIVE_GAUGE_FILE.match(name)
        if match and not _alive(int(match.group(1))):
            multiprocess.mark_process_dead(int(match.group(1)), directory)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def metrics(request: Request) -> Response:
    """GET /metrics. Traefik's routers exclude this path, so it is reachable only from the
    containers' own network (a Prometheus next to the app, or `docker compose exec`)."""
    if MULTIPROCESS_DIR:
        _forget_dead_workers(MULTIPROCESS_DIR)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, MULTIPROCESS_DIR)
        body = generate_latest(registry)
    else:
        body = generate_latest(REGISTRY)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
