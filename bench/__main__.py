"""Berth's benchmark suite: `uv run python -m bench` (about 12 minutes on 2 cores).

Brings the stack up from built images, measures throughput and latency through Traefik and
straight to the app, the overload curve, a raw-ASGI ceiling and a bare-FastAPI floor,
start-up, the image, memory and a stop under load,
then tears everything down and writes bench/results/<stamp>.{json,md} and PNG plots. Load
goes to 127.0.0.1 and to this run's own containers only, for a bounded time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx

from bench import measure, overload, report
from bench.load import Run, require_wrk, wrk
from tests.stack.faults import wait_workers
from tests.stack.harness import (
    ROOT,
    TEST_IMAGE,
    Stack,
    build_test_image,
    free_port,
    release_port,
    wait_for,
)

RESULTS = Path(__file__).parent / "results"
IMAGE = f"{TEST_IMAGE}:latest"  # built from this checkout by build_test_image()
RAW_APP = Path(__file__).parent / "rawapp.py"
FASTAPI_APP = Path(__file__).parent / "fastapiapp.py"
PATHS = {"live": "/health/live", "read": "/api/items?limit=20", "write": "/api/items"}
UNLIMITED = "10000"  # MAX_IN_FLIGHT_PER_WORKER's largest value: no request is ever refused
# Berth against bare FastAPI: interleaved rounds, whose median ratio is judged. Two runs of
# one app a minute apart here differed by up to 25%, so 5 rather than 3.
OVERHEAD_ROUNDS = 5


class Suite:
    def __init__(self, seconds: float, workers: list[int], concurrency: list[int]) -> None:
        self.seconds = seconds
        self.workers = workers
        self.concurrency = concurrency
        self.runs: list[Run] = []
        self.run_id = time.strftime("%H%M%S")

    def load(self, url: str, target: str, endpoint: str, workers: int, host: str | None) -> None:
        # A warm-up (it fills connection pools and SQLAlchemy's statement cache; the first
        # seconds after a restart measured up to 40% worse), then each measured level.
        wrk(
            url,
            target=target,
            endpoint=endpoint,
            workers=workers,
            concurrency=16,
            seconds=2,
            host=host,
            post=endpoint == "write",
            run_id=f"{self.run_id}w{workers}{target}warm",
        )
        for concurrency in self.concurrency:
            run = wrk(
                url,
                target=target,
                endpoint=endpoint,
                workers=workers,
                concurrency=concurrency,
                seconds=self.seconds,
                host=host,
                post=endpoint == "write",
                run_id=f"{self.run_id}w{workers}{target}c{concurrency}",
            )
            self.runs.append(run)
            print(
                f"  {target:7} {endpoint:5} w{workers} c{concurrency:<3} {run.rps:8.0f} req/s "
                f"p50 {run.p50_ms:6.1f} ms p99 {run.p99_ms:6.1f} ms errors {run.errors}"
            )

    def app_stack(self, stack: Stack) -> dict[str, Any]:
        """Throughput and latency of what the stack serves: with the admission limit lifted
        (UNLIMITED), so that at 64 clients every request is served and timed, as in the runs
        before admission existed. The overload curve measures the shipped limit."""
        memory: dict[str, Any] = {}
        for workers in self.workers:
            print(f"WEB_CONCURRENCY={workers}")
            stack.set_env(WEB_CONCURRENCY=str(workers), MAX_IN_FLIGHT_PER_WORKER=UNLIMITED)
            stack.up()
            stack.run("run", "--rm", "--no-deps", "seed", "--reset")
            wait_workers(stack, workers)
            time.sleep(3)  # let start-up settle before reading idle memory
            idle = measure.worker_rss_mb(stack)
            direct = f"http://127.0.0.1:{stack.env['BENCH_APP_PORT']}"
            proxied = f"https://127.0.0.1:{stack.https_port}"
            with measure.ConnectionSampler(stack) as connections:
                for endpoint, path in PATHS.items():
                    self.load(proxied + path, "traefik", endpoint, workers, host="localhost")
                    self.load(direct + path, "direct", endpoint, workers, host=None)
            memory[str(workers)] = {
                "idle_rss_mb": idle,
                "after_load_rss_mb": measure.worker_rss_mb(stack),
                "connections_peak": connections.peak,
            }
        return memory

    def overload(self, stack: Stack) -> dict[str, list[dict[str, Any]]]:
        """The overload curve through Traefik, with the default admission limit and 2
        workers (the defaults)."""
        print("overload, WEB_CONCURRENCY=2, default admission limit")
        stack.set_env(WEB_CONCURRENCY="2", MAX_IN_FLIGHT_PER_WORKER="0")
        stack.up()
        stack.run("run", "--rm", "--no-deps", "seed", "--reset")
        wait_workers(stack, 2)
        proxied = f"https://127.0.0.1:{stack.https_port}"
        return {
            endpoint: [
                level.as_dict()
                for level in overload.curve(
                    proxied, PATHS[endpoint], endpoint=endpoint, seconds=self.seconds,
                    host="localhost", run_id=self.run_id, stack=stack,
                )
            ]
            for endpoint in ("read", "write")
        }  # fmt: skip

    def raw_baseline(self, stack: Stack) -> None:
        """The bare ASGI app, straight (its port on 127.0.0.1) and through the same Traefik
        (routed like the app, by labels): the second is the proxy's own ceiling. Then the
        bare FastAPI app, straight: what the framework itself costs, under Berth's runtime."""
        for workers in self.workers:
            with baseline(stack, RAW_APP, "rawapp:app", workers, "/", routed=True) as port:
                self.load(f"http://127.0.0.1:{port}/", "raw", "live", workers, host=None)
                wait_for(lambda: routed(stack.https_port), timeout=30)
                proxied = f"https://127.0.0.1:{stack.https_port}/"
                self.load(proxied, "raw-traefik", "live", workers, host=RAW_HOST)
            with baseline(stack, FASTAPI_APP, "fastapiapp:app", workers, "/health/live") as port:
                direct = f"http://127.0.0.1:{port}/health/live"
                self.load(direct, "fastapi", "live", workers, host=None)

    def overhead(self, stack: Stack) -> None:
        """Berth's /health/live straight to the app against the bare FastAPI app, each with
        `workers` workers, interleaved over OVERHEAD_ROUNDS rounds at 64 clients: the two
        runs of a round see the same machine, where runs minutes apart here differed by
        more than the margin being judged (bench/tuning.md). The report judges the median
        of the rounds' ratios."""
        for workers in self.workers:
            stack.set_env(WEB_CONCURRENCY=str(workers), MAX_IN_FLIGHT_PER_WORKER=UNLIMITED)
            stack.up()
            wait_workers(stack, workers)
            berth = f"http://127.0.0.1:{stack.env['BENCH_APP_PORT']}/health/live"
            with baseline(stack, FASTAPI_APP, "fastapiapp:app", workers, "/health/live") as port:
                bare = f"http://127.0.0.1:{port}/health/live"
                for url in (berth, bare):  # warm-up
                    wrk(url, target="warm", endpoint="live", workers=workers, concurrency=16,
                        seconds=2, run_id=f"{self.run_id}w{workers}overheadwarm")  # fmt: skip
                for number in range(OVERHEAD_ROUNDS):
                    for target, url in (("overhead-berth", berth), ("overhead-fastapi", bare)):
                        run = wrk(
                            url, target=target, endpoint="live", workers=workers,
                            concurrency=64, seconds=self.seconds,
                            run_id=f"{self.run_id}w{workers}{target}{number}",
                        )  # fmt: skip
                        self.runs.append(run)
                        print(f"  {target:16} w{workers} round {number + 1} {run.rps:8.0f} req/s")


