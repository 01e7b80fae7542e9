"""CPU per request of Berth's `/health/live` against the bare FastAPI app, in-process.

    uv run python -m bench.inprocess [--requests N]

Drives each app's ASGI callable directly (no server, no network) and reports the process
CPU time per request, the best of several rounds, alternating the two apps. CPU time is what
a busy machine disturbs least, so this is how the runtime's own cost was tuned while other
work shared the cores (bench/tuning.md); the wrk runs of `python -m bench` measure the same
thing end to end. Needs no database: /health/live never touches it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

ROUNDS = 7


async def drive(app: Any, requests: int, path: str = "/health/live") -> None:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": [(b"host", b"localhost"), (b"accept", b"*/*")],
        "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000),
    }  # fmt: skip

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            raise RuntimeError(f"{path} answered {message['status']}")

    for _ in range(requests):
        await app({**scope, "state": {}}, receive, send)


async def per_request_us(app: Any, requests: int) -> float:
    """CPU per request, including the work Berth's runtime leaves to its periodic flushes
    (the access lines' formatting and writing, the metrics' adding up): `drive` never
    lets the event loop run them, so they are run here, inside the timed span."""
    from berth.logs import ACCESS
    from berth.metrics import REQUEST_METRICS

    started = time.process_time()
    await drive(app, requests)
    ACCESS.flush()
    REQUEST_METRICS.flush()
    return (time.process_time() - started) / requests * 1e6


@contextlib.asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[FastAPI]:
    async with app.router.lifespan_context(app):
        yield app


async def compare(requests: int) -> dict[str, float]:
    from bench.fastapiapp import app as bare
    from berth.application import build_app

    best = {"berth": float("inf"), "fastapi": float("inf")}
    # The runtime with no service routers: /health/live is the runtime's own route.
    async with running(build_app(title="Berth")) as berth:
        await drive(berth, 500)
        await drive(bare, 500)
        for _ in range(ROUNDS):
            best["berth"] = min(best["berth"], await per_request_us(berth, requests))
            best["fastapi"] = min(best["fastapi"], await per_request_us(bare, requests))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    requests = parser.parse_args().requests
    # A database that is never reached (the lifespan's reachability check retries in the
    # background), metrics in a scratch directory, access lines where nobody reads them.
    os.environ.setdefault("POSTGRES_PASSWORD", "bench-inprocess")
    os.environ.setdefault("POSTGRES_HOST", "127.0.0.1")
    os.environ.setdefault("POSTGRES_PORT", "9")
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="berth-bench-"))
    report = sys.stdout
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        from berth import logs

        logs.ACCESS.stream = sink
        best = asyncio.run(compare(requests))
    print(
        f"berth /health/live {best['berth']:.1f} us/request, bare FastAPI "
        f"{best['fastapi']:.1f} us/request: {best['fastapi'] / best['berth']:.2f}x",
        file=report,
    )


if __name__ == "__main__":
    main()
