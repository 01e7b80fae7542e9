"""Fault injection for whole-stack tests: a bounded request load, and ways to break things.

Load goes only to 127.0.0.1 (Traefik's published port) and stops at a time and count bound.
Faults act on this test's own containers only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import httpx

from tests.stack.harness import ROOT, Stack, wait_for
from tests.stack.service import read

REPORT = ROOT / "test-output" / "fault-report.json"
# Where `python -m tests.stack.faults save` keeps a run's report, next to the benchmarks.
SAVED_REPORTS = ROOT / "bench" / "results"


@dataclass(frozen=True)
class Outcome:
    client: int
    started: float
    ended: float
    status: int | None  # None: no HTTP response at all
    error: str = ""
    body: str = ""
    tag: str = ""  # what the request was, e.g. the item name it created
    request_id: str = ""  # the app's X-Request-ID, to find its access-log line

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def seconds(self) -> float:
        return self.ended - self.started


Request = Callable[[httpx.Client, int, int], tuple[httpx.Response, str]]


class ClientThreadDied(AssertionError):
    """A load client stopped on an exception of its own (not an HTTP error, which is an
    outcome): the load it sent is short of what the test thinks it sent."""


@dataclass
class Load:
    """`clients` threads sending `request` through Traefik until stopped, or until
    `max_seconds` / `max_requests` per client, whichever comes first.

    A client thread that dies on an exception fails the test: `stop`, `join` and leaving
    the `with` block raise `ClientThreadDied`, chained to that exception. A "0 failed" claim
    is `assert_no_failures(min_requests=N)`."""

    stack: Stack
    request: Request = read
    clients: int = 4
    max_seconds: float = 90
    max_requests: int = 20_000
    timeout: float = 30
    pause: float = 0.0
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._errors: list[tuple[int, BaseException]] = []
        self._threads = [
            threading.Thread(target=self._guarded_run, args=(number,), daemon=True)
            for number in range(self.clients)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self._stop.set()
        self._join_all(self.timeout + 5)
        if kind is None:  # never hide the exception the test itself raised
            self._raise_client_errors()

    def join(self) -> list[Outcome]:
        """Wait until every client has sent max_requests (or max_seconds passed)."""
        self._join_all(self.max_seconds + self.timeout)
        self._raise_client_errors()
        return self.outcomes

    def stop(self) -> list[Outcome]:
        self._stop.set()
        self._join_all(self.timeout + 5)
        self._raise_client_errors()
        return self.outcomes

    def _join_all(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def _raise_client_errors(self) -> None:
        stuck = sum(thread.is_alive() for thread in self._threads)
        if stuck:
            raise ClientThreadDied(f"{stuck} load client(s) still running after their bounds")
        if self._errors:
            client, error = self._errors[0]
            raise ClientThreadDied(
                f"load client {client} died after {len(self.outcomes)} requests "
                f"({len(self._errors)} of {self.clients} clients died): {error!r}"
            ) from error

    def _guarded_run(self, worker: int) -> None:
        try:
            self._run(worker)
        except BaseException as error:  # reported to the test by stop, join or exit
            with self._lock:
                self._errors.append((worker, error))

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
        return Outcome(
            worker, started, time.time(), response.status_code, body=body, tag=tag,
            request_id=response.headers.get("x-request-id", ""),
        )  # fmt: skip

    def _record(self, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)

    # -- reading the results -----------------------------------------------------------
    def failures(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if not outcome.ok]

    def successes_after(self, moment: float) -> int:
        return sum(outcome.ok and outcome.started > moment for outcome in self.outcomes)

    def keep_until(self, requests: int, timeout: float = 120) -> None:
        """Keep the load running until it has sent `requests` in all (bounded by `timeout`):
        on a busy machine a fixed time can fall short of the count a test asserts."""

        def enough() -> bool:
            running = any(thread.is_alive() for thread in self._threads)
            return len(self.outcomes) >= requests or not running or self._stop.is_set()

        wait_for(
            enough,
            timeout=timeout,
            interval=0.1,
            what=f"{requests} requests",
        )

    def assert_no_failures(self, *, min_requests: int) -> None:
        """The claim "0 of N requests failed", whole: every client ran to its end, at
        least `min_requests` were sent, and every one of them succeeded. Call it after
        the load has stopped (after the `with` block, `stop()` or `join()`)."""
        if any(thread.is_alive() for thread in self._threads):
            raise AssertionError("assert_no_failures called while the load is still running")
        self._raise_client_errors()
        sent = len(self.outcomes)
        assert sent >= min_requests, f"only {sent} requests sent, fewer than {min_requests}"
        failures = self.failures()
        assert not failures, (
            f"{len(failures)} of {sent} requests failed, first ones: {failures[:5]}"
        )


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


def pause(stack: Stack, service: str, attempts: int = 5) -> None:
    """`docker compose pause`, retried: on a busy machine the kernel's freezer can miss
    runc's deadline ("unable to freeze"), and runc thaws the container again."""
    for attempt in range(1, attempts + 1):
        result = stack.run("pause", service, check=attempt == attempts)
        if result.returncode == 0:
            return
        time.sleep(0.5)


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


