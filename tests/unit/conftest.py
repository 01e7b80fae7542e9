"""In-process tests of the app against a real Postgres started by Testcontainers.

One container serves the whole session; each test that uses `client` leaves every table of
the service empty (its rows are truncated afterwards, its schema stays at head).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from alembic import command
from alembic.config import Config
from fastapi import FastAPI
from testcontainers.community.postgres import PostgresContainer

from app.main import create_app
from berth.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
POSTGRES_IMAGE = os.environ.get("POSTGRES_IMAGE", "postgres:17")
PASSWORD = "unit-test-password"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresContainer]:
    container = PostgresContainer(
        POSTGRES_IMAGE, username="berth", password=PASSWORD, dbname="berth", driver="psycopg"
    )
    container.start()
    try:
        yield container
    finally:
        container.stop()


def settings_for(
    postgres: PostgresContainer, database: str = "berth", **overrides: object
) -> Settings:
    values: dict[str, object] = {
        "postgres_host": postgres.get_container_host_ip(),
        "postgres_port": int(postgres.get_exposed_port(5432)),
        "postgres_user": "berth",
        "postgres_password": PASSWORD,
        "postgres_db": database,
    }
    return load_settings(**{**values, **overrides})


def alembic_config(settings: Settings, ini: Path = ROOT / "alembic.ini") -> Config:
    config = Config(str(ini))
    config.attributes["settings"] = settings
    config.attributes["configure_logger"] = False
    return config


@pytest.fixture(scope="session")
def settings(postgres: PostgresContainer) -> Settings:
    settings = settings_for(postgres)
    command.upgrade(alembic_config(settings), "head")
    return settings


def admin_connection(postgres: PostgresContainer, database: str = "berth") -> psycopg.Connection:
    return psycopg.connect(
        host=postgres.get_container_host_ip(),
        port=int(postgres.get_exposed_port(5432)),
        user="berth",
        password=PASSWORD,
        dbname=database,
        autocommit=True,
    )


@pytest.fixture
def fresh_database(postgres: PostgresContainer) -> Iterator[str]:
    """An empty database of its own, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with admin_connection(postgres) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with admin_connection(postgres) as connection:
            connection.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI, postgres: PostgresContainer) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client
    with admin_connection(postgres) as connection:
        empty_service_tables(connection)


def empty_service_tables(connection: psycopg.Connection) -> None:
    """TRUNCATE every table the migrations made, except Alembic's own."""
    tables = connection.execute(
        "SELECT quote_ident(tablename) FROM pg_tables "
        "WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
    ).fetchall()
    if tables:
        names = ", ".join(name for (name,) in tables)
        connection.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
