"""The service's entry point: `uvicorn app.main:create_app --factory`.

Add a router here when you add a resource; everything else (health, metrics, logs,
errors, the database) comes from Berth's runtime in `berth/`.
"""

from __future__ import annotations

from fastapi import FastAPI

from app.routers import items
from berth.application import build_app
from berth.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    return build_app(settings, title="Berth", routers=[items.router])
