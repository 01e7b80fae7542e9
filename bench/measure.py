"""Everything but throughput: start-up, the image, memory, Postgres connections, and a
stop under load."""

from __future__ import annotations

import statistics
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import docker
import httpx

from tests.stack import service
from tests.stack.faults import (
    Load,
    app_connections,
    summary,
    wait_healthy,
    worker_pids,
)
from tests.stack.harness import Stack, build_test_image, copy_checkout


def timed(action: Any) -> float:
    started = time.monotonic()
    action()
    return round(time.monotonic() - started, 2)


def startup(stack: Stack, rounds: int = 3) -> dict[str, Any]:
    """On a stack of compose.yaml alone (no demo seeding in the way), `rounds` times: from
    empty volumes, `up --wait` while polling GET /api/items over HTTPS from the same moment;
    then, stopped, the same with the volumes present. Medians, then each round."""
    runs: dict[str, list[float]] = {
        "up_wait_empty_volume_s": [],
        "up_to_first_https_200_empty_volume_s": [],
        "up_wait_volumes_present_s": [],
        "up_to_first_https_200_volumes_present_s": [],
    }
    for _ in range(rounds):
        stack.run("down", "--volumes", "--timeout", "10", timeout=180)
        for volumes in ("empty_volume", "volumes_present"):
            up_wait, first_200 = up_and_first_200(stack)
            runs[f"up_wait_{volumes}_s"].append(up_wait)
            runs[f"up_to_first_https_200_{volumes}_s"].append(first_200)
            stack.run("stop", timeout=180)
    medians: dict[str, Any] = {name: statistics.median(each) for name, each in runs.items()}
    return {**medians, "rounds": rounds, **{f"{name} (each)": each for name, each in runs.items()}}


def up_and_first_200(stack: Stack) -> tuple[float, float]:
    """Seconds `up --wait` took, and seconds from its start to the first HTTPS 200."""
    first_200: dict[str, float] = {}

    def poll(began: float) -> None:
        with stack.client(timeout=2) as client:
            while time.monotonic() - began < 120:
                try:
                    if client.get("/api/items").status_code == 200:
                        first_200["seconds"] = round(time.monotonic() - began, 2)
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)

    began = time.monotonic()
    poller = threading.Thread(target=poll, args=(began,))
    poller.start()
    up_wait = timed(lambda: stack.run("up", "--detach", "--wait", timeout=300))
    poller.join()
    return up_wait, first_200.get("seconds", float("nan"))


def image(app_image: str, python_image: str, workdir: Path) -> dict[str, Any]:
    client = docker.from_env()
    size = client.images.get(app_image).attrs["Size"]
    base = client.images.get(python_image).attrs["Size"]
    copy = copy_checkout(workdir / "checkout")

    def rebuild() -> float:
        return timed(lambda: build_test_image(copy, "berth-bench-rebuild"))

    rebuild()  # warm the build cache for this copy
    # Both changes are new to BuildKit in every run: a change built by an earlier run
    # would come from its layer cache and time nothing.
    change = uuid.uuid4().hex
    entry_point = copy / "app" / "main.py"
    entry_point.write_text(entry_point.read_text() + f"\n# a one-line change {change}\n")
    code_change = rebuild()
    pyproject = copy / "pyproject.toml"
    pyproject.write_text(
        f"# dependency change {change}\n"
        + pyproject.read_text().replace('"httptools>=0.6",', '"httptools>=0.6",\n    "six>=1.16",')
    )
    subprocess.run(["uv", "lock", "--quiet"], cwd=copy, check=True, timeout=300)
    dependency_change = rebuild()
    client.images.remove("berth-bench-rebuild:latest", force=True)
    return {
        "app_image_mb": round(size / 1e6, 1),
        "python_image_mb": round(base / 1e6, 1),
        "added_over_python_image_mb": round((size - base) / 1e6, 1),
        "rebuild_after_code_change_s": code_change,
        "rebuild_after_dependency_change_s": dependency_change,
    }


def worker_rss_mb(stack: Stack) -> list[float]:
    rss = []
    for pid in sorted(worker_pids(stack)):
        with open(f"/proc/{pid}/status") as status:
            kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
        rss.append(round(kb / 1024, 1))
    return rss


class ConnectionSampler:
    """The most connections the app held in Postgres while it was running."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.peak = {"open": 0, "active": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            counts = app_connections(self.stack)
            self.peak["open"] = max(self.peak["open"], sum(counts.values()))
            self.peak["active"] = max(self.peak["active"], counts.get("active", 0))


def stop_under_load(stack: Stack) -> dict[str, Any]:
    with Load(stack, request=service.read, clients=4, max_seconds=60) as load:
        time.sleep(3)
        seconds = timed(lambda: stack.run("stop", "app", timeout=120))
        time.sleep(2)
    stack.run("start", "app")
    wait_healthy(stack, "app", timeout=60)
    return {"stop_seconds": seconds, **summary(load)}
