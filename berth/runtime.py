"""Berth's per-request machinery, in one pure-ASGI layer in front of FastAPI.

For every HTTP request, in this order:
1. a request id (the client's `X-Request-ID` if it is short and plain, else a new one),
   returned on every answer;
2. the body limit: a declared `Content-Length` over the limit is refused with 413 before
   anything runs; any other body is read here, up to the limit, before the handler runs;
3. admission: at most `limit` requests per worker run at once (berth/admission.py); the
   rest wait briefly for a slot, then get 503 with `Retry-After`;
4. the deadline (berth/deadline.py), from the moment the body is in: a request still
   waiting or running after it gets 503;
5. afterwards, the metrics (berth/metrics.py) and one JSON access line (berth/logs.py).

One layer instead of one middleware per concern: each layer costs a coroutine, a `send`
wrapper and a copy of every response message per request, and measured per request these
were a large part of the runtime's cost (bench/tuning.md).

Why the body limit lives here and not in Traefik: Traefik's only body limit is its
buffering middleware, which holds each body in the proxy until it is complete, so a slow
upload reached uvicorn only after a `docker compose stop app` had closed its listener, and
failed. Here the request is in flight in uvicorn from its first byte, and a stop lets it
finish. Starlette's own RequestBodyLimitMiddleware counts only the bytes a handler reads:
a DELETE that ignores its body would run and then answer 413, and a chunked one would never
be checked. Reading the body before admission also means a slow upload never holds an
admission slot while it trickles in.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import time
from collections.abc import Iterable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from berth.admission import Admission
from berth.deadline import answer_deadline_exceeded, log_deadline_exceeded
from berth.logs import access_line
from berth.metrics import RequestMetrics

REQUEST_ID_HEADER = b"x-request-id"
# A client-sent id is kept only if it is short and plain: it goes into logs verbatim.
_ACCEPTABLE_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,64}$")
# Berth's own endpoints answer under any load: the healthcheck and Prometheus must get
# through exactly when the app is busiest.
UNLIMITED_PATHS = ("/health/", "/metrics")
OVERLOAD_RETRY_AFTER_SECONDS = 1
# Request ids: 128 random bits from a generator seeded by the OS once per worker, not an
# os.urandom system call per request. Unique, not secret: nothing trusts an id.
_ids = random.Random(os.urandom(32))  # noqa: S311


def _json_answer(status: int, detail: str, *extra: tuple[bytes, bytes]) -> list[Message]:
    body = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    return [
        {"type": "http.response.start", "status": status, "headers": headers},
        {"type": "http.response.body", "body": body},
    ]


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    pass


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body, or BodyTooLarge as soon as it passes `limit` bytes."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        part = message.get("body", b"")
        size += len(part)
        if size > limit:
            raise BodyTooLarge
        parts.append(part)
        if not message.get("more_body", False):
            return parts[0] if len(parts) == 1 else b"".join(parts)


def replaying(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body read already, then what the server sends."""
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if delivered:
            return await receive()
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


