"""Admission: how many requests a worker runs at once, and what the rest get.

Past the point where the database pool and the CPU are busy, more concurrent requests
add no throughput, only queueing: each one waits longer, the tail grows with the queue,
and clients time out on requests the server still completes. So a worker runs at most
`limit` requests; one more waits up to `wait_seconds` for a slot, and if none frees it is
refused at once with 503 and `Retry-After`, which costs the server next to nothing and
tells the client exactly what happened. Admitted requests keep the latency they have at
saturation.

The limit is per worker (each uvicorn worker is its own process and event loop), and by
default equals the worker's database connections (DB_POOL_SIZE + DB_MAX_OVERFLOW): a
request admitted never waits for a connection.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Admission:
    def __init__(self, limit: int, wait_seconds: float) -> None:
        self.limit = limit
        self.wait_seconds = wait_seconds
        self.running = 0
        self._waiting: deque[asyncio.Future[bool]] = deque()

    def try_enter(self) -> bool:
        """True with a slot held (give it back with `leave`) if one is free now, without
        awaiting anything: the common case costs no coroutine."""
        if self.running < self.limit:
            self.running += 1
            return True
        return False

    async def enter(self) -> bool:
        """True with a slot held (give it back with `leave`), False if none freed in time."""
        if self.try_enter():
            return True
        if self.wait_seconds <= 0:
            return False
        loop = asyncio.get_running_loop()
        # The slot's result: True when `leave` hands it over, False when the wait is over.
        # (asyncio.wait_for could lose a cancellation that raced with the hand-over.)
        slot: asyncio.Future[bool] = loop.create_future()
        timer = loop.call_later(self.wait_seconds, _settle, slot, False)
        self._waiting.append(slot)
        try:
            return await slot
        except asyncio.CancelledError:
            if slot.done() and not slot.cancelled() and slot.result():
                self.leave()  # handed a slot just as the request was cancelled: pass it on
            raise
        finally:
            timer.cancel()

    def leave(self) -> None:
        """Give the slot to the longest-waiting request, or free it."""
        while self._waiting:
            slot = self._waiting.popleft()
            if not slot.done():  # done: its wait ended, or it was cancelled
                slot.set_result(True)
                return
        self.running -= 1


def _settle(slot: asyncio.Future[bool], result: bool) -> None:
    if not slot.done():
        slot.set_result(result)
