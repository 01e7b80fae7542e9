"""Rolling updates on a real three-node Swarm under load, next to the single-server deploy.

    uv run python -m bench.swarm [--rounds N]

Builds a cluster of three docker-in-docker nodes with a registry (tests/swarm/cluster.py),
deploys Berth with scripts/swarm, then under the load of bench/deploy.py (4 clients through
Traefik over HTTPS: GET /api/version, GET /api/items, POST /api/items) runs N rolling
updates, drains a worker, and kills a worker. Removes the cluster, and writes
bench/results/swarm-rollout-<time>.json and .md; the single-server figures in the table are
the newest bench/results/deploy-*.json (`uv run python -m bench.deploy` writes it).
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.rounds import RESULTS, repeat_and_save
from tests.stack.harness import build_test_image
from tests.swarm.cluster import swarm_cluster
from tests.swarm.deploying import (
    SwarmStack,
    drain_under_load,
    figures,
    kill_under_load,
    numbered_app_images,
    remove_app_images,
    under_load,
    worker_with_an_app_task,
)

SINGLE_SERVER = "scripts/deploy"


def run(rounds: int) -> dict[str, Any]:
    build_test_image()
    tags = numbered_app_images(rounds + 1)
    results: dict[str, Any] = {"scripts/swarm deploy": []}
    try:
        with swarm_cluster() as cluster, tempfile.TemporaryDirectory() as workdir:
            stack = SwarmStack(cluster, Path(workdir))
            stack.push_images(tags)
            stack.label_db_node(cluster.manager.name)
            first = stack.deploy(tags[0])
            assert first.returncode == 0, first.stderr
            stack.wait_serving(tags[0])
            for tag in tags[1:]:
                loaded = under_load(stack, lambda: stack.deploy(tag))  # noqa: B023
                assert loaded.result.returncode == 0, loaded.result.stderr
                results["scripts/swarm deploy"].append(
                    figures(
                        loaded,
                        exit_code=loaded.result.returncode,
                        steps=loaded.result.stderr.splitlines(),
                    )
                )
                print(f"rollout to {tag}: {results['scripts/swarm deploy'][-1]}")
            drained = drain_under_load(stack, worker_with_an_app_task(stack))
            results["node drained"] = figures(drained, tasks_moved_seconds=round(drained.result, 1))
            print(f"drain: {results['node drained']}")
            loss = kill_under_load(stack, worker_with_an_app_task(stack), recovery_timeout=180)
            results["node killed"] = loss.figures()
            print(f"kill: {results['node killed']}")
    finally:
        remove_app_images()
    return results


def single_server() -> tuple[str, list[dict[str, Any]]]:
    """The newest single-server deploy benchmark's rounds of scripts/deploy."""
    runs = sorted(RESULTS.glob("deploy-*.json"))
    if not runs:
        return "", []
    rounds: list[dict[str, Any]] = json.loads(runs[-1].read_text()).get(SINGLE_SERVER, [])
    return runs[-1].name, rounds


def row(method: str, rounds: list[dict[str, Any]]) -> str:
    seconds = [r["seconds"] for r in rounds]
    return (
        f"| {method} | {len(rounds)} | {', '.join(str(r['failed']) for r in rounds)} "
        f"| {', '.join(str(r['requests']) for r in rounds)} "
        f"| {max(r['slowest_seconds'] for r in rounds):.2f} "
        f"| {statistics.median(seconds):.1f} ({max(seconds):.1f}) |"
    )


def probe_outcome(killed: dict[str, Any]) -> str:
    failed = killed["probe_failed_at_seconds"]
    probe = f"a probe (1 client, 5 s timeout, {killed['probe_requests']} requests)"
    if not failed:
        return f"{probe} never failed"
    return f"{probe} failed at {', '.join(f'{s} s' for s in failed)} after the kill"


def failed_statuses(figures: dict[str, Any]) -> list[str]:
    return sorted(status for status in figures["statuses"] if not status.startswith("2"))


def markdown(results: dict[str, Any], when: str) -> str:
    source, single = single_server()
    drained, killed = results["node drained"], results["node killed"]
    lines = [
        f"# Rolling update on a three-node Swarm, next to one server ({when})",
        "",
        "Produced by `uv run python -m bench.swarm`: one manager and two workers (docker-in-",
        "docker on this machine), 2 app replicas, the same load as `bench.deploy` (4 clients",
        "through Traefik over HTTPS: GET /api/version, GET /api/items, POST /api/items).",
        "",
        "| method | rounds | failed requests (each round) | requests (each round) "
        "| slowest request, s | deploy seconds, median (max) |",
        "|---|---|---|---|---|---|",
        row("`scripts/swarm deploy` (Swarm, 3 nodes)", results["scripts/swarm deploy"]),
    ]
    if single:
        lines.append(row(f"`scripts/deploy` (one server, from `{source}`)", single))
    lines += [
        "",
        "A Swarm deploy's seconds run from the command's start to its exit: infrastructure",
        "check, the migration job to completion, then the app rolled task by task (start-",
        "first, each new task healthy before its old one stops, complete after a 15 s",
        "monitor window), the old task serving 10 s after SIGTERM while Traefik's 5 s poll",
        "catches up. The JSON file keeps each",
        "deploy's output, with the time each step started. The single-server row comes from",
        "the file it names, a run at another time: compare durations only between runs on",
        "the same, equally quiet machine.",
        "",
        "| event | failed requests | requests | slowest request, s | figures |",
        "|---|---|---|---|---|",
        f"| worker drained (`docker node update --availability drain`) | {drained['failed']} "
        f"| {drained['requests']} | {drained['slowest_seconds']:.2f} "
        f"| tasks running elsewhere after {drained['tasks_moved_seconds']} s |",
        f"| worker killed (its container stopped hard) | {killed['failed']} "
        f"({', '.join(failed_statuses(killed))}) | {killed['requests']} "
        f"| {killed['slowest_seconds']:.2f} | node seen down after "
        f"{killed['node_down_after_seconds']} s, its task replaced after "
        f"{killed['replaced_after_seconds']} s; {probe_outcome(killed)} |",
        "",
        "Failed means any non-2xx answer or a connection error. A killed node answers",
        "nothing, not even a reset: requests in flight there get a 504 from Traefik after",
        "its 20 s responseHeaderTimeout, and a POST sent there before Traefik's health check",
        "(3 s interval, 2 s timeout) drops the task gets a 502 after the 3 s dial timeout (a",
        "GET is retried on another task).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    repeat_and_save(__doc__.splitlines()[0], run, markdown, name="swarm-rollout")


if __name__ == "__main__":
    main()
