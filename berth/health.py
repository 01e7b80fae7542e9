"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from berth.db import DatabaseDep
from berth.routing import JSONRoute

router = APIRouter(prefix="/health", tags=["health"], route_class=JSONRoute)


class Live(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    reason: str
    revision: str | None


@router.get("/live", response_model=Live)
async def live() -> Live:
    """The process answers. Never touches the database, so a db outage can't make the
    container look dead and get it restarted for nothing."""
    return Live(status="ok")


@router.get("/ready", response_model=Ready, responses={503: {"model": Ready}})
async def ready(database: DatabaseDep) -> JSONResponse:
    """200 only when the database answers and its schema is at (or past) this app's head."""
    readiness = await database.readiness()
    body = Ready(
        status="ready" if readiness.ready else "not ready",
        reason=readiness.reason,
        revision=readiness.revision,
    )
    code = status.HTTP_200_OK if readiness.ready else status.HTTP_503_SERVICE_UNAVAILABLE
    return JSONResponse(body.model_dump(), status_code=code)
