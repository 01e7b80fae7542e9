"""Berth's stack on a test Swarm: deploy it with scripts/swarm, load it, look inside it.

Shared by tests/swarm/test_swarm.py and bench/swarm.py. Load goes to Traefik's HTTPS port on
the manager's address on the cluster's own network (host-mode publishing), nowhere else.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx

from tests.stack import service
from tests.stack.deploying import version_mix, versions
from tests.stack.faults import Load, Outcome, summary
from tests.stack.harness import (
    LIFTED_EDGE_LIMITS,
    ROOT,
    TEST_IMAGE,
    Stack,
    derived_image,
    wait_for,
)
from tests.swarm.cluster import Cluster

FIXTURES = ROOT / "tests" / "stack" / "fixtures"
MIGRATIONS = "migrations/versions"
# The app's images, built here from the test image and pushed to the cluster's registry.
LOCAL_REPOSITORY = f"{TEST_IMAGE}-swarm"
REMOTE_REPOSITORY = "berth-swarm/app"
STACK = "berth"
# The images of the other services, pushed under their own names.
SUPPORT_IMAGES = ("POSTGRES_IMAGE", "TRAEFIK_IMAGE", "SOCKET_PROXY_IMAGE")
DEFAULT_IMAGES = {
    "POSTGRES_IMAGE": "postgres:17",
    "TRAEFIK_IMAGE": "traefik:v3.7",
    "SOCKET_PROXY_IMAGE": "tecnativa/docker-socket-proxy:v0.4.2",
}


def build_app_images() -> list[str]:
    """v1, v2 (adds a nullable column), a v2 whose healthcheck always fails, and a v2 with a
    migration that fails halfway: the images of tests/stack/test_deploy.py."""
    sku, failing = "0002_add_item_sku.py", "0003_fails_halfway.py"
    v1, v2 = f"{LOCAL_REPOSITORY}:v1", f"{LOCAL_REPOSITORY}:v2"
    derived_image(v1, "latest", "v1")
    derived_image(v2, v1, "v2", files={f"{MIGRATIONS}/{sku}": FIXTURES / sku})
    derived_image(
        f"{LOCAL_REPOSITORY}:never-healthy", v2, "never-healthy",
        "USER root",
        "RUN printf 'raise SystemExit(\"broken on purpose\")\\n' > /app/berth/healthcheck.py",
        "USER 10001:10001",
    )  # fmt: skip
    derived_image(
        f"{LOCAL_REPOSITORY}:bad-migration", v2, "bad-migration",
        files={f"{MIGRATIONS}/{failing}": FIXTURES / failing},
    )  # fmt: skip
    return ["v1", "v2", "never-healthy", "bad-migration"]


def numbered_app_images(count: int) -> list[str]:
    """Tags r1..rN, each a v1 that answers its own version: for rounds of rollouts."""
    tags = [f"r{number}" for number in range(1, count + 1)]
    for tag in tags:
        derived_image(f"{LOCAL_REPOSITORY}:{tag}", "latest", tag)
    return tags


def remove_app_images() -> None:
    import docker

    client = docker.from_env()
    for image in client.images.list(LOCAL_REPOSITORY):
        for tag in image.tags:
            client.images.remove(tag, force=True)


@dataclass
class Entry:
    """What faults.Load needs from a stack: an HTTPS client to Traefik with the app's Host.
    Here Traefik listens on the manager's address (host-mode publishing)."""

    address: str
    domain: str = "localhost"

    def client(self, *, timeout: float = 10, **options: Any) -> httpx.Client:
        options.setdefault("verify", False)
        return httpx.Client(
            base_url=f"https://{self.address}", headers={"Host": self.domain},
            timeout=timeout, **options,
        )  # fmt: skip


