"""Liveness, readiness, and how the API behaves while the database is away."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import pytest
from alembic import command
from fastapi import APIRouter, FastAPI
from sqlalchemy import text
from testcontainers.community.postgres import PostgresContainer

from berth.application import build_app
from berth.db import Database, SessionDep
from berth.settings import Settings
from tests.stack.harness import free_port
from tests.unit.conftest import admin_connection, alembic_config, settings_for

# A service route that needs the database, as every service has: the runtime's answer when
# the database is away must not depend on which service it runs.
probe = APIRouter(prefix="/api/probe")


@probe.get("")
async def read(session: SessionDep) -> dict[str, int]:
    return {"one": int(await session.scalar(text("SELECT 1")) or 0)}


@probe.post("")
async def write(session: SessionDep) -> dict[str, int]:
    return {"one": int(await session.scalar(text("SELECT 1")) or 0)}


async def serve(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    application = build_app(settings, title="t", routers=[probe])
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


def closed_port() -> int:
    """A port nothing listens on, and nothing will: reserved for this run below the
    ephemeral range (a port-0 number, once closed, can be handed to anyone)."""
    return free_port()


@pytest.fixture
async def no_database_client(postgres: PostgresContainer) -> AsyncIterator[httpx.AsyncClient]:
    unreachable = settings_for(postgres, postgres_port=closed_port())
    async for client in serve(unreachable):
        yield client


async def test_live_answers(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/live")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_when_schema_at_head(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "reason": "schema at head", "revision": "0001"}


async def test_live_needs_no_database(no_database_client: httpx.AsyncClient) -> None:
    response = await no_database_client.get("/health/live")
    assert response.status_code == 200


async def test_not_ready_without_database(no_database_client: httpx.AsyncClient) -> None:
    response = await no_database_client.get("/health/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not ready"
    assert body["reason"].startswith("database unavailable")


async def test_api_fails_fast_with_503_json_without_database(
    no_database_client: httpx.AsyncClient,
) -> None:
    started = time.monotonic()
    for method, path, body in (
        ("GET", "/api/probe", None),
        ("POST", "/api/probe", {"name": "x"}),
    ):
        response = await no_database_client.request(method, path, json=body)
        assert response.status_code == 503, (method, path)
        assert response.json() == {"detail": "database unavailable, try again shortly"}
        assert response.headers["retry-after"] == "5"
    assert time.monotonic() - started < 5


async def test_not_ready_before_migrations(
    postgres: PostgresContainer, fresh_database: str
) -> None:
    async for client in serve(settings_for(postgres, fresh_database)):
        response = await client.get("/health/ready")
        assert response.status_code == 503
        assert response.json()["reason"] == "database schema is not initialised: run migrations"


async def test_ready_when_schema_is_newer_than_the_code(
    postgres: PostgresContainer, fresh_database: str
) -> None:
    settings = settings_for(postgres, fresh_database)
    command.upgrade(alembic_config(settings), "head")
    with admin_connection(postgres, fresh_database) as connection:
        connection.execute("UPDATE alembic_version SET version_num = 'f00dfeed'")
    async for client in serve(settings):
        response = await client.get("/health/ready")
        assert response.status_code == 200
        assert response.json()["revision"] == "f00dfeed"


async def test_not_ready_when_schema_is_behind_the_code(app: FastAPI) -> None:
    database: Database = app.state.database
    behind = Database(
        engine=database.engine,
        sessionmaker=database.sessionmaker,
        heads=frozenset({"0002"}),
        revisions=frozenset({"0001", "0002"}),
    )
    readiness = await behind.readiness()
    assert not readiness.ready
    assert readiness.reason == "schema at 0001, behind this app's head: run migrations"


async def test_unexpected_errors_are_a_json_500(settings: Settings) -> None:
    application = build_app(settings, title="t")

    @application.get("/boom")
    async def boom() -> None:
        raise RuntimeError("kaboom with a secret")

    transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/boom")
    assert response.status_code == 500
    assert response.json() == {"detail": "internal server error"}