@contextlib.contextmanager
def psql_holding(stack: Stack, sql: str, *, held: str, what: str) -> Iterator[None]:
    """Run `sql` in a psql session of the test's own and keep that session open (with its
    locks) until the block ends; `held` is a query that answers `t` once it holds."""
    user = stack.env.get("POSTGRES_USER", "berth")
    database = stack.env.get("POSTGRES_DB", "berth")
    psql = subprocess.Popen(
        [*stack.compose.compose_command_property, "exec", "-T", "db", "psql", "-X", "-q",
         "-v", "ON_ERROR_STOP=1", "-U", user, "-d", database],
        cwd=stack.root, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert psql.stdin is not None
    try:
        psql.stdin.write(sql + "\n")
        psql.stdin.flush()
        wait_for(lambda: stack.psql(held) == "t", timeout=30, interval=0.1, what=what)
        yield
    finally:
        # End of input ends the session: its transaction rolls back, its locks go.
        with contextlib.suppress(OSError):
            psql.stdin.close()
        try:
            psql.wait(timeout=30)
        except subprocess.TimeoutExpired:
            psql.kill()
            psql.wait()


def table_locked(stack: Stack, table: str = "items") -> contextlib.AbstractContextManager[None]:
    """Hold an ACCESS EXCLUSIVE lock on `table`, so every request that touches it waits in
    the database: requests in flight on demand. Keep the block shorter than
    DB_STATEMENT_TIMEOUT_MS, or the waiting requests fail."""
    return psql_holding(
        stack,
        f"BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE;",
        held="SELECT count(*) = 1 FROM pg_locks WHERE mode = 'AccessExclusiveLock' "
        f"AND granted AND relation = '{table}'::regclass",
        what=f"the lock on {table}",
    )


def requests_waiting_on_locks(stack: Stack) -> dict[int, list[str]]:
    """App queries waiting on a database lock, by the host pid of the worker whose
    connection waits (pg_stat_activity's client port, matched to the worker's socket),
    each named by its SQL verb: {pid: ["DELETE", "SELECT", ...]}."""
    rows = stack.psql(
        "SELECT client_port, split_part(ltrim(query), ' ', 1) FROM pg_stat_activity "
        "WHERE application_name = 'berth-app' AND wait_event_type = 'Lock'"
    ).splitlines()
    if not rows:
        return {}
    owners = socket_owners(worker_pids(stack))
    waiting: dict[int, list[str]] = {}
    for row in rows:
        port, verb = row.split("|")
        pid = owners.get(int(port))
        if pid is not None:
            waiting.setdefault(pid, []).append(verb.upper())
    return waiting


def socket_owners(pids: set[int]) -> dict[int, int]:
    """{local TCP port: pid} for the TCP sockets these processes hold (read from /proc on
    the host, so the test needs no tools inside the container)."""
    owners: dict[int, int] = {}
    for pid in pids:
        inodes = set()
        with contextlib.suppress(FileNotFoundError):
            for descriptor in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(descriptor)
                    if target.startswith("socket:["):
                        inodes.add(target[len("socket:[") : -1])
        for table in ("tcp", "tcp6"):
            with contextlib.suppress(FileNotFoundError):
                for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                    columns = row.split()
                    if columns[9] in inodes:
                        owners[int(columns[1].rsplit(":", 1)[1], 16)] = pid
    return owners


def app_request_seconds(stack: Stack, request_ids: Collection[str]) -> dict[str, float]:
    """{request id: seconds} from the app's own access log: how long the app took, without
    the client's or Traefik's share. Waits for every id's line (the app writes in batches)."""

    def durations() -> dict[str, float] | None:
        found = {}
        for line in stack.logs("app").splitlines():
            if not line.startswith("{"):
                continue
            entry = json.loads(line)
            if entry.get("message") == "request" and entry.get("request_id") in request_ids:
                found[entry["request_id"]] = entry["duration_ms"] / 1000
        return found if len(found) == len(set(request_ids)) else None

    if not request_ids:
        return {}
    return wait_for(durations, timeout=15, interval=0.5, what="the app's access-log lines")


# -- reporting ---------------------------------------------------------------------------
def report(fault: str, **figures: Any) -> None:
    """Record what a fault test measured in test-output/fault-report.json, so the
    numbers quoted about the stack come from a run, not from memory."""
    REPORT.parent.mkdir(exist_ok=True)
    existing: dict[str, Any] = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    existing[fault] = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "commit": commit(),
        **figures,
    }
    REPORT.write_text(json.dumps(existing, indent=2, sort_keys=True) + "\n")


@cache
def commit() -> str:
    """The checkout's commit, `-dirty` when it has uncommitted changes."""
    described = subprocess.run(
        ["git", "describe", "--always", "--dirty"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    return described.stdout.strip() or "unknown"


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


def save_report(destination: Path = SAVED_REPORTS) -> Path:
    """Copy test-output/fault-report.json to bench/results/faults-<time>.json, with the
    machine it ran on, so the README can cite a committed run for each figure."""
    if not REPORT.exists():
        raise SystemExit(f"berth: no {REPORT.relative_to(ROOT)}: run the fault tests first")
    faults = json.loads(REPORT.read_text())
    saved = {
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "commit": commit()},
        "faults": faults,
    }
    destination.mkdir(parents=True, exist_ok=True)
    target = destination / f"faults-{time.strftime('%Y-%m-%dT%H-%M-%S')}.json"
    target.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.stack.faults",
        description="The fault tests' figures (test-output/fault-report.json).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "save", help="keep the last run's report as bench/results/faults-<time>.json"
    )
    parser.parse_args()
    print(save_report().relative_to(ROOT))


if __name__ == "__main__":
    main()
