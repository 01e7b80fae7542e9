"""/api/version: which release is answering (deploys and rollbacks check it)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

from berth.routing import JSONRoute

router = APIRouter(prefix="/api/version", tags=["meta"], route_class=JSONRoute)


class Version(BaseModel):
    version: str


@router.get("", response_model=Version)
async def version(request: Request) -> Version:
    return Version(version=request.app.version)
