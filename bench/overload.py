"""The overload curve: offered concurrency against admitted throughput and latency, through
Traefik over HTTPS, for the DB read and for POST (issue 15, target 2).

Each level is a closed loop of `concurrency` wrk connections, each sending its next request
as soon as it has an answer (so refused clients come straight back: the worst case, since
they ignore Retry-After). bench/wrk/overload.lua times admitted (2xx) and refused (503)
answers apart by matching each one's X-Request-ID. Saturation is the lowest concurrency
whose admitted throughput reaches SATURATED of the curve's peak; the targets are read at
OVERLOAD_FACTOR times that.
"""

from __future__ import annotations

import json
import math
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.cpu import cpu_use
from bench.load import run_wrk
from tests.stack.harness import Stack

SCRIPT = Path(__file__).parent / "wrk" / "overload.lua"
LEVELS = (2, 4, 8, 16, 32, 64, 128)
SATURATED = 0.9
OVERLOAD_FACTOR = 4


@dataclass(frozen=True)
class Level:
    endpoint: str  # read, write
    concurrency: int
    seconds: float
    admitted: int
    admitted_rps: float
    admitted_p50_ms: float
    admitted_p99_ms: float
    refused: int
    refused_p99_ms: float
    refused_max_ms: float
    refused_without_retry_after: int
    other_status: int
    connection_errors: int
    command: str
    # Cores in use on average during the level (bench/cpu.py), and how long the app itself
    # took over admitted and refused requests (its access lines, matched by request id):
    # what the clients waited beyond that was spent outside the app. When the stack is given.
    cpu: dict[str, Any] = field(default_factory=dict)
    in_app: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def level(
    url: str,
    *,
    endpoint: str,
    concurrency: int,
    seconds: float,
    host: str,
    run_id: str,
    stack: Stack | None = None,
) -> Level:
    command = [
        "wrk", f"-t{min(2, concurrency)}", f"-c{concurrency}", f"-d{seconds:g}s",
        "--timeout", "10s", "-s", str(SCRIPT), "-H", f"Host: {host}", url,
    ]  # fmt: skip
    post = endpoint == "write"
    in_app: dict[str, Any] = {}
    if stack is None:
        numbers, used = run_wrk(command, seconds=seconds, post=post, run_id=run_id), None
    else:
        since = int(time.time()) - 1
        with cpu_use(stack) as used:
            numbers = run_wrk(command, seconds=seconds, post=post, run_id=run_id)
        in_app = app_durations(stack, since, run_id)
    elapsed = numbers["duration_us"] / 1e6
    admitted, refused = numbers["admitted"], numbers["refused"]
    errors = sum(numbers[f"errors_{kind}"] for kind in ("connect", "read", "write", "timeout"))
    return Level(
        endpoint=endpoint,
        concurrency=concurrency,
        seconds=round(elapsed, 2),
        admitted=admitted["count"],
        admitted_rps=round(admitted["count"] / elapsed, 1),
        admitted_p50_ms=admitted["p50_us"] / 1000,
        admitted_p99_ms=admitted["p99_us"] / 1000,
        refused=refused["count"],
        refused_p99_ms=refused["p99_us"] / 1000,
        refused_max_ms=refused["max_us"] / 1000,
        refused_without_retry_after=numbers["refused_without_retry_after"],
        other_status=numbers["other_status"] + numbers["unmatched"],
        connection_errors=errors,
        command=("BENCH_METHOD=POST " if post else "") + shlex.join(command),
        cpu=used.as_dict() if used is not None else {},
        in_app=in_app,
    )


def app_durations(stack: Stack, since: int, run_id: str) -> dict[str, Any]:
    """p50 and p99 of the app's own duration_ms for this run's admitted (2xx) and refused
    (503) requests, from the access lines of every app container."""
    time.sleep(0.5)  # the app writes its access lines every 0.1 s
    durations: dict[str, list[float]] = {"admitted": [], "refused": []}
    for container in stack.containers("app"):
        for raw in container.logs(stdout=False, stderr=True, since=since).splitlines():
            if not raw.startswith(b'{"level": "INFO", "logger": "berth.access"'):
                continue
            line = json.loads(raw)
            if not str(line["request_id"]).startswith(f"{run_id}-"):
                continue
            status = int(line["status"])
            kind = "admitted" if 200 <= status < 300 else "refused" if status == 503 else None
            if kind:
                durations[kind].append(float(line["duration_ms"]))
    return {
        kind: {"count": len(each), "p50_ms": percentile(each, 50), "p99_ms": percentile(each, 99)}
        for kind, each in durations.items()
    }