@contextlib.contextmanager
def baseline(
    stack: Stack, source: Path, app: str, workers: int, path: str, *, routed: bool = False
) -> Iterator[int]:
    """`app` from `source`, in the app image under the same uvicorn, worker count and
    memory limit as Berth's app, on a port of 127.0.0.1 (yielded), and if `routed`, routed
    by this stack's Traefik as RAW_HOST."""
    port = free_port()
    container = docker.from_env().containers.run(
        IMAGE,
        ["uvicorn", app, "--host", "0.0.0.0", "--port", "8000",
         "--workers", str(workers), "--no-access-log"],
        detach=True, remove=True, network=f"{stack.project}_proxy", mem_limit="550m",
        ports={"8000/tcp": ("127.0.0.1", port)},
        volumes={str(source): {"bind": f"/app/{source.name}", "mode": "ro"}},
        labels=raw_routing(stack.project) if routed else {},
    )  # fmt: skip
    try:
        # An HTTP answer, not an open port: Docker's port proxy accepts connections before
        # the app inside listens (the FastAPI baseline's workers take seconds to import).
        wait_for(lambda: answers(f"http://127.0.0.1:{port}{path}"), timeout=120)
        yield port
    finally:
        container.stop(timeout=5)
        release_port(port)


RAW_HOST = "raw.localhost"


