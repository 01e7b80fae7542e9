"""Berth on a real three-node Swarm: scripts/swarm deploys, rolls, refuses, and survives a
node drained or lost, under a bounded HTTPS load (GET and POST) through Traefik.

One cluster serves the scenarios, in order: each leaves the stack as the next expects (v1
deployed, then v2 serving, then v1 again after the rollback), and asserts it first.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tests.stack import service
from tests.stack.faults import report
from tests.stack.harness import wait_for
from tests.swarm.cluster import Cluster
from tests.swarm.deploying import (
    LOAD_CLIENTS,
    Loaded,
    SwarmStack,
    assert_load_held,
    drain_under_load,
    failures_described,
    figures,
    iter_versions,
    kill_under_load,
    under_load,
    worker_with_an_app_task,
)

# Building the cluster and pushing the images happens inside the first test.
# These tests use the items example (a service generated without it skips them):
# v2's migration adds a column to the items table.
pytestmark = [pytest.mark.timeout(1200), service.example_only]

# A node lost for good: requests in flight on its tasks are lost (answered 504 by Traefik's
# responseHeaderTimeout, 20 s), at most one per load client, plus a POST or two sent to the
# dead task before Traefik's health check (3 s interval, 2 s timeout) drops it.
NODE_LOSS_MAX_FAILED = 2 * LOAD_CLIENTS
NODE_LOSS_MAX_RECOVERY_SECONDS = 120


def deployed(loaded: Loaded) -> Any:
    return loaded.result


def test_first_deploy_migrates_once_spreads_the_app_and_serves_https(
    swarm_stack: SwarmStack, cluster: Cluster
) -> None:
    stack = swarm_stack
    result = stack.deploy("v1")

    assert result.returncode == 0, result.stderr
    migrations = stack.tasks("migrate")
    assert [t["Status"]["State"] for t in migrations] == ["complete"]  # exactly once
    assert len(set(stack.app_nodes())) >= 2, stack.app_nodes()
    stack.wait_serving("v1")
    request_id = f"swarm-{uuid.uuid4().hex[:12]}"
    with stack.entry.client() as client:
        created = client.post("/api/items", json={"name": "first", "price": "1.00"},
                              headers={"X-Request-ID": request_id})  # fmt: skip
        listed = client.get("/api/items")
        assert client.get("/health/ready").json()["revision"] == "0001"
    assert created.status_code == 201, created.text
    assert listed.status_code == 200
    assert created.headers["x-content-type-options"] == "nosniff"  # Traefik's middlewares

    # Host-mode publishing: the app logs this machine's own address as the client.
    # The app writes its access lines in batches, and Swarm's log service lags: poll.
    def access_line() -> dict[str, Any] | None:
        lines = stack.logs("app").splitlines()
        return next((json.loads(line) for line in lines if request_id in line), None)

    line = wait_for(access_line, timeout=30, interval=1, what="the request's access line")
    assert line["client"] == cluster.gateway
    assert_configuration(stack)
    report("swarm: first deploy", nodes=stack.app_nodes(), output=result.stderr.splitlines())


def assert_configuration(stack: SwarmStack) -> None:
    """Images from the registry, the password as a secret, Postgres pinned, Traefik without
    the Docker socket (only the socket proxy, read-only, on a manager, holds it)."""
    for name in ("app", "db", "traefik", "socket-proxy"):
        spec = stack.service(name)["Spec"]["TaskTemplate"]["ContainerSpec"]
        assert spec["Image"].startswith("registry:5000/"), spec["Image"]
    app = stack.service("app")["Spec"]["TaskTemplate"]["ContainerSpec"]
    assert not any(variable.startswith("POSTGRES_PASSWORD=") for variable in app["Env"])
    assert [s["SecretName"] for s in app["Secrets"]] == ["berth_postgres_password"]
    db = stack.service("db")["Spec"]["TaskTemplate"]["Placement"]
    assert db["Constraints"] == ["node.labels.berth.db == true"]
    traefik = stack.service("traefik")["Spec"]["TaskTemplate"]["ContainerSpec"]
    assert not any("docker.sock" in m.get("Source", "") for m in traefik.get("Mounts", []))
    proxy = stack.service("socket-proxy")["Spec"]["TaskTemplate"]
    # The socket, beside the tmpfs mounts its read-only root filesystem writes to.
    (socket,) = [m for m in proxy["ContainerSpec"]["Mounts"] if m.get("Type") == "bind"]
    assert socket["Source"] == "/var/run/docker.sock"
    assert socket["ReadOnly"]
    assert proxy["Placement"]["Constraints"] == ["node.role == manager"]


def test_a_rolling_update_under_load_drops_nothing(swarm_stack: SwarmStack) -> None:
    stack = swarm_stack
    assert stack.app_image_tag() == "v1"

    loaded = under_load(stack, lambda: stack.deploy("v2"))

    assert deployed(loaded).returncode == 0, deployed(loaded).stderr
    assert_load_held(loaded)
    assert loaded.load.failures() == [], failures_described(loaded.load.failures())
    seen = list(iter_versions(loaded))
    assert seen[0] == "v1"
    assert seen[-10:] == ["v2"] * 10  # traffic ends on the new version
    assert {t["Status"]["State"] for t in stack.tasks("migrate")} == {"complete"}
    assert len(stack.tasks("migrate")) == 2  # once per deploy
    assert stack.psql("SELECT version_num FROM alembic_version") == "0002"
    report("swarm: rolling update", **figures(loaded))


def test_a_version_that_fails_its_healthcheck_is_rolled_back_by_swarm(
    swarm_stack: SwarmStack,
) -> None:
    stack = swarm_stack
    assert stack.app_image_tag() == "v2"

    loaded = under_load(stack, lambda: stack.deploy("never-healthy"))

    result = deployed(loaded)
    assert result.returncode != 0
    assert "unhealthy container" in result.stderr
    assert "Swarm rolled the app back to registry:5000/berth-swarm/app:v2" in result.stderr
    assert_load_held(loaded)
    assert loaded.load.failures() == [], failures_described(loaded.load.failures())
    assert set(iter_versions(loaded)) == {"v2"}
    assert stack.app_image_tag() == "v2"
    assert stack.service("app")["UpdateStatus"]["State"] == "rollback_completed"
    report("swarm: never healthy", **figures(loaded, exit_code=result.returncode))


def test_a_failing_migration_changes_nothing(swarm_stack: SwarmStack) -> None:
    stack = swarm_stack
    assert stack.app_image_tag() == "v2"
    app_before = stack.service("app")["Version"]["Index"]

    loaded = under_load(stack, lambda: stack.deploy("bad-migration"))

    result = deployed(loaded)
    assert result.returncode != 0
    assert "migration failed: revision 0003 raised DataError" in result.stderr
    assert "the app was not changed" in result.stderr
    assert_load_held(loaded)
    assert loaded.load.failures() == [], failures_described(loaded.load.failures())
    assert set(iter_versions(loaded)) == {"v2"}
    assert stack.service("app")["Version"]["Index"] == app_before  # never touched
    assert stack.psql("SELECT version_num FROM alembic_version") == "0002"
    assert stack.psql("SELECT to_regclass('half_done') IS NULL") == "t"
    report("swarm: failing migration", **figures(loaded, exit_code=result.returncode))


def test_rollback_returns_to_the_previous_release_without_migrating(
    swarm_stack: SwarmStack,
) -> None:
    stack = swarm_stack
    assert stack.app_image_tag() == "v2"
    migrations = len(stack.tasks("migrate"))

    loaded = under_load(stack, lambda: stack.swarm("rollback"))

    result = deployed(loaded)
    assert result.returncode == 0, result.stderr
    assert "rolling back to v1" in result.stderr
    assert_load_held(loaded)
    assert loaded.load.failures() == [], failures_described(loaded.load.failures())
    assert list(iter_versions(loaded))[-10:] == ["v1"] * 10
    assert stack.app_image_tag() == "v1"
    # The schema stays where it was: v1 runs on v2's expanded schema; no job ran.
    assert stack.psql("SELECT version_num FROM alembic_version") == "0002"
    assert len(stack.tasks("migrate")) == migrations
    report("swarm: rollback", **figures(loaded))


def test_draining_a_node_moves_its_tasks_without_a_failed_request(
    swarm_stack: SwarmStack,
) -> None:
    stack = swarm_stack
    node = worker_with_an_app_task(stack)

    loaded = drain_under_load(stack, node)

    assert_load_held(loaded)
    assert loaded.load.failures() == [], failures_described(loaded.load.failures())
    assert node not in stack.app_nodes()
    assert len(stack.app_nodes()) == stack.replicas
    report("swarm: node drained", **figures(loaded, tasks_moved_seconds=round(loaded.result, 1)))


def test_a_killed_node_costs_only_its_requests_in_flight(swarm_stack: SwarmStack) -> None:
    """The honest figure for an unplanned loss: the node's container is stopped hard."""
    stack = swarm_stack
    node = worker_with_an_app_task(stack)

    loss = kill_under_load(stack, node, recovery_timeout=NODE_LOSS_MAX_RECOVERY_SECONDS)

    failures = loss.loaded.load.failures()
    assert_load_held(loss.loaded)
    assert len(failures) <= NODE_LOSS_MAX_FAILED, failures_described(failures)
    for failure in failures:  # only requests caught on the lost node, around the loss
        assert failure.status in (502, 504), failures_described([failure])
        assert loss.killed - 1 <= failure.started <= loss.node_down, failures_described([failure])
    assert loss.loaded.load.successes_after(loss.replaced) > 0
    assert loss.replaced - loss.killed <= NODE_LOSS_MAX_RECOVERY_SECONDS
    report("swarm: node killed", **loss.figures())
