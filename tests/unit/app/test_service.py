"""The service as a whole, whatever its resources: ready at the head of its own migrations,
and its API documented. These hold for Berth's items example and for a service generated
without it (copier.yml), so they stay when the example goes."""

from __future__ import annotations

import httpx

from berth.db import read_revisions


async def test_ready_at_the_head_of_its_own_migrations(client: httpx.AsyncClient) -> None:
    heads, _ = read_revisions()
    response = await client.get("/health/ready")
    assert response.status_code == 200
    assert {response.json()["revision"]} == heads


async def test_its_api_is_documented(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    assert {"/health/live", "/health/ready"} <= set(schema["paths"])
    docs = await client.get("/docs")
    assert docs.status_code == 200
    assert "swagger-ui" in docs.text
