"""Builds a service's FastAPI app on Berth's runtime: the engine in the lifespan, health and
version endpoints, metrics, and berth/runtime.py in front of every request (request ids,
the body limit, admission, the deadline, metrics and access logs), JSON errors.

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
from berth.admission import Admission
from berth.db import Database
from berth.errors import install_error_handlers
from berth.logs import configure_access_log, configure_logging
from berth.metrics import REQUEST_METRICS, metrics, watch_pool
from berth.runtime import Runtime
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
            asyncio.create_task(REQUEST_METRICS.flush_periodically()),
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
            REQUEST_METRICS.flush()
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
    # Routes are matched in order, each request against every route before its own: the
    # documentation's routes (added by FastAPIOffline's constructor) go last, and Berth's
    # health routes are the app's own rather than an included router, which FastAPI
    # matches through an extra layer (together 11 us of a /health/live request,
    # bench/tuning.md).
    documentation = list(app.router.routes)
    app.router.routes.clear()
    app.router.routes.extend(health.router.routes)
    for router in routers:
        app.include_router(router)
    app.include_router(version.router)
    app.add_route("/metrics", metrics, include_in_schema=False)
    app.router.routes.extend(documentation)
    install_error_handlers(app)
    app.add_middleware(
        Runtime,
        deadline_seconds=settings.request_timeout_seconds,
        max_body_bytes=settings.max_request_body_bytes,
        admission=Admission(settings.in_flight_per_worker, settings.admission_wait_ms / 1000),
        metrics=REQUEST_METRICS,
    )
    return app
