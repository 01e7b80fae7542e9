"""Fault injection for whole-stack tests: a bounded request load, and ways to break things.

Load goes only to 127.0.0.1 (Traefik's published port) and stops at a time and count bound.
Faults act on this test's own containers only.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.stack.harness import ROOT, Stack, wait_for

REPORT = ROOT / "test-output" / "fault-report.json"


@dataclass(frozen=True)
class Outcome:
    client: int
    started: float
    ended: float
    status: int | None  # None: no HTTP response at all
    error: str = ""
    body: str = ""
    tag: str = ""  # what the request was, e.g. the item name it created

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def seconds(self) -> float:
        return self.ended - self.started


Request = Callable[[httpx.Client, int, int], tuple[httpx.Response, str]]


def get_items(client: httpx.Client, worker: int, number: int) -> tuple[httpx.Response, str]:
    return client.get("/api/items", params={"limit": 5}), ""


def create_item(client: httpx.Client, worker: int, number: int) -> tuple[httpx.Response, str]:
    name = f"load-{worker}-{number}-{time.time_ns()}"
    return client.post("/api/items", json={"name": name, "price": "1.00"}), name


def mixed(client: httpx.Client, worker: int, number: int) -> tuple[httpx.Response, str]:
    return (create_item if number % 3 == 0 else get_items)(client, worker, number)


@dataclass
class Load:
    """`clients` threads sending `request` through Traefik until stopped, or until
    `max_seconds` / `max_requests` per client, whichever comes first."""

    stack: Stack
    request: Request = get_items
    clients: int = 4
    max_seconds: float = 90
    max_requests: int = 20_000
    timeout: float = 30
    pause: float = 0.0
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(number,), daemon=True)
            for number in range(self.clients)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def join(self) -> list[Outcome]:
        """Wait until every client has sent max_requests (or max_seconds passed)."""
        for thread in self._threads:
            thread.join(timeout=self.max_seconds + self.timeout)
        return self.outcomes

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 5)
        return self.outcomes

    def _run(self, worker: int) -> None:
        deadline = time.monotonic() + self.max_seconds
        with self.stack.client(timeout=self.timeout) as client:
            for number in range(self.max_requests):
                if self._stop.is_set() or time.monotonic() > deadline:
                    return
                self._record(self._send(client, worker, number))
                if self.pause:
                    time.sleep(self.pause)

    def _send(self, client: httpx.Client, worker: int, number: int) -> Outcome:
        started = time.time()
        try:
            response, tag = self.request(client, worker, number)
        except httpx.HTTPError as exc:
            return Outcome(worker, started, time.time(), None, error=type(exc).__name__)
        body = "" if response.is_success else response.text[:300]
        return Outcome(worker, started, time.time(), response.status_code, body=body, tag=tag)

    def _record(self, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)

    # -- reading the results -----------------------------------------------------------
    def failures(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if not outcome.ok]

    def successes_after(self, moment: float) -> int:
        return sum(outcome.ok and outcome.started > moment for outcome in self.outcomes)


# -- processes ---------------------------------------------------------------------------
def host_pid(stack: Stack, service: str) -> int:
    """The host pid of the service container's main process (PID 1 inside it)."""
    return int(stack.state(service)["Pid"])


def worker_pids(stack: Stack) -> set[int]:
    """Host pids of the processes serving requests in the app container: the children its
    main process spawned, or the main process itself when uvicorn runs one worker (it
    spawns none then)."""
    container = stack.container("app")
    top = container.top(ps_args="-eo pid,ppid,args")
    columns = top["Titles"]
    main = host_pid(stack, "app")
    pids = set()
    for row in top["Processes"] or []:
        process = dict(zip(columns, row, strict=True))
        if int(process["PPID"]) == main and "spawn_main" in process["COMMAND"]:
            pids.add(int(process["PID"]))
    return pids or {main}


def kill_from_host(pid: int) -> None:
    """SIGKILL from outside the container: Docker counts it as a crash, not a stop, so
    the restart policy applies (docker kill/stop count as a manual stop)."""
    os.kill(pid, signal.SIGKILL)


def wait_healthy(stack: Stack, service: str, timeout: float) -> float:
    """Seconds until the service's container reports healthy."""
    started = time.monotonic()
    wait_for(
        lambda: stack.state(service).get("Health", {}).get("Status") == "healthy",
        timeout=timeout,
        interval=0.1,
        what=f"{service} to be healthy",
    )
    return time.monotonic() - started


# -- the database ----------------------------------------------------------------------
def app_connections(stack: Stack) -> dict[str, int]:
    """The app's connections in pg_stat_activity, counted by state."""
    rows = stack.psql(
        "SELECT coalesce(state, 'none'), count(*) FROM pg_stat_activity "
        "WHERE application_name = 'berth-app' GROUP BY 1"
    )
    counts = {}
    for row in rows.splitlines():
        state, count = row.split("|")
        counts[state] = int(count)
    return counts


def wait_workers(
    stack: Stack,
    count: int,
    settled: Callable[[set[int]], bool] = lambda pids: True,
    what: str = "the workers",
) -> set[int]:
    """Wait until the app runs `count` workers and `settled(their pids)` holds."""

    def ready() -> set[int] | None:
        pids = worker_pids(stack)
        return pids if len(pids) == count and settled(pids) else None

    return wait_for(ready, timeout=30, what=what)


def bring_back_db(stack: Stack) -> float:
    """Start the stopped or killed db, and wait until the app says it is ready through
    Traefik; returns that moment."""
    stack.run("start", "db")
    wait_db_ready(stack)
    with stack.client() as client:
        wait_for(lambda: client.get("/health/ready").status_code == 200, timeout=30)
    return time.time()


def wait_db_ready(stack: Stack, timeout: float = 60) -> None:
    wait_for(
        lambda: stack.run("exec", "-T", "db", "pg_isready", "-q", "-h", "127.0.0.1", check=False)
        .returncode == 0,
        timeout=timeout,
        what="Postgres to accept connections",
    )  # fmt: skip


# -- reporting ---------------------------------------------------------------------------
def report(fault: str, **figures: Any) -> None:
    """Record what a fault test measured in test-output/fault-report.json, so the
    numbers quoted about the stack come from a run, not from memory."""
    REPORT.parent.mkdir(exist_ok=True)
    existing: dict[str, Any] = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    existing[fault] = {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **figures}
    REPORT.write_text(json.dumps(existing, indent=2, sort_keys=True) + "\n")


def summary(load: Load) -> dict[str, Any]:
    statuses: dict[str, int] = {}
    for outcome in load.outcomes:
        key = str(outcome.status) if outcome.status is not None else outcome.error
        statuses[key] = statuses.get(key, 0) + 1
    return {
        "requests": len(load.outcomes),
        "failed": len(load.failures()),
        "statuses": statuses,
        "slowest_seconds": round(max((o.seconds for o in load.outcomes), default=0), 3),
    }