def raw_routing(project: str) -> dict[str, str]:
    """Labels that make this project's Traefik route RAW_HOST to the raw app."""
    return {
        "com.docker.compose.project": project,  # Traefik only sees its own project
        "traefik.enable": "true",
        "traefik.docker.network": f"{project}_proxy",
        "traefik.http.routers.raw.rule": f"Host(`{RAW_HOST}`)",
        "traefik.http.routers.raw.entrypoints": "websecure",
        "traefik.http.routers.raw.tls": "true",
        "traefik.http.services.raw.loadbalancer.server.port": "8000",
    }


def routed(https_port: int) -> bool:
    url, headers = f"https://127.0.0.1:{https_port}/", {"Host": RAW_HOST}
    try:
        # The stack's own self-signed certificate: there is nothing to verify against.
        return httpx.get(url, headers=headers, verify=False, timeout=2).status_code == 200  # noqa: S501
    except httpx.TransportError:
        return False


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def machine() -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(pages / 2**30, 1),
        "docker": docker.from_env().version()["Version"],
        "commit": commit or "unknown",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Berth's benchmark suite.")
    parser.add_argument("--seconds", type=float, default=6, help="length of each load run")
    parser.add_argument("--workers", default="1,2", help="WEB_CONCURRENCY values")
    parser.add_argument("--concurrency", default="1,16,64", help="wrk connection counts")
    parser.add_argument("--skip", default="", help="comma-separated: startup,image,stop,overload")
    args = parser.parse_args()
    require_wrk()
    skip = set(filter(None, args.skip.split(",")))
    suite = Suite(
        args.seconds,
        [int(w) for w in args.workers.split(",")],
        [int(c) for c in args.concurrency.split(",")],
    )
    stamp = time.strftime("%Y-%m-%dT%H-%M-%S")
    started = time.monotonic()
    build_test_image()
    results: dict[str, Any] = {
        "meta": {**machine(), "seconds": args.seconds},
        "workers": suite.workers,
        "concurrency": suite.concurrency,
    }
    with tempfile.TemporaryDirectory() as workdir:
        if "startup" not in skip:
            plain = Stack(workdir=Path(workdir))
            try:
                results["startup"] = measure.startup(plain)
            finally:
                plain.down()
        stack = Stack(
            workdir=Path(workdir),
            files=("compose.yaml", "compose.demo.yaml", "compose.bench.yaml"),
            env={"BENCH_APP_PORT": str(free_port())},
        )
        try:
            results["memory"] = suite.app_stack(stack)
            if "overload" not in skip:
                results["overload"] = suite.overload(stack)
            suite.raw_baseline(stack)
            suite.overhead(stack)
            results["stop"] = measure.stop_under_load(stack) if "stop" not in skip else {}
        finally:
            stack.down()
        if "image" not in skip:
            python_image = os.environ.get("PYTHON_IMAGE", "python:3.13-slim")
            results["image"] = measure.image(IMAGE, python_image, Path(workdir))
    results["runs"] = [run.as_dict() for run in suite.runs]
    results["meta"]["total_seconds"] = round(time.monotonic() - started, 1)
    summary = report.write(results, RESULTS, stamp)
    print(f"\nwrote {summary} in {results['meta']['total_seconds']:.0f}s")
    for target, measured, met in report.targets(results):
        print(f"  {'ok  ' if met else 'MISS'} {target}: {measured}")


if __name__ == "__main__":
    main()
