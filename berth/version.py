"""/api/version: which release, and which container, is answering (deploys and rollbacks
check it through Traefik, see berth/probe.py)."""

from __future__ import annotations

import hashlib
import socket

from fastapi import APIRouter, Request
from pydantic import BaseModel

from berth.routing import JSONRoute

router = APIRouter(prefix="/api/version", tags=["meta"], route_class=JSONRoute)


def instance_of(hostname: str) -> str:
    """An opaque id of the container (its hostname, hashed: the id Docker gives a container
    is nobody's business outside the server). scripts/deploy computes the same."""
    return hashlib.sha256(hostname.encode()).hexdigest()[:12]


INSTANCE = instance_of(socket.gethostname())


class Version(BaseModel):
    version: str
    instance: str


@router.get("", response_model=Version)
async def version(request: Request) -> Version:
    return Version(version=request.app.version, instance=INSTANCE)
