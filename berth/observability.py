"""Per request: a request id, one JSON log line, and the metrics in berth/metrics.py.

A pure ASGI middleware (no BaseHTTPMiddleware), so it adds no task per request and sees
every answer, including the deadline's 503 and the 500 of an unhandled error.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from berth.metrics import IN_FLIGHT, LATENCY, REQUESTS

log = logging.getLogger("berth.access")

REQUEST_ID_HEADER = b"x-request-id"
# A client-sent id is kept only if it is short and plain: it goes into logs verbatim.
_ACCEPTABLE_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,64}$")


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER and _ACCEPTABLE_ID.match(value):
            return bytes(value).decode()
    return uuid.uuid4().hex


def _route(scope: Scope) -> str:
    """The route's template, not the raw path, so metric labels stay few."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else "unmatched"


class RequestObserver:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        status = 500  # what the client gets if the app raises before answering
        started = time.perf_counter()
        # When the response's last byte went out. The deadline's 503 goes out while the
        # abandoned handler may still be unwinding on a hung connection: the client's wait,
        # the one to log and measure, ended here.
        answered: float | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER, request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                answered = time.perf_counter()

        IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            IN_FLIGHT.dec()
            seconds = (answered or time.perf_counter()) - started
            method, route = scope["method"], _route(scope)
            REQUESTS.labels(method, route, str(status)).inc()
            LATENCY.labels(method, route).observe(seconds)
            client = scope.get("client")
            log.info(
                "request",
                extra={
                    "request_id": request_id,
                    "method": method,
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                    "client": client[0] if client else None,
                },
            )
