"""A deadline for every request, so no client waits forever on a database that has hung.

A connection to a frozen Postgres (stalled disk, paused VM) never errors: the kernel still
acknowledges packets, so neither TCP timeouts nor Postgres's statement_timeout end the wait.
Cancelling the handler is not enough either, because its cleanup (a rollback on the same
connection) hangs too. So the deadline answers 503 itself and lets the cancelled handler
finish in the background whenever the database comes back, like Go's http.TimeoutHandler.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("berth.deadline")
T = TypeVar("T")

# Tasks a deadline started or gave up on: asyncio itself keeps only weak references.
_stragglers: set[asyncio.Future[Any]] = set()


def _keep(task: asyncio.Future[Any]) -> None:
    _stragglers.add(task)
    task.add_done_callback(_stragglers.discard)


def _abandon(task: asyncio.Future[Any]) -> None:
    task.cancel()
    _keep(task)


async def within(work: Coroutine[Any, Any, T], seconds: float) -> T:
    """The result of `work`, or TimeoutError after `seconds` without waiting for `work` to
    unwind: a hung database connection can't hold up the caller."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if task not in done:
        _abandon(task)
        raise TimeoutError(f"no result within {seconds}s")
    return task.result()


class RequestDeadline:
    """Runs each request in its own task as usual, with a timer beside it (no extra task
    per request: the hot path pays one timer). If the timer fires first, it answers 503
    from a task of its own and cancels the request."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = asyncio.current_task()
        assert request is not None
        response_started = False
        answering: asyncio.Task[None] | None = None

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if answering is not None:  # the client already has its 503
                return
            response_started |= message["type"] == "http.response.start"
            await send(message)

        def expire() -> None:
            nonlocal answering
            log.warning(
                "%s %s exceeded the %ss request deadline",
                scope.get("method"),
                scope.get("path"),
                self.seconds,
            )
            answering = asyncio.ensure_future(_no_op() if response_started else _send_timeout(send))
            _keep(answering)
            request.cancel()

        timer = asyncio.get_running_loop().call_later(self.seconds, expire)
        try:
            await self.app(scope, receive, guarded_send)
        except asyncio.CancelledError:
            if answering is None:
                raise  # not ours: the server is shutting down
            request.uncancel()
            await answering
        finally:
            timer.cancel()


async def _no_op() -> None:
    return None


async def _send_timeout(send: Send) -> None:
    body = json.dumps({"detail": "the request took too long, try again shortly"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"5"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