class Runtime:
    def __init__(
        self,
        app: ASGIApp,
        *,
        deadline_seconds: float,
        max_body_bytes: int,
        admission: Admission,
        metrics: RequestMetrics,
    ) -> None:
        self.app = app
        self.deadline_seconds = deadline_seconds
        self.max_body_bytes = max_body_bytes
        self.admission = admission
        self.metrics = metrics
        self.deadlines = Deadlines(deadline_seconds)
        # The connection stays open: uvicorn reads and drops the rest of the body (Traefik's
        # read timeout bounds it). Closing it instead made Traefik, still sending the
        # body, answer 502 in place of the 413.
        self.too_large = _json_answer(413, f"request body larger than {max_body_bytes} bytes")
        self.overloaded = _json_answer(
            503,
            "the server is at capacity, try again shortly",
            (b"retry-after", str(OVERLOAD_RETRY_AFTER_SECONDS).encode()),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = declared_length = None
        chunked = False
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                if _ACCEPTABLE_ID.match(value):
                    request_id = value
            elif name == b"content-length":
                declared_length = value
            elif name == b"transfer-encoding":
                chunked = True
        if request_id is None:
            request_id = b"%032x" % _ids.getrandbits(128)
        request = asyncio.current_task()
        assert request is not None
        exchange = Exchange(send, (REQUEST_ID_HEADER, request_id), request, scope)
        metrics = self.metrics
        metrics.started()
        try:
            # Inline rather than in coroutines of their own: a request with no body (most
            # of them) that finds a free slot awaits nothing but the app (each extra
            # coroutine per request measured about 0.5 us, bench/tuning.md).
            app_receive: Receive | None = receive
            if chunked or (declared_length is not None and declared_length != b"0"):
                app_receive = await self._read_body(receive, exchange, declared_length)
            if app_receive is not None:
                # The deadline bounds the server's work from here on, not the client's
                # upload above: Traefik's read timeout bounds that (slow clients are cut
                # after 30 s).
                self.deadlines.watch(exchange, time.perf_counter())
                admission = self.admission
                if scope["path"].startswith(UNLIMITED_PATHS):
                    await self.app(scope, app_receive, exchange.send)
                elif admission.try_enter() or await admission.enter():
                    try:
                        await self.app(scope, app_receive, exchange.send)
                    finally:
                        admission.leave()
                else:
                    await exchange.answer(self.overloaded, refused="overload")
        except asyncio.CancelledError:
            if exchange.answering is None:
                raise  # not ours: the server is shutting down
            request.uncancel()
            await exchange.answering
        finally:
            self.deadlines.release(exchange)
            # To the response's last byte: after the deadline's 503 the abandoned handler may
            # still be unwinding on a hung connection, but the client's wait ended there.
            seconds = (exchange.answered or time.perf_counter()) - started
            method = scope["method"]
            metrics.record(
                method, getattr(scope.get("route"), "path", None), exchange.status, seconds,
                exchange.refused,
            )  # fmt: skip
            access_line(
                request_id, method, scope["path"], exchange.status, seconds, scope.get("client")
            )

    async def _read_body(
        self, receive: Receive, exchange: Exchange, declared_length: bytes | None
    ) -> Receive | None:
        """The body limit: a receive that replays the body read whole, or None once the
        request is answered (413) or its client is gone."""
        # uvicorn has already refused a Content-Length that is not a number.
        if declared_length is not None and int(declared_length) > self.max_body_bytes:
            await exchange.answer(self.too_large, refused="too_large")
            return None
        try:
            return replaying(await read_body(receive, self.max_body_bytes), receive)
        except BodyTooLarge:
            await exchange.answer(self.too_large, refused="too_large")
        except ClientGone:
            exchange.status = 499  # nginx's "client closed request": nobody got an answer
        return None


class Deadlines:
    """The deadline of every request in flight, checked by one periodic task: a timer per
    request (`call_later`, then `cancel`) cost 3 us of a request's 50 (bench/tuning.md).
    Every request has the same deadline, so the oldest expire first."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.check_every = min(0.25, seconds / 4)
        self._watched: dict[Exchange, float] = {}
        self._checker: asyncio.Task[None] | None = None

    def watch(self, exchange: Exchange, started: float) -> None:
        self._watched[exchange] = started + self.seconds
        if self._checker is None or self._checker.done():
            self._checker = asyncio.get_running_loop().create_task(self._check())

    def release(self, exchange: Exchange) -> None:
        self._watched.pop(exchange, None)

    async def _check(self) -> None:
        while True:
            await asyncio.sleep(self.check_every)
            now = time.perf_counter()
            expired = []
            for exchange, deadline in self._watched.items():
                if deadline > now:
                    break
                expired.append(exchange)
            for exchange in expired:
                del self._watched[exchange]
                log_deadline_exceeded(exchange.scope, self.seconds)
                exchange.expire()


class Exchange:
    """One request's response side: adds the request id, remembers the status, and stops
    the app's own messages once the runtime has answered in its place."""

    __slots__ = (
        "_send",
        "answered",
        "answering",
        "id_header",
        "refused",
        "request",
        "scope",
        "started",
        "status",
    )

    def __init__(
        self, send: Send, id_header: tuple[bytes, bytes], request: asyncio.Task[Any], scope: Scope
    ) -> None:
        self._send = send
        self.request = request
        self.scope = scope
        self.id_header = id_header
        self.status = 500  # what the client gets if the app raises before answering
        self.started = False
        self.refused: str | None = None
        self.answering: asyncio.Future[None] | None = None
        self.answered: float | None = None  # when the response's last byte went out

    async def send(self, message: Message) -> None:
        if self.answering is not None:  # the client already has the deadline's 503
            return
        if message["type"] == "http.response.start":
            self.started = True
            self.status = message["status"]
            message = {**message, "headers": [*message.get("headers", ()), self.id_header]}
        await self._send(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            self.answered = time.perf_counter()

    async def answer(self, messages: Iterable[Message], refused: str) -> None:
        self.refused = refused
        for message in messages:
            await self.send(message)

    def expire(self) -> None:
        if not self.started:
            self.answering = asyncio.ensure_future(self._answer_timeout())
        else:  # too late for a status: end the request, the client sees it cut short
            self.answering = asyncio.ensure_future(asyncio.sleep(0))
        self.request.cancel()

    async def _answer_timeout(self) -> None:
        self.status = 503
        await answer_deadline_exceeded(self._send, self.id_header)
        self.answered = time.perf_counter()
