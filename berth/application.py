"""Builds a service's FastAPI app on Berth's runtime: the engine in the lifespan, health and
version endpoints, metrics, the request deadline, request ids and access logs, JSON errors.

A service calls `build_app(settings, title=..., routers=[...])` from its own factory,
`create_app` in its package's `main.py`, which uvicorn runs (`--factory`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Sequence

from fastapi import APIRouter, FastAPI
from fastapi_offline import FastAPIOffline

from berth import health, version
from berth.db import Database
from berth.deadline import RequestDeadline
from berth.errors import install_error_handlers
from berth.logs import configure_access_log, configure_logging
from berth.metrics import metrics, watch_pool
from berth.observability import RequestObserver
from berth.settings import ConfigError, Settings, load_settings
from berth.watchdog import enforce_memory_budget

log = logging.getLogger("berth")
GC_GENERATION0_THRESHOLD = 20_000


def tune_garbage_collector() -> None:
    """Objects made at start-up (modules, routes, models) live as long as the worker: move
    them out of the collector's way, and collect young objects less often. Each request
    makes thousands of short-lived objects, and with the defaults full collections that
    rescan everything from start-up showed up as latency spikes (bench/tuning.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GENERATION0_THRESHOLD, 20, 20)


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        # One readable line instead of a traceback in every worker.
        raise SystemExit(f"berth: configuration error: {exc}") from None


def build_app(
    settings: Settings | None = None,
    *,
    title: str,
    routers: Sequence[APIRouter] = (),
) -> FastAPI:
    """The service's app: its `routers` behind Berth's runtime."""
    settings = settings if settings is not None else settings_or_exit()
    configure_logging(settings.log_level)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database = Database.from_settings(settings)
        app.state.database = database
        watch_pool(database.engine)
        log.debug(
            "database pool per worker",
            extra={"pool_size": settings.db_pool_size, "max_overflow": settings.db_max_overflow},
        )
        if settings.development_defaults:
            log.warning(
                "running with development-only defaults (POSTGRES_PASSWORD is the "
                "built-in local password); set .env before exposing this to anyone"
            )
        tune_garbage_collector()
        access_log = configure_access_log()
        background = [
            asyncio.create_task(database.wait_until_reachable()),
            asyncio.create_task(access_log.flush_periodically()),
        ]
        if settings.worker_max_rss_mb:
            background.append(
                asyncio.create_task(enforce_memory_budget(settings.worker_max_rss_mb))
            )
        try:
            yield
        finally:
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            access_log.flush()
            await database.dispose()
            log.info("lifespan shutdown complete: database connections closed")

    # FastAPIOffline serves Swagger UI and ReDoc from the image instead of a CDN: the docs
    # work on a network with no internet, and the page loads no third-party script.
    app = FastAPIOffline(
        title=title,
        version=settings.app_version,
        lifespan=lifespan,
        static_url="/docs-assets",
    )
    app.include_router(health.router)
    for router in routers:
        app.include_router(router)
    app.include_router(version.router)
    app.add_route("/metrics", metrics, include_in_schema=False)
    install_error_handlers(app)
    app.add_middleware(RequestDeadline, seconds=settings.request_timeout_seconds)
    app.add_middleware(RequestObserver)  # outermost: it sees the deadline's 503s too
    return app
