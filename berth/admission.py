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
        self._waiting: deque[asyncio.Future[None]] = deque()

    async def enter(self) -> bool:
        """True with a slot held (give it back with `leave`), False if none freed in time."""
        if self.running < self.limit:
            self.running += 1
            return True
        if self.wait_seconds <= 0:
            return False
        slot = asyncio.get_running_loop().create_future()
        self._waiting.append(slot)
        try:
            await asyncio.wait_for(slot, self.wait_seconds)
        except TimeoutError:
            return False
        except asyncio.CancelledError:
            if slot.done() and not slot.cancelled():
                self.leave()  # handed a slot just as the request was cancelled: pass it on
            raise
        return True  # `leave` handed its slot straight to this request

    def leave(self) -> None:
        """Give the slot to the longest-waiting request, or free it."""
        while self._waiting:
            slot = self._waiting.popleft()
            if not slot.done():  # done: timed out or cancelled meanwhile
                slot.set_result(None)
                return
        self.running -= 1
