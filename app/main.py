"""The service's entry point: uvicorn runs `create_app` (the app service's command in
compose.yaml).

Add a router here when you add a resource; everything else (health, metrics, logs,
errors, the database) comes from Berth's runtime in `berth/`. Modules inside this package
import each other relatively (`from .models import ...`), so its name is only its folder's.
"""

from __future__ import annotations

from fastapi import FastAPI

from berth.application import build_app
from berth.settings import Settings

from .routers import items


def create_app(settings: Settings | None = None) -> FastAPI:
    return build_app(settings, title="Berth", routers=[items.router])
