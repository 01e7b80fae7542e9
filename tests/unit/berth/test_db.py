"""A worker holding more than 1024 descriptors still uses its pooled connections."""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import event

from berth.application import build_app
from berth.settings import Settings

HELD = 1100


@pytest.fixture
def many_descriptors() -> Iterator[None]:
    """Hold HELD open descriptors, so every new socket gets a number over 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < HELD + 200:
        pytest.skip(f"the hard descriptor limit ({hard}) is too low for this test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, HELD + 200), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(HELD)]
    try:
        yield
    finally:
        for descriptor in held:
            os.close(descriptor)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_pooled_connections_past_descriptor_1024_are_used(
    settings: Settings, many_descriptors: None
) -> None:
    application = build_app(settings, title="t")
    sockets: list[int] = []
    async with application.router.lifespan_context(application):
        pool = application.state.database.engine.sync_engine.pool

        @event.listens_for(pool, "checkout")
        def _seen(dbapi_connection: object, *_: object) -> None:
            sockets.append(dbapi_connection.driver_connection.pgconn.socket)  # type: ignore[attr-defined]

        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for _ in range(5):  # each checkout after the first reuses the pooled connection
                response = await client.get("/health/ready")  # a query on a pooled connection
                assert response.status_code == 200, response.text
    assert len(sockets) >= 5
    assert min(sockets) >= 1024
    # The start-up check's connection and the requests': reused, never replaced.
    assert len(set(sockets)) <= 2
