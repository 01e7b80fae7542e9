"""Prometheus metrics, added up across all uvicorn workers.

Each worker is its own process, so a scrape reaches one worker at a time. With
PROMETHEUS_MULTIPROC_DIR set (compose.yaml points it at the container's tmpfs, empty at
every start), prometheus_client keeps each process's values in files there, and a scrape
of any worker sums them all. Counters of workers that died stay in the sum; gauges of dead
workers are removed at each scrape, so they don't count forever.

The per-request figures are noted in memory (`RequestMetrics`), added up and written to
prometheus_client's values every FLUSH_SECONDS and before each scrape: in multiprocess mode
every `inc` or `observe` takes a lock and writes to a memory-mapped file, which cost about
8 us per request against 0.3 us for a note in memory (bench/tuning.md). A scrape sees
another worker's requests at most FLUSH_SECONDS late.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from bisect import bisect_left
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
from prometheus_client.metrics import MetricWrapperBase
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry
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
REFUSED = Counter(
    "berth_http_requests_refused_total",
    "Requests the runtime answered itself: 413 too_large, 503 overload",
    ["reason"],
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
FLUSH_SECONDS = 0.1
MAX_PENDING = 4096


class RequestMetrics:
    """This worker's request counts, latency histograms and in-flight gauge. A request
    ended is only noted (`record`); `flush` adds the notes up and writes them out, all in
    one loop, where each costs a fraction of what it costs in the request (bench/tuning.md)."""

    def __init__(self) -> None:
        self.in_flight = 0
        # (method, route, status, seconds, refused) of each request ended since the flush.
        self._ended: list[tuple[str, str | None, int, float, str | None]] = []
        self._bounds = LATENCY._upper_bounds  # the last is +Inf

    def started(self) -> None:
        self.in_flight += 1

    def record(
        self, method: str, route: str | None, status: int, seconds: float, refused: str | None
    ) -> None:
        """One request ended (`started` counted it in flight)."""
        self.in_flight -= 1
        ended = self._ended
        ended.append((method, route, status, seconds, refused))
        if len(ended) >= MAX_PENDING:  # bounded, even with no periodic flush running
            self.flush()

    def flush(self) -> None:
        requests, latency, refused_by_reason = self._added_up()
        for (method, route, status), count in requests.items():
            REQUESTS.labels(method, route, str(status)).inc(count)
        for labels, histogram in latency.items():
            _add_to_histogram(LATENCY.labels(*labels), histogram)
        for reason, count in refused_by_reason.items():
            REFUSED.labels(reason).inc(count)
        IN_FLIGHT.set(self.in_flight)

    def _added_up(
        self,
    ) -> tuple[dict[tuple[str, str, int], int], dict[tuple[str, str], list[float]], dict[str, int]]:
        """The requests noted since the last call: counts per (method, route, status), a
        histogram per (method, route), and refusals per reason."""
        ended, self._ended = self._ended, []
        requests: dict[tuple[str, str, int], int] = {}
        # Per (method, route): a count per bucket of LATENCY, then the sum of the seconds.
        latency: dict[tuple[str, str], list[float]] = {}
        refused_by_reason: dict[str, int] = {}
        buckets = len(self._bounds)
        for method, route, status, seconds, refused in ended:
            route = route or "unmatched"
            key = (method, route, status)
            requests[key] = requests.get(key, 0) + 1
            histogram = latency.get((method, route))
            if histogram is None:
                histogram = latency[(method, route)] = [0.0] * (buckets + 1)
            histogram[bisect_left(self._bounds, seconds)] += 1
            histogram[-1] += seconds
            if refused is not None:
                refused_by_reason[refused] = refused_by_reason.get(refused, 0) + 1
        return requests, latency, refused_by_reason

    async def flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            self.flush()


def _add_to_histogram(child: MetricWrapperBase, histogram: list[float]) -> None:
    """What `child.observe` would have done for each value counted in `histogram`.
    prometheus_client has no call to add many observations at once, so this writes its
    bucket and sum values directly; tests/unit/berth/test_metrics.py checks the result
    against `observe`."""
    buckets = child._buckets  # type: ignore[attr-defined]
    for index, count in enumerate(histogram[:-1]):
        if count:
            buckets[index].inc(count)
    child._sum.inc(histogram[-1])  # type: ignore[attr-defined]


REQUEST_METRICS = RequestMetrics()


_COUNTED_OUT = "berth_counted_out"


def watch_pool(engine: AsyncEngine) -> None:
    """Track the pool through its events, so a scrape never touches the pool itself."""
    pool = engine.sync_engine.pool

    @event.listens_for(pool, "connect")
    def _opened(*_: object) -> None:
        POOL_OPEN.inc()

    @event.listens_for(pool, "close")
    def _closed(*_: object) -> None:
        POOL_OPEN.dec()

    # A checkout counts once it completes; a checkin only takes back what was counted. When
    # a checkout drops a closed connection and cannot reconnect (the database is down),
    # SQLAlchemy checks the record back in without the checkout having completed: counted
    # naively, that drove the gauge to -328 after a 15 s outage.
    @event.listens_for(pool, "checkout")
    def _out(dbapi_connection: object, record: ConnectionPoolEntry, proxy: object) -> None:
        marks = record.record_info  # lives as long as the pool's record, across reconnects
        if marks is not None:
            marks[_COUNTED_OUT] = True
            POOL_CHECKED_OUT.inc()

    @event.listens_for(pool, "checkin")
    def _in(dbapi_connection: object, record: ConnectionPoolEntry) -> None:
        marks = record.record_info
        if marks is not None and marks.pop(_COUNTED_OUT, False):
            POOL_CHECKED_OUT.dec()


def _forget_dead_workers(directory: str) -> None:
    """Remove the live-gauge files of workers that died (what `mark_process_dead` does).
    Two workers can scrape at once and both find the same dead worker's files: the second
    removal finds nothing, which is fine (with `mark_process_dead` it raised
    FileNotFoundError and the scrape answered 500)."""
    for name in os.listdir(directory):
        match = _LIVE_GAUGE_FILE.match(name)
        if match and not _alive(int(match.group(1))):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(directory, name))


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
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)


def exposition() -> bytes:
    """Every worker's metrics, added up, in Prometheus's text format."""
    REQUEST_METRICS.flush()
    if not MULTIPROCESS_DIR:
        return generate_latest(REGISTRY)
    _forget_dead_workers(MULTIPROCESS_DIR)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, MULTIPROCESS_DIR)
    return generate_latest(registry)
