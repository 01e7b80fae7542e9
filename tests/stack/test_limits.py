"""Every service runs under a memory and a pids limit; a worker past its memory budget is
replaced while the service keeps answering."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import docker
import pytest

from tests.stack.faults import Load, report, summary, wait_workers, worker_pids
from tests.stack.harness import ROOT, TEST_IMAGE, Stack, derived_image
from tests.stack.service import READ_PATH, read

HOOKS = ROOT / "tests" / "stack" / "fixtures" / "testhooks" / "sitecustomize.py"
WORKERS = 2
BUDGET_MB = 200


@pytest.fixture(scope="module")
def hooks_image(test_image: None) -> Iterator[str]:
    derived_image(
        "testhooks", "latest", "testhooks", "ENV PYTHONPATH=/app/testhooks:/app",
        files={"testhooks/sitecustomize.py": HOOKS},
    )  # fmt: skip
    yield "testhooks"
    docker.from_env().images.remove(f"{TEST_IMAGE}:testhooks", force=True)


@pytest.fixture(scope="module")
def stack(stack_factory: Callable[..., Stack], hooks_image: str) -> Stack:
    stack = stack_factory(
        APP_TAG=hooks_image, WEB_CONCURRENCY=str(WORKERS), WORKER_MAX_RSS_MB=str(BUDGET_MB)
    )
    stack.up()
    wait_workers(stack, WORKERS)
    return stack


def test_every_service_has_memory_and_pids_limits(stack: Stack) -> None:
    for service in ("preflight", "traefik", "db", "migrate", "app", "backup"):
        host = stack.container(service).attrs["HostConfig"]
        assert host["Memory"] > 0, service
        assert (host["PidsLimit"] or 0) > 0, service
    assert stack.container("app").attrs["HostConfig"]["Memory"] == 550 * 2**20
    assert stack.container("db").attrs["HostConfig"]["ShmSize"] == 256 * 2**20
    with stack.client() as client:
        assert client.get(READ_PATH).status_code == 200


def grow(stack: Stack, mb: int) -> int | None:
    """Makes one worker hold `mb` more MiB; returns its pid (None if it died answering)."""
    code = ("import json, urllib.request; print(json.load(urllib.request.urlopen("
            f"'http://127.0.0.1:8000/_test/grow?mb={mb}', timeout=30))['pid'])")  # fmt: skip
    result = stack.run("exec", "-T", "app", "python", "-c", code, check=False)
    return int(result.stdout) if result.returncode == 0 else None


def host_pid_of(stack: Stack, container_pid: int) -> int:
    """Container pids (what the worker reports) to host pids (what worker_pids returns)."""
    top = stack.container("app").top(ps_args="-eo pid,args")
    for row in top["Processes"]:
        pid = int(row[0])
        with open(f"/proc/{pid}/status") as status:
            namespaced = next(line for line in status if line.startswith("NSpid:")).split()
        if int(namespaced[-1]) == container_pid:
            return pid
    raise AssertionError(f"no process {container_pid} in the app container")


def test_a_worker_over_its_budget_restarts_gracefully(stack: Stack) -> None:
    before = worker_pids(stack)
    with Load(stack, request=read, clients=4, max_seconds=60) as load:
        time.sleep(1)
        grown = grow(stack, 150)  # ~90 MiB at rest + 150 > the 200 MiB budget
        assert grown is not None
        victim = host_pid_of(stack, grown)
        wait_workers(stack, WORKERS, lambda pids: victim not in pids, "the worker to be replaced")
        time.sleep(2)
    assert victim in before
    assert load.failures() == []  # it finished its requests before leaving
    assert "worker memory over budget, restarting it gracefully" in stack.logs("app")
    assert stack.container("app").attrs["RestartCount"] == 0
    report("worker over memory budget", **summary(load))


def test_a_worker_past_the_container_limit_is_oom_killed_and_replaced(stack: Stack) -> None:
    before = worker_pids(stack)
    with Load(stack, request=read, clients=4, max_seconds=60) as load:
        time.sleep(1)
        assert grow(stack, 600) is None  # more than the 550 MiB container: killed mid-request
        wait_workers(
            stack, WORKERS, lambda pids: pids != before, "the killed worker to be replaced"
        )
        time.sleep(2)
    assert stack.state("app")["Status"] == "running"  # the kernel killed a worker, not PID 1
    assert load.successes_after(time.time() - 2) > 0
    assert len(load.failures()) <= load.clients  # at most the requests on the killed worker
    report("worker past the container memory limit", **summary(load))
