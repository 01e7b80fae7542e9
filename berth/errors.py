"""Error responses: every failure leaves as JSON with a status code that says whose fault it
was, never as a traceback."""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request, Response, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from berth.db import describe

log = logging.getLogger("berth.errors")

# How long a client should wait before retrying while the database is away.
RETRY_AFTER_SECONDS = 5


class Problem(BaseModel):
    """The body of every error response that is not a validation error, for routers to
    document their 404s and 409s with."""

    detail: str


async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("%s %s: database unavailable: %s", request.method, request.url.path, describe(exc))
    return JSONResponse(
        {"detail": "database unavailable, try again shortly"},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


async def database_error(request: Request, exc: Exception) -> JSONResponse:
    # A DBAPIError for a connection that was dropped mid-query is an outage, not a bug.
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return await database_unavailable(request, exc)
    return await internal_error(request, exc)


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        {"detail": "internal server error"}, status_code=status.HTTP_500_INTERNAL_SERVER_ERROR
    )


async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, minus the echoed input: the rejected value may be unencodable (a
    lone surrogate, an infinite float) or simply huge, and the client already has it."""
    assert isinstance(exc, RequestValidationError)
    errors = []
    for error in exc.errors():
        message = error["msg"]
        if error["type"] == "json_invalid" and "error" in error.get("ctx", {}):
            message = f"{message}: {error['ctx']['error']}"
        errors.append({"type": error["type"], "loc": list(error["loc"]), "msg": message})
    return JSONResponse({"detail": errors}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


async def http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's handler, except that a 405's Allow lists every method the path accepts:
    Starlette reports only the methods of the first route whose path matched."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
        allowed = ", ".join(_documented_methods(request))
        exc = StarletteHTTPException(exc.status_code, exc.detail, {"Allow": allowed})
    return await http_exception_handler(request, exc)


def _documented_methods(request: Request) -> list[str]:
    """The methods the OpenAPI document lists for the request's path (HEAD comes with GET)."""
    methods: set[str] = set()
    for template, operations in request.app.openapi()["paths"].items():
        parts = re.split(r"(\{[^/}]+\})", template)
        pattern = "".join("[^/]+" if part.startswith("{") else re.escape(part) for part in parts)
        if re.fullmatch(pattern, request.url.path):
            methods |= {method.upper() for method in operations}
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    for outage in (OperationalError, InterfaceError, PoolTimeoutError, ConnectionError):
        app.add_exception_handler(outage, database_unavailable)
    app.add_exception_handler(DBAPIError, database_error)
    app.add_exception_handler(Exception, internal_error)
