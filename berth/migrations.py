"""How Berth runs Alembic: `alembic upgrade head` in the `migrate` service calls
`run_migrations` from the service's `migrations/env.py`.

Concurrent runs are safe: each takes a session-level advisory lock on its own connection and
holds it for the whole upgrade, so a second run waits, then finds the schema at head and
exits 0. A failure rolls the whole upgrade back (Postgres has transactional DDL), names the
failing revision in one line, and exits non-zero.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Collection, Mapping
from logging.config import fileConfig
from typing import Any

from alembic import context
from alembic.runtime.migration import MigrationContext, MigrationInfo
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, MetaData, create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from berth.db import describe
from berth.preflight import EX_CONFIG
from berth.settings import ConfigError, Settings, load_settings

# Any constant shared by every migrator of this database; spells "berth" in ASCII.
MIGRATION_LOCK_ID = 0x6265727468
# How long to wait for another migrator before giving up.
LOCK_WAIT_SECONDS = 600
# DDL must not queue behind a long transaction forever while holding up the app's queries.
DDL_LOCK_TIMEOUT = "15s"

log = logging.getLogger("berth.migrate")


def fail(message: str) -> SystemExit:
    return SystemExit(f"berth: migration failed: {message}")


def settings() -> Settings:
    given = context.config.attributes.get("settings")
    if isinstance(given, Settings):
        return given
    try:
        return load_settings()
    except ConfigError as exc:
        # The same line and exit status as preflight's, before any connection: a deploy
        # that migrates needs no preflight run of its own (scripts/deploy).
        print(f"berth: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(EX_CONFIG) from None


def acquire_lock(connection: Connection) -> None:
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    announced = False
    try_lock = text("SELECT pg_try_advisory_lock(:id)").bindparams(id=MIGRATION_LOCK_ID)
    while not connection.scalar(try_lock):
        if time.monotonic() > deadline:
            raise fail(f"another migration held the lock for over {LOCK_WAIT_SECONDS}s")
        if not announced:
            log.info("another migration is running; waiting for it to finish")
            announced = True
        time.sleep(0.5)
    # Session-level settings persist after this commit, as does the advisory lock.
    connection.execute(text(f"SET lock_timeout = '{DDL_LOCK_TIMEOUT}'"))
    connection.commit()


def pending_revisions() -> list[str]:
    current = context.get_context().get_current_revision()
    script = ScriptDirectory.from_config(context.config)
    upgrades = script.iterate_revisions("heads", current or "base")
    return [revision.revision for revision in reversed(list(upgrades))]


def upgrade(connection: Connection, metadata: MetaData) -> None:
    applied: list[str] = []

    def record(
        ctx: MigrationContext,
        step: MigrationInfo,
        heads: Collection[Any],
        run_args: Mapping[str, Any],
    ) -> None:
        applied.extend(step.up_revision_ids)

    context.configure(
        connection=connection,
        target_metadata=metadata,
        on_version_apply=record,
        compare_server_default=True,
    )
    pending = pending_revisions()
    connection.commit()  # so the upgrade below runs in a transaction of its own
    try:
        with context.begin_transaction():
            context.run_migrations()
    except Exception as exc:
        failing = pending[len(applied)] if len(applied) < len(pending) else "?"
        log.debug("migration %s failed", failing, exc_info=exc)
        raise fail(
            f"revision {failing} raised {type(exc).__name__}: {describe(exc)}; "
            "the upgrade was rolled back, the schema is unchanged "
            "(LOG_LEVEL=debug shows the traceback)"
        ) from None


def run_online(metadata: MetaData) -> None:
    current = settings()
    log.setLevel(current.log_level.upper())
    engine = create_engine(
        current.database_url,
        poolclass=NullPool,
        connect_args={
            "connect_timeout": current.db_connect_timeout_seconds,
            "application_name": "berth-migrate",
        },
    )
    where = f"{current.postgres_host}:{current.postgres_port}/{current.postgres_db}"
    try:
        connection = engine.connect()
    except OperationalError as exc:
        reason = describe(exc)
        if "password authentication failed" in reason:
            reason += (
                " (Postgres takes POSTGRES_PASSWORD only when it creates the volume; "
                "to change it later, also run ALTER ROLE ... PASSWORD in psql)"
            )
        raise fail(f"cannot connect to {where} as {current.postgres_user}: {reason}") from None
    with connection:
        acquire_lock(connection)
        upgrade(connection, metadata)
        # Closing the connection also releases the session-level advisory lock.
    engine.dispose()


def run_offline(metadata: MetaData) -> None:
    context.configure(
        url=settings().database_url.render_as_string(hide_password=True),
        target_metadata=metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations(metadata: MetaData) -> None:
    """What `migrations/env.py` calls: Alembic's command in progress, run against the
    service's `metadata` (autogenerate compares the models to it)."""
    config = context.config
    if config.config_file_name is not None and config.attributes.get("configure_logger", True):
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    if context.is_offline_mode():
        run_offline(metadata)
    else:
        run_online(metadata)
