"""A memory budget per worker: a worker whose resident memory passes WORKER_MAX_RSS_MB
finishes its requests and exits, and uvicorn's supervisor starts a fresh one.

This acts before the container's memory limit does. The kernel's OOM killer would kill
the worker mid-request; this lets requests in flight finish (SIGTERM is uvicorn's graceful
shutdown).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

log = logging.getLogger("berth.watchdog")

CHECK_EVERY_SECONDS = 2.0
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_SIZE / 2**20


async def enforce_memory_budget(max_mb: int) -> None:
    while True:
        await asyncio.sleep(CHECK_EVERY_SECONDS)
        rss = resident_mb()
        if rss > max_mb:
            log.warning(
                "worker memory over budget, restarting it gracefully",
                extra={"rss_mb": round(rss, 1), "budget_mb": max_mb, "pid": os.getpid()},
            )
            os.kill(os.getpid(), signal.SIGTERM)
            return
