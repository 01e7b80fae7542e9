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
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.load import run_wrk

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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def level(
    url: str, *, endpoint: str, concurrency: int, seconds: float, host: str, run_id: str
) -> Level:
    command = [
        "wrk", f"-t{min(2, concurrency)}", f"-c{concurrency}", f"-d{seconds:g}s",
        "--timeout", "10s", "-s", str(SCRIPT), "-H", f"Host: {host}", url,
    ]  # fmt: skip
    post = endpoint == "write"
    numbers = run_wrk(command, seconds=seconds, post=post, run_id=run_id)
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
    )


def curve(
    base_url: str, path: str, *, endpoint: str, seconds: float, host: str, run_id: str
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
        )
        measured.append(result)
        print(
            f"  overload {endpoint:5} c{concurrency:<3} {result.admitted_rps:7.0f} admitted/s "
            f"p99 {result.admitted_p99_ms:6.1f} ms; {result.refused} refused, p99 "
            f"{result.refused_p99_ms:5.1f} ms; errors {result.connection_errors}"
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
    import time

    from tests.stack.faults import wait_workers
    from tests.stack.harness import Stack, build_test_image

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
                        run_id=time.strftime("%H%M%S"),
                    )
                ]
                for endpoint in args.endpoints.split(",")
            }  # fmt: skip
        finally:
            stack.down()
    print(json.dumps({"settings": env, "curves": results}))


if __name__ == "__main__":
    main()
