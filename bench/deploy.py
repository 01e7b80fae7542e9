"""Berth's zero-downtime deploy against the naive `docker compose up -d`, under one load.

    uv run python -m bench.deploy [--rounds N]

Each round deploys a new version twice under the same load through Traefik over HTTPS
(4 clients, GET /api/version, GET /api/items, POST /api/items), once with scripts/deploy
and once by changing the image and running `docker compose up -d`. scripts/deploy's own
lines time its steps (the README's timing budget). Writes
bench/results/deploy-<timestamp>.json and bench/results/deploy.md.
"""

from __future__ import annotations

import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import docker

from bench.rounds import repeat_and_save
from tests.stack.deploying import (
    Deploy,
    deploy_script,
    figures,
    finish,
    start_deploy,
    under_load,
    version_answer,
)
from tests.stack.harness import Stack, build_test_image, derived_image, wait_for

# scripts/deploy points <repository>:latest at what it deployed: use a repository of our own.
REPOSITORY = "berth-bench-deploy"
# Each step of scripts/deploy ends where it prints the line starting with its marker.
STEPS = (
    ("reading the config, taking the lock", "deploy: checking the configuration and migrating"),
    ("check the configuration, migrate, start the new containers", "deploy: waiting for"),
    ("new containers healthy", "deploy: healthy;"),
    ("routed by Traefik", "deploy: draining"),
    ("old containers out of routing, proven through Traefik", "deploy: stopping"),
    ("old containers stopped, release recorded", "deploy: done"),
)
# Within the drain: from the drain flag to Docker reporting the old container unhealthy.
UNHEALTHY = "of which: old containers reported unhealthy"


def stepped_deploy(
    stack: Stack, tag: str, lines: list[tuple[str, float]]
) -> subprocess.CompletedProcess[str]:
    """scripts/deploy --tag TAG; each line it prints, with when, goes to `lines`."""
    return finish(start_deploy(stack, "--tag", tag), lambda line: lines.append((line, time.time())))


def steps(began: float, lines: list[tuple[str, float]], deploy: Deploy) -> dict[str, float]:
    """The seconds each of STEPS took, and how long the old containers took to be reported
    unhealthy after the drain began (from the stack's recorded events)."""
    taken: dict[str, float] = {}
    previous = began
    for name, marker in STEPS:
        at = next((moment for line, moment in lines if line.startswith(marker)), None)
        if at is None:
            break
        taken[name] = round(at - previous, 2)
        previous = at
    drained = next((moment for line, moment in lines if line.startswith("deploy: draining")), None)
    unhealthy = [
        event["timeNano"] / 1e9
        for event in deploy.events
        if event.get("Action") == "health_status: unhealthy"
    ]
    if drained is not None and unhealthy:
        taken[UNHEALTHY] = round(min(unhealthy) - drained, 2)
    return taken


def run(rounds: int) -> dict[str, list[dict[str, Any]]]:
    build_test_image()
    tags = [f"bench-{number}" for number in range(2 * rounds + 1)]
    for tag in tags:
        derived_image(f"{REPOSITORY}:{tag}", "latest", tag)
    results: dict[str, list[dict[str, Any]]] = {"scripts/deploy": [], "docker compose up -d": []}
    with tempfile.TemporaryDirectory() as workdir:
        stack = Stack(workdir=Path(workdir), env={"APP_IMAGE": REPOSITORY})
        try:
            assert deploy_script(stack, "--tag", tags[0]).returncode == 0
            for number in range(rounds):
                berth_tag, naive_tag = tags[2 * number + 1], tags[2 * number + 2]

                lines: list[tuple[str, float]] = []
                began: list[float] = []

                def berth_deploy() -> subprocess.CompletedProcess[str]:
                    began.append(time.time())  # noqa: B023
                    return stepped_deploy(stack, berth_tag, lines)  # noqa: B023

                berth = under_load(stack, berth_deploy)
                timed = steps(began[0], lines, berth)
                results["scripts/deploy"].append({**figures(berth), "steps": timed})
                stack.set_env(APP_TAG=naive_tag)
                naive = under_load(
                    stack,
                    lambda: stack.run("up", "--detach", check=False),
                    done=lambda: wait_for(lambda: version_answer(stack) == naive_tag, timeout=90),  # noqa: B023
                )
                results["docker compose up -d"].append(figures(naive))
                stack.set_env(APP_TAG="latest")
                print(f"round {number + 1}: {results['scripts/deploy'][-1]}, "
                      f"{results['docker compose up -d'][-1]}")  # fmt: skip
        finally:
            stack.down()
            client = docker.from_env()
            for image in client.images.list(REPOSITORY):
                for tag in image.tags:
                    client.images.remove(tag, force=True)
    return results


def markdown(results: dict[str, list[dict[str, Any]]], when: str) -> str:
    lines = [
        f"# Deploy under load: Berth vs the naive redeploy ({when})",
        "",
        "Same stack, same load (4 clients through Traefik over HTTPS: GET /api/version,",
        "GET /api/items, POST /api/items), same change of image. Produced by",
        "`uv run python -m bench.deploy`.",
        "",
        "| method | rounds | failed requests (each round) | requests (each round) "
        "| slowest request, s | deploy seconds, median (max) |",
        "|---|---|---|---|---|---|",
    ]
    for method, rounds in results.items():
        seconds = [r["seconds"] for r in rounds]
        lines.append(
            f"| `{method}` | {len(rounds)} | {', '.join(str(r['failed']) for r in rounds)} "
            f"| {', '.join(str(r['requests']) for r in rounds)} "
            f"| {max(r['slowest_seconds'] for r in rounds):.2f} "
            f"| {statistics.median(seconds):.1f} ({max(seconds):.1f}) |"
        )
    steps = [r["steps"] for r in results["scripts/deploy"]]
    lines += [
        "",
        "`scripts/deploy` step by step, seconds (median, and each round):",
        "",
        "| step | median | each round |",
        "|---|---|---|",
    ]
    for name in [name for name, _ in STEPS] + [UNHEALTHY]:
        each = [round_steps[name] for round_steps in steps if name in round_steps]
        if each:
            each_round = ", ".join(f"{seconds:.1f}" for seconds in each)
            lines.append(f"| {name} | {statistics.median(each):.1f} | {each_round} |")
    lines += [
        "",
        "A deploy's seconds run from the command's start until the new version serves: for",
        "scripts/deploy that is when it exits (it waits for Traefik to route to the new",
        "containers and drains the old ones); for `up -d`, until /api/version answers with",
        "the new version. Failed means any non-2xx answer or a connection error; a request",
        "still unanswered after 30 s counts as failed (ReadTimeout). Requests hanging on a",
        "stopping container are why the naive redeploy gets through far fewer requests.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    repeat_and_save(__doc__.splitlines()[0], run, markdown, name="deploy", summary_name="deploy.md")


if __name__ == "__main__":
    main()
