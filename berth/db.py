"""The database engine, the per-request session, and the schema check behind readiness."""

from __future__ import annotations

import ast
import asyncio
import logging
import select
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, cast

import psycopg
from fastapi import Depends, Request
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError, DisconnectionError, SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from berth.deadline import within
from berth.settings import Settings

log = logging.getLogger("berth.db")

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations" / "versions"
# Readiness must answer well inside the healthcheck's own timeout.
READINESS_TIMEOUT_SECONDS = 2.0


def create_engine(settings: Settings) -> AsyncEngine:
    engine = create_async_engine(
        # The URL picks the dialect; connections come from the creator below.
        settings.database_url,
        async_creator=connector(settings),
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
        pool_recycle=1800,
    )
    # A pooled connection can die under us (a db restart, failover). Instead of
    # pool_pre_ping's round trip on every checkout, look at the socket: see drop_if_closed.
    event.listen(engine.sync_engine.pool, "checkout", drop_if_closed)
    return engine


def drop_if_closed(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """An idle connection has nothing to read, so a readable socket means the server has
    closed it (Postgres says goodbye before a restart or shutdown). The pool then retries
    with a fresh connection: the request never sees the dead one. A vanished host that sent
    nothing is caught by the statement failing instead, like with pre-ping."""
    raw = dbapi_connection.driver_connection
    try:
        readable = _readable(raw.pgconn.socket)
    except (OSError, ValueError, psycopg.OperationalError):
        readable = True  # no usable socket at all
    if readable:
        raise DisconnectionError("the server closed this pooled connection")


def _readable(descriptor: int) -> bool:
    """Whether `descriptor` has something to read (or is closed), without waiting.
    poll(2), one system call: select(2) refuses any descriptor of 1024 or more with
    ValueError, and a worker with that many open files or sockets then discarded every
    pooled connection it checked out."""
    poller = select.poll()
    poller.register(descriptor, select.POLLIN)
    return bool(poller.poll(0))


def connector(settings: Settings) -> Callable[[], Awaitable[psycopg.AsyncConnection[Any]]]:
    """Opens a connection within DB_CONNECT_TIMEOUT_SECONDS, all of it. psycopg's own
    connect_timeout starts only after the host name is resolved, and resolving a stopped
    container's name can stall for the resolver's 5 s retry."""
    timeout = settings.db_connect_timeout_seconds
    params: dict[str, Any] = {
        "host": settings.postgres_host,
        "port": settings.postgres_port,
        "user": settings.postgres_user,
        "password": settings.postgres_password.get_secret_value(),
        "dbname": settings.postgres_db,
        "connect_timeout": timeout,
        "application_name": "berth-app",
        "options": f"-c statement_timeout={settings.db_statement_timeout_ms}",
        # A network partition shows up as unacknowledged data or silence: give up on the
        # connection after 10 s of either, instead of the kernel's 15+ minutes.
        "tcp_user_timeout": 10_000,
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 5,
        "keepalives_count": 3,
    }

    async def connect() -> psycopg.AsyncConnection[Any]:
        try:
            return await asyncio.wait_for(psycopg.AsyncConnection.connect(**params), timeout)
        except TimeoutError:
            raise psycopg.errors.ConnectionTimeout(
                f"connecting to {settings.postgres_host}:{settings.postgres_port} "
                f"took longer than {timeout}s"
            ) from None

    return connect


def read_revisions(directory: Path = MIGRATIONS) -> tuple[frozenset[str], frozenset[str]]:
    """(heads, every revision) of the migration scripts, read from their `revision` and
    `down_revision` assignments. Importing Alembic for this would cost each worker 6 MB;
    tests/unit/berth/test_migrations.py checks the answer against Alembic's own."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in directory.glob("*.py"):
        values = _assignments(script, ("revision", "down_revision"))
        if isinstance(values.get("revision"), str):
            revisions.add(values["revision"])
            down = values.get("down_revision")
            parents.update([down] if isinstance(down, str) else down or ())
    return frozenset(revisions - parents), frozenset(revisions)


def _assignments(script: Path, names: tuple[str, ...]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for node in ast.parse(script.read_text()).body:
        target, value = None, None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        if isinstance(target, ast.Name) and target.id in names and value is not None:
            found[target.id] = ast.literal_eval(value)
    return found


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str
    revision: str | None = None


@dataclass
class Database:
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    heads: frozenset[str]
    revisions: frozenset[str]

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        engine = create_engine(settings)
        heads, revisions = read_revisions()
        return cls(
            engine=engine,
            sessionmaker=async_sessionmaker(engine, expire_on_commit=False),
            heads=heads,
            revisions=revisions,
        )

    async def readiness(self) -> Readiness:
        try:
            revision = await within(self._schema_revision(), READINESS_TIMEOUT_SECONDS)
        except TimeoutError:
            return Readiness(False, "database did not answer in time")
        except DBAPIError as exc:
            if _is_undefined_table(exc):
                return Readiness(False, "database schema is not initialised: run migrations")
            return Readiness(False, f"database unavailable: {describe(exc)}")
        except (SQLAlchemyError, OSError) as exc:
            return Readiness(False, f"database unavailable: {describe(exc)}")
        return self._judge_revision(revision)

    def _judge_revision(self, revision: str | None) -> Readiness:
        if revision in self.heads:
            return Readiness(True, "schema at head", revision)
        if revision is None:
            return Readiness(False, "database schema is not initialised: run migrations")
        if revision in self.revisions:
            return Readiness(
                False, f"schema at {revision}, behind this app's head: run migrations", revision
            )
        # A revision this code has never seen was written by a newer release. Migrations
        # are expand-then-contract, so older code keeps working on it (rolling deploys and
        # rollbacks depend on that).
        return Readiness(True, "schema ahead of this app's head (newer release)", revision)

    async def _schema_revision(self) -> str | None:
        async with self.engine.connect() as connection:
            result = await connection.execute(text("SELECT version_num FROM alembic_version"))
            return result.scalar_one_or_none()

    async def wait_until_reachable(self, max_delay: float = 10.0) -> None:
        """Retry with backoff until the db answers. Containers start in any order after a
        reboot, so an unreachable db is a state to report, never a reason to exit."""
        delay, attempt = 0.5, 1
        while True:
            try:
                async with self.engine.connect() as connection:
                    await connection.execute(text("SELECT 1"))
            except (SQLAlchemyError, OSError) as exc:
                log.warning(
                    "database not reachable (attempt %d): %s; retrying in %.1fs",
                    attempt,
                    describe(exc),
                    delay,
                )
                await asyncio.sleep(delay)
                delay, attempt = min(delay * 2, max_delay), attempt + 1
            else:
                if attempt > 1:
                    log.info("database reachable after %d attempts", attempt)
                return

    async def dispose(self) -> None:
        await self.engine.dispose()


def _is_undefined_table(exc: DBAPIError) -> bool:
    return getattr(exc.orig, "sqlstate", None) == "42P01"


def describe(exc: BaseException) -> str:
    """The first line of a database error's message: the driver's own words, without
    SQLAlchemy's multi-line wrapper."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(cause).__name__


def get_database(request: Request) -> Database:
    return cast(Database, request.app.state.database)


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One session per request, committed before the response is sent."""
    async with get_database(request).sessionmaker() as session:
        yield session
        await session.commit()


# scope="function": the commit above must finish before the client sees a 2xx. FastAPI's
# default for yield dependencies ("request") runs it after the response is sent.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
DatabaseDep = Annotated[Database, Depends(get_database)]