@dataclass
class SwarmStack:
    """Berth deployed on `cluster` by scripts/swarm, as an operator would run it."""

    cluster: Cluster
    workdir: Path
    replicas: int = 2

    def __post_init__(self) -> None:
        self.entry = Entry(self.cluster.manager.address)
        self.settings = {
            "APP_IMAGE": f"registry:5000/{REMOTE_REPOSITORY}",
            "APP_REPLICAS": str(self.replicas),
            "BERTH_STACK": STACK,
            "BERTH_STATE_DIR": str(self.workdir / "state"),
            **LIFTED_EDGE_LIMITS,
            **{name: f"registry:5000/{self.image(name)}" for name in SUPPORT_IMAGES},
        }

    @staticmethod
    def image(variable: str) -> str:
        return os.environ.get(variable) or DEFAULT_IMAGES[variable]

    def push_images(self, tags: list[str]) -> None:
        """The app's tags and the other services' images, into the cluster's registry."""
        for tag in tags:
            self.cluster.push(f"{LOCAL_REPOSITORY}:{tag}", f"{REMOTE_REPOSITORY}:{tag}")
        for name in SUPPORT_IMAGES:
            self.cluster.push(self.image(name), self.image(name))

    def label_db_node(self, node: str) -> None:
        self.cluster.docker("node", "update", "--label-add", "berth.db=true", node)

    # -- the command under test ------------------------------------------------------------
    def swarm(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """scripts/swarm against the manager, with nothing from this shell but the test's
        settings (no .env: the checkout's own is never read, BERTH_STATE_DIR aside)."""
        env = {**self.cluster.env(), **self.settings}
        return subprocess.run(
            [str(ROOT / "scripts" / "swarm"), "--env-file", os.devnull, *args],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def deploy(self, tag: str) -> subprocess.CompletedProcess[str]:
        return self.swarm("deploy", tag)

    # -- looking inside ------------------------------------------------------------------
    def service(self, name: str) -> dict[str, Any]:
        result = self.cluster.docker("service", "inspect", f"{STACK}_{name}")
        service: dict[str, Any] = json.loads(result.stdout)[0]
        return service

    def tasks(self, name: str) -> list[dict[str, Any]]:
        ids = self.cluster.docker("service", "ps", "-q", "--no-trunc", f"{STACK}_{name}")
        if not ids.stdout.split():
            return []
        # A task can vanish between listing and inspecting it (Swarm prunes its history):
        # the CLI then exits 1, but still prints the ones it found.
        result = self.cluster.docker("inspect", *ids.stdout.split(), check=False)
        found: list[dict[str, Any]] = json.loads(result.stdout or "[]")
        return found

    def running_tasks(self, name: str) -> list[dict[str, Any]]:
        return [
            t for t in self.tasks(name)
            if t["DesiredState"] == "running" and t["Status"]["State"] == "running"
        ]  # fmt: skip

    def node_names(self) -> dict[str, str]:
        """Node id: hostname."""
        nodes = json.loads(self.cluster.docker("node", "inspect", *self.node_ids()).stdout)
        return {node["ID"]: node["Description"]["Hostname"] for node in nodes}

    def node_ids(self) -> list[str]:
        return self.cluster.docker("node", "ls", "-q").stdout.split()

    def app_nodes(self) -> list[str]:
        """Hostnames of the nodes running app tasks (one entry per task)."""
        names = self.node_names()
        return sorted(names[t["NodeID"]] for t in self.running_tasks("app"))

    def app_image_tag(self) -> str:
        image: str = self.service("app")["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
        return image.split("@", 1)[0].rsplit(":", 1)[1]

    def psql(self, sql: str) -> str:
        """SQL as the app's user, inside the db task's container, on the db node."""
        task = self.running_tasks("db")[0]
        node = self.cluster.node(self.node_names()[task["NodeID"]])
        container = task["Status"]["ContainerStatus"]["ContainerID"]
        result = subprocess.run(
            ["docker", "exec", container, "psql", "-X", "-q", "-t", "-A", "-v",
             "ON_ERROR_STOP=1", "-U", "berth", "-d", "berth", "-c", sql],
            env={**os.environ, "DOCKER_HOST": node.docker_host},
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        return result.stdout.strip()

    def logs(self, name: str) -> str:
        result = self.cluster.docker("service", "logs", "--raw", "--no-trunc", f"{STACK}_{name}")
        return result.stdout + result.stderr

    def version_answering(self) -> str | None:
        with self.entry.client(timeout=5) as client:
            try:
                response = client.get("/api/version")
            except httpx.TransportError:
                return None
            return str(response.json()["version"]) if response.status_code == 200 else None

    def wait_serving(self, version: str, timeout: float = 60) -> None:
        """Until Traefik routes /api/version to `version` (it learns of tasks by polling)."""
        wait_for(
            lambda: self.version_answering() == version, timeout=timeout, interval=0.5,
            what=f"{version} to answer through Traefik",
        )  # fmt: skip


# -- load ---------------------------------------------------------------------------------
LOAD_CLIENTS = 4
MIN_REQUESTS = 200  # below this a run proves nothing: the load itself failed


@dataclass
class Loaded:
    seconds: float  # from the action's start until it returned
    load: Load
    result: Any


def under_load(
    stack: SwarmStack, action: Callable[[], Any], *, settle: float = 3, max_seconds: float = 300
) -> Loaded:
    """Runs `action` inside a bounded GET/POST load through Traefik over HTTPS (4 clients),
    with `settle` seconds of load either side."""
    target = cast(Stack, stack.entry)  # Load calls nothing but .client() on its stack
    with Load(target, request=version_mix, clients=LOAD_CLIENTS, max_seconds=max_seconds) as load:
        time.sleep(settle)
        started = time.monotonic()
        result = action()
        seconds = time.monotonic() - started
        time.sleep(settle)
    return Loaded(seconds, load, result)


def assert_load_held(loaded: Loaded) -> None:
    """The load was real: enough requests, from every client until the end (a client
    thread that died would stop sending, and hide failures)."""
    outcomes = loaded.load.outcomes
    assert len(outcomes) >= MIN_REQUESTS, f"only {len(outcomes)} requests were sent"
    ended = max(o.started for o in outcomes)
    for client in range(LOAD_CLIENTS):
        last = max((o.started for o in outcomes if o.client == client), default=0.0)
        assert last > ended - 5, f"load client {client} stopped sending {ended - last:.0f}s early"
    methods = {o.tag == "" for o in outcomes}
    assert methods == {True, False}, "the load must mix version GETs with item GETs and POSTs"


def figures(loaded: Loaded, **extra: Any) -> dict[str, Any]:
    return {"seconds": round(loaded.seconds, 1), **summary(loaded.load), **extra}


def failures_described(outcomes: list[Outcome]) -> list[str]:
    return [f"{o.status or o.error} after {o.seconds:.1f}s: {o.body[:80]}" for o in outcomes]


def iter_versions(loaded: Loaded) -> Iterator[str]:
    yield from versions(loaded.load.outcomes)


# -- node maintenance and loss ---------------------------------------------------------
def worker_with_an_app_task(stack: SwarmStack) -> str:
    """A worker (never the manager, which holds Traefik and Postgres) running an app task."""
    workers = {node.name for node in stack.cluster.workers_nodes}
    return next(node for node in stack.app_nodes() if node in workers)


def app_tasks_alive_on(stack: SwarmStack, node: str) -> list[dict[str, Any]]:
    """App tasks whose container still runs on `node`, whatever Swarm wants of them."""
    node_id = next(i for i, name in stack.node_names().items() if name == node)
    return [
        t for t in stack.tasks("app")
        if t["NodeID"] == node_id and t["Status"]["State"] in ("running", "starting")
    ]  # fmt: skip


def replaced_off(stack: SwarmStack, node: str) -> bool:
    nodes = stack.app_nodes()
    return node not in nodes and len(nodes) == stack.replicas


def drain_under_load(stack: SwarmStack, node: str) -> Loaded:
    """`docker node update --availability drain` under load, until the node's app tasks
    run elsewhere and the old ones (serving through their drain) have stopped. The node is
    made active again afterwards. `result` is the seconds until the tasks ran elsewhere."""

    def drain() -> float:
        started = time.monotonic()
        stack.cluster.docker("node", "update", "--availability", "drain", node)
        wait_for(lambda: replaced_off(stack, node), timeout=180, interval=0.5,
                 what=f"the app's tasks to leave {node}")  # fmt: skip
        moved = time.monotonic() - started
        wait_for(lambda: not app_tasks_alive_on(stack, node), timeout=60, interval=0.5,
                 what=f"the old tasks on {node} to stop")  # fmt: skip
        return moved

    try:
        return under_load(stack, drain)
    finally:
        stack.cluster.docker("node", "update", "--availability", "active", node)


@dataclass
class NodeLoss:
    loaded: Loaded
    probe: Load  # one client with a 5 s timeout: how long *new* requests were affected
    killed: float
    node_down: float
    replaced: float

    def figures(self) -> dict[str, Any]:
        return figures(
            self.loaded,
            node_down_after_seconds=round(self.node_down - self.killed, 1),
            replaced_after_seconds=round(self.replaced - self.killed, 1),
            probe_requests=len(self.probe.outcomes),
            probe_failed_at_seconds=[
                round(o.started - self.killed, 1) for o in self.probe.failures()
            ],
        )


def node_state(stack: SwarmStack, node: str) -> str:
    found = json.loads(stack.cluster.docker("node", "inspect", node).stdout)
    return str(found[0]["Status"]["State"])


def kill_under_load(stack: SwarmStack, node: str, recovery_timeout: float) -> NodeLoss:
    """Stops the node's container hard (SIGKILL to its whole engine) under load; waits
    until Swarm sees the node down and runs its app tasks elsewhere."""
    marks: dict[str, float] = {}

    def kill() -> Load:
        probe_target = cast(Stack, stack.entry)
        with Load(probe_target, request=service.read, clients=1, timeout=5, pause=0.1,
                  max_seconds=recovery_timeout + 60) as probe:  # fmt: skip
            time.sleep(2)
            marks["killed"] = time.time()
            stack.cluster.node(node).container.kill()
            wait_for(lambda: node_state(stack, node) == "down", timeout=120, interval=0.5,
                     what=f"Swarm to see {node} down")  # fmt: skip
            marks["node_down"] = time.time()
            wait_for(lambda: replaced_off(stack, node), timeout=recovery_timeout, interval=0.5,
                     what="Swarm to replace the lost tasks")  # fmt: skip
            marks["replaced"] = time.time()
            time.sleep(3)
        return probe

    loaded = under_load(stack, kill)
    return NodeLoss(loaded, loaded.result, marks["killed"], marks["node_down"], marks["replaced"])
