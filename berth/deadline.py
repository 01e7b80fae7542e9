"""A deadline for every request, so no client waits forever on a database that has hung.

A connection to a frozen Postgres (stalled disk, paused VM) never errors: the kernel still
acknowledges packets, so neither TCP timeouts nor Postgres's statement_timeout end the wait.
Cancelling the handler is not enough either, because its cleanup (a rollback on the same
connection) hangs too. So the deadline answers 503 itself and lets the cancelled handler
finish in the background whenever the database comes back, like Go's http.TimeoutHandler.
The per-request timer lives in berth/runtime.py; `within` bounds a single awaitable.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from starlette.types import Scope, Send

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


def log_deadline_exceeded(scope: Scope, seconds: float) -> None:
    log.warning(
        "%s %s exceeded the %ss request deadline", scope.get("method"), scope.get("path"), seconds
    )


async def answer_deadline_exceeded(send: Send, *headers: tuple[bytes, bytes]) -> None:
    """The deadline's 503, sent by berth/runtime.py in place of the cancelled handler's
    answer."""
    body = json.dumps({"detail": "the request took too long, try again shortly"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"5"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
