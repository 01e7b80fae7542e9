"""Deploying under load: shared by tests/stack/test_deploy.py and bench/deploy.py."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.stack import service
from tests.stack.faults import Load, Outcome, report, summary
from tests.stack.harness import ROOT, ContainerEvents, Stack, wait_for

FIXTURES = ROOT / "tests" / "stack" / "fixtures"


@dataclass
class Deploy:
    result: subprocess.CompletedProcess[str]
    seconds: float
    load: Load
    # The stack's container events while it ran (start, kill, die, health_status...).
    events: list[dict[str, Any]]

    def times(self, action: str, container_ids: set[str]) -> list[float]:
        """When any of these containers had `action` ("kill", "health_status: unhealthy")."""
        return [
            event["timeNano"] / 1e9
            for event in self.events
            if event.get("Action") == action and event.get("id") in container_ids
        ]


def state_dir(stack: Stack) -> Path:
    """Where scripts/deploy keeps this stack's release history and lock."""
    return stack.workdir / "deploy-state"


def deploy_env(stack: Stack, settings: dict[str, str] | None = None) -> dict[str, str]:
    return {
        **os.environ,
        "COMPOSE_ENV_FILES": str(stack.env_file),
        "BERTH_STATE_DIR": str(state_dir(stack)),
        **(settings or {}),
    }


def deploy_script(
    stack: Stack, *args: str, settings: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / "scripts" / "deploy"), *args],
        cwd=ROOT, env=deploy_env(stack, settings), capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip


def start_deploy(stack: Stack, *args: str) -> subprocess.Popen[str]:
    """scripts/deploy in the background, in a process group of its own (as a shell runs a
    command), its stdout and stderr as one stream of lines."""
    return subprocess.Popen(
        [str(ROOT / "scripts" / "deploy"), *args],
        cwd=ROOT, env=deploy_env(stack), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip


def finish(
    process: subprocess.Popen[str],
    on_line: Callable[[str], None] = lambda line: None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """Read a started deploy's output to its end, calling `on_line` with each line; the
    output is returned as stderr (where scripts/deploy writes)."""
    assert process.stdout is not None
    watchdog = threading.Timer(timeout, process.kill)
    watchdog.start()
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            on_line(line)
        process.wait()
    finally:
        watchdog.cancel()
    return subprocess.CompletedProcess(process.args, process.returncode, "", "".join(lines))


def interrupted_deploy(
    stack: Stack, *args: str, at: str, signal_number: int, whole_group: bool
) -> subprocess.CompletedProcess[str]:
    """scripts/deploy, sent `signal_number` the moment it prints a line containing `at`:
    to its whole process group as Ctrl-C in a terminal does, or to the script alone as
    `kill` does."""
    process = start_deploy(stack, *args)
    sent: list[str] = []

    def interrupt(line: str) -> None:
        if at in line and not sent:
            (os.killpg if whole_group else os.kill)(process.pid, signal_number)
            sent.append(line)

    result = finish(process, interrupt)
    assert sent, f"the deploy never printed {at!r}:\n{result.stderr}"
    return result


def version_mix(client: httpx.Client, worker: int, number: int) -> tuple[httpx.Response, str]:
    """GET /api/version (tagged with the version that answered), the service's reads and
    writes."""
    kind = number % 3
    if kind == 0:
        response = client.get("/api/version")
        return response, response.json()["version"] if response.status_code == 200 else ""
    response, _ = (service.read if kind == 1 else service.write)(client, worker, number)
    return response, ""


def under_load(
    stack: Stack,
    action: Callable[[], subprocess.CompletedProcess[str]],
    done: Callable[[], object] | None = None,
) -> Deploy:
    """Runs `action` inside a bounded load through Traefik, with 3 s of load either side.
    The deploy counts as finished when `action` returns and, if given, `done()` returns."""
    with (
        ContainerEvents(stack) as events,
        Load(stack, request=version_mix, clients=4, max_seconds=120) as load,
    ):
        time.sleep(3)
        started = time.monotonic()
        result = action()
        if done is not None:
            done()
        seconds = time.monotonic() - started
        time.sleep(3)
    return Deploy(result, seconds, load, events.events)


def versions(outcomes: list[Outcome]) -> list[str]:
    return [outcome.tag for outcome in outcomes if outcome.tag]


def version_answer(stack: Stack) -> str | None:
    """The version answering /api/version through Traefik, or None if none does yet."""
    with stack.client(timeout=5) as client:
        response = client.get("/api/version")
        return str(response.json()["version"]) if response.status_code == 200 else None


def serving(stack: Stack) -> str:
    """The version Traefik routes to (right after `up`, Traefik may 404 for a second)."""
    return wait_for(lambda: version_answer(stack), timeout=10, what="/api/version")


def app_ids(stack: Stack) -> set[str]:
    return {c.id for c in stack.containers("app") if c.status == "running"}


def figures(deploy: Deploy) -> dict[str, Any]:
    """A deploy's exit code and duration, with its load's summary."""
    return {
        "exit_code": deploy.result.returncode,
        "seconds": round(deploy.seconds, 1),
        **summary(deploy.load),
    }


def record(name: str, deploy: Deploy) -> None:
    report(name, **figures(deploy))
