"""Load with wrk: one run, its exact command line, and its numbers."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).parent / "wrk" / "report.lua"


@dataclass(frozen=True)
class Run:
    target: str  # traefik (HTTPS through the proxy), direct (to the app), raw (bare ASGI)
    endpoint: str  # live, read, write
    workers: int
    concurrency: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    command: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def require_wrk() -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("bench: wrk is not installed (Debian: apt-get install wrk)")


def run_wrk(command: list[str], *, seconds: float, post: bool, run_id: str) -> dict[str, Any]:
    """Run wrk with one of bench/wrk's scripts; the JSON numbers its last line reports."""
    env = {**os.environ, "BENCH_METHOD": "POST" if post else "GET", "BENCH_RUN": run_id}
    result = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=seconds + 60, check=False
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({result.returncode}): {result.stderr or result.stdout}")
    numbers: dict[str, Any] = json.loads(lines[-1])
    return numbers


def wrk(
    url: str,
    *,
    target: str,
    endpoint: str,
    workers: int,
    concurrency: int,
    seconds: float,
    host: str | None = None,
    post: bool = False,
    run_id: str = "bench",
) -> Run:
    threads = min(2, concurrency)
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{concurrency}",
        f"-d{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(SCRIPT),
        *(["-H", f"Host: {host}"] if host else []),
        url,
    ]
    numbers = run_wrk(command, seconds=seconds, post=post, run_id=run_id)
    elapsed = numbers["duration_us"] / 1e6
    errors = sum(numbers[key] for key in numbers if key.startswith("errors_"))
    return Run(
        target=target,
        endpoint=endpoint,
        workers=workers,
        concurrency=concurrency,
        requests=numbers["requests"],
        seconds=round(elapsed, 2),
        rps=round(numbers["requests"] / elapsed, 1),
        p50_ms=numbers["p50_us"] / 1000,
        p90_ms=numbers["p90_us"] / 1000,
        p99_ms=numbers["p99_us"] / 1000,
        max_ms=numbers["max_us"] / 1000,
        errors=errors,
        command=("BENCH_METHOD=POST " if post else "") + shlex.join(command),
    )
