"""The request deadline answers for a handler that hangs."""

from __future__ import annotations

import asyncio
import time

import httpx
from testcontainers.community.postgres import PostgresContainer

from berth.application import build_app
from tests.unit.conftest import settings_for


async def test_a_hung_request_gets_a_503_at_the_deadline(postgres: PostgresContainer) -> None:
    application = build_app(settings_for(postgres, request_timeout_seconds=0.3), title="t")
    unwound = asyncio.Event()

    @application.get("/hang")
    async def hang() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            unwound.set()

    @application.get("/quick")
    async def quick() -> dict[str, str]:
        return {"ok": "yes"}

    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        started = time.monotonic()
        response = await client.get("/hang")
        elapsed = time.monotonic() - started
        assert response.status_code == 503
        assert response.json() == {"detail": "the request took too long, try again shortly"}
        assert response.headers["retry-after"] == "5"
        assert 0.3 <= elapsed < 2
        await asyncio.wait_for(unwound.wait(), timeout=2)  # the handler was cancelled
        assert (await client.get("/quick")).json() == {"ok": "yes"}