def percentile(values: list[float], p: float) -> float:
    """As bench/wrk/overload.lua computes it: the value at rank ceil(n * p / 100)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(1, math.ceil(len(ordered) * p / 100)) - 1]


def curve(
    base_url: str,
    path: str,
    *,
    endpoint: str,
    seconds: float,
    host: str,
    run_id: str,
    stack: Stack | None = None,
) -> list[Level]:
    """Every level of LEVELS, then OVERLOAD_FACTOR x saturation if LEVELS lacks it."""
    measured: list[Level] = []

    def measure(concurrency: int) -> None:
        result = level(
            base_url + path,
            endpoint=endpoint,
            concurrency=concurrency,
            seconds=seconds,
            host=host,
            run_id=f"{run_id}{endpoint}c{concurrency}",
            stack=stack,
        )
        measured.append(result)
        print(
            f"  overload {endpoint:5} c{concurrency:<3} {result.admitted_rps:7.0f} admitted/s "
            f"p99 {result.admitted_p99_ms:6.1f} ms; {result.refused} refused, p99 "
            f"{result.refused_p99_ms:5.1f} ms; errors {result.connection_errors}; "
            f"cpu {result.cpu}; in the app {result.in_app}"
        )

    level(base_url + path, endpoint=endpoint, concurrency=8, seconds=2, host=host,
          run_id=f"{run_id}{endpoint}warm")  # fmt: skip
    for concurrency in LEVELS:
        measure(concurrency)
    overloaded = OVERLOAD_FACTOR * saturation([m.as_dict() for m in measured])["concurrency"]
    if overloaded not in LEVELS:
        measure(overloaded)
    return sorted(measured, key=lambda m: m.concurrency)


def saturation(levels: list[dict[str, Any]]) -> dict[str, Any]:
    """The lowest concurrency whose admitted throughput reaches SATURATED of the peak."""
    peak = max(item["admitted_rps"] for item in levels)
    ordered = sorted(levels, key=lambda item: item["concurrency"])
    return next(item for item in ordered if item["admitted_rps"] >= SATURATED * peak)


def main() -> None:
    """`uv run python -m bench.overload [NAME=VALUE ...]`: the curve alone, on a stack with
    those settings (e.g. MAX_IN_FLIGHT_PER_WORKER=10000 for no admission limit)."""
    import argparse
    import tempfile

    from tests.stack.faults import wait_workers
    from tests.stack.harness import build_test_image

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("settings", nargs="*", help="NAME=VALUE for the stack's .env")
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--endpoints", default="read,write")
    args = parser.parse_args()
    env = dict(setting.split("=", 1) for setting in args.settings)
    build_test_image()
    with tempfile.TemporaryDirectory() as workdir:
        stack = Stack(workdir=Path(workdir), files=("compose.yaml", "compose.demo.yaml"), env=env)
        try:
            stack.up()
            stack.run("run", "--rm", "--no-deps", "seed", "--reset")
            wait_workers(stack, int(env.get("WEB_CONCURRENCY", "2")))
            paths = {"read": "/api/items?limit=20", "write": "/api/items"}
            results = {
                endpoint: [
                    item.as_dict()
                    for item in curve(
                        f"https://127.0.0.1:{stack.https_port}", paths[endpoint],
                        endpoint=endpoint, seconds=args.seconds, host="localhost",
                        run_id=time.strftime("%H%M%S"), stack=stack,
                    )
                ]
                for endpoint in args.endpoints.split(",")
            }  # fmt: skip
        finally:
            stack.down()
    print(json.dumps({"settings": env, "curves": results}))


if __name__ == "__main__":
    main()
