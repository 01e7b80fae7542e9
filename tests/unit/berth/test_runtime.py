"""The runtime's request layer in-process: the body limit for every method and framing,
admission with 503 and Retry-After, and the request id on the runtime's own answers."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime

import httpx
import pytest
from fastapi import FastAPI, Request
from testcontainers.community.postgres import PostgresContainer

from berth.admission import Admission
from berth.application import build_app
from tests.unit.conftest import settings_for

LIMIT = 1000


@pytest.fixture
async def limited(postgres: PostgresContainer) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """An app with a 1000-byte body limit and one request in flight per worker."""
    settings = settings_for(
        postgres, max_request_body_bytes=LIMIT, max_in_flight_per_worker=1, admission_wait_ms=50
    )
    application = build_app(settings, title="t")
    application.state.handled = []
    application.state.gate = asyncio.Event()

    @application.api_route("/echo", methods=["POST", "PUT", "PATCH", "DELETE"])
    async def echo(request: Request) -> dict[str, int]:
        application.state.handled.append(request.method)
        return {"received": len(await request.body())}

    @application.delete("/ignores-body")
    async def ignores_body() -> dict[str, str]:
        application.state.handled.append("DELETE")
        return {"deleted": "yes"}

    @application.get("/wait")
    async def wait() -> dict[str, str]:
        await application.state.gate.wait()
        return {"waited": "yes"}

    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield application, client


def chunked(body: bytes) -> Iterator[bytes]:
    for start in range(0, len(body), 300):
        yield body[start : start + 300]


async def as_stream(body: bytes) -> AsyncIterator[bytes]:
    for part in chunked(body):
        yield part


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
async def test_bodies_over_the_limit_are_413_before_the_handler_runs(
    limited: tuple[FastAPI, httpx.AsyncClient], method: str
) -> None:
    application, client = limited
    declared = await client.request(method, "/echo", content=b"x" * (LIMIT + 1))
    streamed = await client.request(method, "/echo", content=as_stream(b"x" * (LIMIT + 1)))
    assert streamed.request.headers.get("transfer-encoding") == "chunked"
    for response in (declared, streamed):
        assert response.status_code == 413
        assert response.json() == {"detail": f"request body larger than {LIMIT} bytes"}
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
    assert application.state.handled == []
    at_limit = await client.request(method, "/echo", content=as_stream(b"x" * LIMIT))
    assert at_limit.json() == {"received": LIMIT}


async def test_a_handler_that_ignores_its_body_never_runs_with_one_too_large(
    limited: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    application, client = limited
    for content in (b"x" * (LIMIT + 1), as_stream(b"x" * (LIMIT + 1))):
        response = await client.request("DELETE", "/ignores-body", content=content)
        assert response.status_code == 413
    assert application.state.handled == []


async def test_past_the_in_flight_limit_requests_get_503_with_retry_after(
    limited: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    application, client = limited
    first = asyncio.create_task(client.get("/wait"))
    await asyncio.sleep(0.05)  # the only slot is taken
    refused = await client.get("/wait", headers={"X-Request-ID": "over-the-limit"})
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["x-request-id"] == "over-the-limit"
    assert refused.json() == {"detail": "the server is at capacity, try again shortly"}
    # Berth's own endpoints are never limited: the healthcheck gets through.
    assert (await client.get("/health/live")).status_code == 200
    application.state.gate.set()
    assert (await first).status_code == 200
    assert (await client.get("/wait")).status_code == 200  # the slot was given back


async def test_a_request_waiting_for_a_slot_gets_it_when_one_frees() -> None:
    admission = Admission(limit=1, wait_seconds=1)
    assert await admission.enter()
    waiting = asyncio.create_task(admission.enter())
    await asyncio.sleep(0.01)
    admission.leave()
    assert await waiting
    assert admission.running == 1
    admission.leave()
    assert admission.running == 0


async def test_a_cancelled_waiter_never_keeps_a_slot() -> None:
    admission = Admission(limit=1, wait_seconds=5)
    assert await admission.enter()
    waiting = asyncio.create_task(admission.enter())
    await asyncio.sleep(0.01)
    admission.leave()  # hands the slot to the waiter...
    waiting.cancel()  # ...which is cancelled before it runs: the slot must come back
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert admission.running == 0
    assert await admission.enter()


async def test_access_lines_are_the_json_the_formatter_writes(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from berth.logs import ACCESS, access_line

    caplog.set_level(logging.INFO, logger="berth.access")  # as berth/logging.json sets it
    ACCESS.flush()  # what earlier tests left, to where it goes
    written = io.StringIO()
    monkeypatch.setattr(ACCESS, "stream", written)
    access_line(b"abc", "GET", '/a"b\\c\u00e9\n', 200, 0.0015, None)
    access_line(b"def", "POST", "/api/items", 201, 0.25, ("10.213.0.7", 41234))
    ACCESS.flush()  # formatted and written here, in one batch
    first, second = (json.loads(line) for line in written.getvalue().splitlines())
    assert list(first) == ["level", "logger", "message", "request_id", "method", "path",
                           "status", "duration_ms", "client", "time"]  # fmt: skip
    assert first["request_id"] == "abc"
    assert first["path"] == '/a"b\\c\u00e9\n'
    assert first["client"] is None
    assert first["duration_ms"] == 1.5
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", first["time"])
    assert abs(datetime.fromisoformat(first["time"]).timestamp() - time.time()) < 5
    assert (second["method"], second["status"], second["duration_ms"]) == ("POST", 201, 250.0)
    assert second["client"] == "10.213.0.7"


async def test_the_deadline_starts_once_the_body_is_in(postgres: PostgresContainer) -> None:
    """A slow upload is the client's time (Traefik's read timeout bounds it); the deadline
    bounds the server's work, from the moment the body is in."""
    application = build_app(settings_for(postgres, request_timeout_seconds=0.3), title="t")

    @application.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"received": len(await request.body())}

    @application.post("/hang")
    async def hang(request: Request) -> None:
        await request.body()
        await asyncio.sleep(30)

    async def slowly() -> AsyncIterator[bytes]:
        for _ in range(3):
            await asyncio.sleep(0.25)
            yield b"x" * 10

    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        uploaded = await client.post("/echo", content=slowly())
        assert uploaded.status_code == 200
        assert uploaded.json() == {"received": 30}
        hung = await client.post("/hang", content=slowly())
        assert hung.status_code == 503
        assert hung.headers["retry-after"] == "5"
        assert len(hung.headers["x-request-id"]) == 32


async def test_a_deadline_answer_is_timed_to_the_503_not_to_the_handler_unwinding(
    postgres: PostgresContainer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handler on a hung connection may take long to unwind after the deadline answered;
    the access line and the latency metric measure what the client waited for."""
    import berth.runtime

    lines: list[tuple[object, ...]] = []
    monkeypatch.setattr(berth.runtime, "access_line", lambda *fields: lines.append(fields))
    application = build_app(settings_for(postgres, request_timeout_seconds=0.3), title="t")

    @application.get("/stuck")
    async def stuck() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            await asyncio.sleep(1.5)  # cleanup that hangs, like a rollback on a frozen db

    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/stuck")  # returns once the whole app call is done
    assert response.status_code == 503
    (line,) = [fields for fields in lines if fields[2] == "/stuck"]
    _, _, _, status, seconds, _ = line
    assert status == 503
    assert 0.3 <= float(str(seconds)) < 1.0  # not the 1.8 s of unwinding
