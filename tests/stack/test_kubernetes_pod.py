"""The Kubernetes app pod (deploy/kubernetes, evaluation overlay), played by Docker the way
a kubelet runs it: the init containers in order, then the app, each with the manifest's
command, environment, user, read-only root, dropped capabilities, emptyDir /tmp, Secret
file and memory limit. There is no cluster here, so this is the nearest proof that the
pod's containers start and behave: no scheduler, Service, Ingress, NetworkPolicy or probe
machinery is involved, and the preStop pause is not waited out (the kubelet's own timer).
"""

from __future__ import annotations

import base64
import os
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from threading import Thread
from typing import Any

import docker
import httpx
import psycopg
import pytest
from docker.models.containers import Container
from docker.models.networks import Network

from tests.stack import service
from tests.stack.harness import TEST_IMAGE, free_port, release_port, wait_for
from tests.unit.deploy.manifests import (
    Object,
    app_deployment,
    config_data,
    environment,
    kustomize,
    named,
    parse,
    pod_spec,
    prepare_tree,
    quantity,
)

# These tests use the items example (a service generated without it skips them):
# the pod is checked with the items example's writes.
pytestmark = service.example_only

POSTGRES_IMAGE = os.environ.get("POSTGRES_IMAGE", "postgres:17")


@dataclass
class Pod:
    """The evaluation overlay's app pod, run by Docker on a network of its own."""

    objects: list[Object]
    network: Network
    workdir: Path
    started: list[Container]

    @property
    def password(self) -> str:
        source = next(item for item in self.spec["volumes"] if "secret" in item)["secret"]
        data = named(self.objects, "Secret", source["secretName"])["data"]
        return base64.b64decode(data[source["items"][0]["key"]]).decode()

    def connect(self, port: int) -> psycopg.Connection:
        """To the test's Postgres, as the app's user."""
        config = config_data(self.objects)
        return psycopg.connect(
            host="127.0.0.1", port=port, user=config["POSTGRES_USER"], password=self.password,
            dbname=config["POSTGRES_DB"], autocommit=True, connect_timeout=2,
        )  # fmt: skip

    @property
    def spec(self) -> dict[str, Any]:
        return pod_spec(app_deployment(self.objects))

    def container(self, name: str) -> dict[str, Any]:
        entries = [*self.spec.get("initContainers", []), *self.spec["containers"]]
        return next(entry for entry in entries if entry["name"] == name)

    def run(self, name: str, *, detach: bool, **extra: Any) -> Container:
        """Start container `name` as the kubelet would, with this checkout's image."""
        entry = self.container(name)
        pod_security = self.spec.get("securityContext", {})
        security = entry.get("securityContext", {})
        limits = entry["resources"]["limits"]
        kwargs: dict[str, Any] = {
            "name": f"berth-kubernetes-{name}-{uuid.uuid4().hex[:6]}",
            "command": entry["command"] + entry.get("args", []),
            "environment": environment(self.objects, self.spec, entry),
            "user": f"{pod_security['runAsUser']}:{pod_security['runAsGroup']}",
            "group_add": [str(pod_security["fsGroup"])] if "fsGroup" in pod_security else [],
            "read_only": security.get("readOnlyRootFilesystem", False),
            "cap_drop": security.get("capabilities", {}).get("drop", []),
            "security_opt": (
                ["no-new-privileges"] if security.get("allowPrivilegeEscalation") is False else []
            ),
            "mem_limit": int(quantity(limits["memory"])),
            "nano_cpus": int(quantity(limits["cpu"]) * 1e9),
            "network": self.network.name,
            "detach": True,
            **self.volumes(entry),
            **extra,
        }
        started = docker.from_env().containers.run(f"{TEST_IMAGE}:latest", **kwargs)
        self.started.append(started)
        if not detach:
            result = started.wait(timeout=120)
            assert result["StatusCode"] == 0, started.logs().decode()
        return started

    def volumes(self, entry: dict[str, Any]) -> dict[str, Any]:
        """emptyDir as tmpfs; a Secret as read-only files, root-owned, group fsGroup."""
        tmpfs: dict[str, str] = {}
        binds: dict[str, dict[str, str]] = {}
        for mount in entry.get("volumeMounts", []):
            volume = next(item for item in self.spec["volumes"] if item["name"] == mount["name"])
            if "emptyDir" in volume:
                size = int(quantity(volume["emptyDir"].get("sizeLimit", "64Mi")))
                tmpfs[mount["mountPath"]] = f"size={size},mode=1777"
            elif "secret" in volume:
                binds[str(self.secret_directory(volume["secret"]))] = {
                    "bind": mount["mountPath"],
                    "mode": "ro",
                }
        return {"tmpfs": tmpfs, "volumes": binds}

    def secret_directory(self, source: dict[str, Any]) -> Path:
        directory: Path = self.workdir / source["secretName"]
        if directory.exists():
            return directory
        directory.mkdir()
        data = named(self.objects, "Secret", source["secretName"])["data"]
        group = self.spec["securityContext"].get("fsGroup", 0)
        for item in source["items"]:
            path = directory / item["path"]
            path.write_bytes(base64.b64decode(data[item["key"]]))
            path.chmod(source.get("defaultMode", 0o644))
            os.chown(path, 0, group)
        return directory


@pytest.fixture(scope="module")
def pod(test_image: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pod]:
    workdir = tmp_path_factory.mktemp("kubernetes-pod")
    objects = parse(kustomize(prepare_tree(workdir) / "overlays" / "evaluation"))
    client = docker.from_env()
    network = client.networks.create(f"berth-kubernetes-{uuid.uuid4().hex[:8]}")
    running = Pod(objects=objects, network=network, workdir=workdir, started=[])
    try:
        yield running
    finally:
        for container in running.started:
            container.remove(force=True, v=True)
        network.remove()


@pytest.fixture(scope="module")
def database(pod: Pod) -> Iterator[int]:
    """Postgres under the evaluation overlay's POSTGRES_HOST (the sandbox's stand-in image
    instead of the StatefulSet's), published on a 127.0.0.1 port for the test."""
    config = config_data(pod.objects)
    port = free_port()
    container = docker.from_env().containers.create(
        POSTGRES_IMAGE,
        name=f"berth-kubernetes-db-{uuid.uuid4().hex[:6]}",
        environment={
            "POSTGRES_USER": config["POSTGRES_USER"],
            "POSTGRES_DB": config["POSTGRES_DB"],
            "POSTGRES_PASSWORD": pod.password,
        },
        ports={"5432/tcp": ("127.0.0.1", port)},
    )
    pod.started.append(container)
    pod.network.connect(container, aliases=[config["POSTGRES_HOST"]])
    container.start()

    def connect() -> psycopg.Connection | None:
        try:
            return pod.connect(port)
        except psycopg.OperationalError:
            return None

    wait_for(connect, timeout=60, what="Postgres").close()
    try:
        yield port
    finally:
        release_port(port)


@dataclass
class RunningApp:
    url: str
    container: Container


@pytest.fixture(scope="module")
def app(pod: Pod, database: int) -> Iterator[RunningApp]:
    """The init containers to completion, then the app, probed like the kubelet would."""
    pod.run("preflight", detach=False)
    pod.run("migrate", detach=False)
    port = free_port()
    container = pod.run("app", detach=True, ports={"8000/tcp": ("127.0.0.1", port)})
    base_url = f"http://127.0.0.1:{port}"
    startup = pod.container("app")["startupProbe"]

    def started() -> bool:
        try:
            return httpx.get(base_url + startup["httpGet"]["path"], timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(started, timeout=startup["periodSeconds"] * startup["failureThreshold"],
             interval=startup["periodSeconds"], what="the startup probe")  # fmt: skip
    try:
        yield RunningApp(base_url, container)
    finally:
        release_port(port)


def test_the_probes_answer_in_the_pod(pod: Pod, app: RunningApp) -> None:
    app_container = pod.container("app")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        path = app_container[probe]["httpGet"]["path"]
        response = httpx.get(app.url + path, timeout=app_container[probe]["timeoutSeconds"])
        assert response.status_code == 200, (probe, response.text)


def test_one_process_serves_with_its_own_metrics(app: RunningApp) -> None:
    """No --workers: uvicorn runs in the container's only process, and /metrics works
    without prometheus_client's multiprocess directory."""
    processes = app.container.top()["Processes"]
    assert len(processes) == 1, processes
    assert "uvicorn" in " ".join(processes[0])
    created = httpx.post(app.url + "/api/items", json={"name": "pod", "price": "1.00"}, timeout=10)
    assert created.status_code == 201
    metrics = httpx.get(app.url + "/metrics", timeout=5).text
    assert 'berth_http_requests_total{method="POST",route="/api/items",status="201"} 1.0' in metrics


def test_the_pod_runs_as_the_manifest_says(app: RunningApp) -> None:
    running = app.container
    assert running.exec_run(["id", "-u"]).output.decode().strip() == "10001"
    denied = running.exec_run(["touch", "/app/written"])
    assert denied.exit_code != 0
    assert b"Read-only file system" in denied.output
    effective = running.exec_run(["grep", "CapEff", "/proc/1/status"]).output.decode()
    assert effective.split()[1] == "0000000000000000"


def test_termination_finishes_requests_in_flight(pod: Pod, app: RunningApp, database: int) -> None:
    """SIGTERM (the kubelet sends it after the preStop pause) with requests in flight: they
    all finish, and the process exits 0 within the grace period left after the pause."""
    spec = pod.spec
    grace = spec["terminationGracePeriodSeconds"]
    pre_stop = pod.container("app")["lifecycle"]["preStop"]["sleep"]["seconds"]
    item = httpx.post(app.url + "/api/items", json={"name": "held", "price": "1.00"}, timeout=10)
    item_id = item.json()["id"]

    def hold_the_row() -> None:
        with pod.connect(database) as locker:
            locker.execute("BEGIN")
            locker.execute("SELECT 1 FROM items WHERE id = %s FOR UPDATE", (item_id,))
            time.sleep(4)
            locker.execute("COMMIT")

    locker = Thread(target=hold_the_row)
    locker.start()
    in_flight = 4

    def patch(number: int) -> int:
        response = httpx.patch(
            f"{app.url}/api/items/{item_id}", json={"price": f"{number}.00"}, timeout=30
        )
        return response.status_code

    with pod.connect(database) as observer, ThreadPoolExecutor(max_workers=in_flight) as threads:
        results = [threads.submit(patch, number) for number in range(in_flight)]

        def waiting() -> bool:
            row = observer.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            ).fetchone()
            return row is not None and row[0] == in_flight

        wait_for(waiting, timeout=10, what="the PATCHes to wait on the row lock")
        running = app.container
        stopping = time.monotonic()
        running.stop(timeout=grace - pre_stop)
        stop_seconds = time.monotonic() - stopping
        statuses = [result.result() for result in results]
    locker.join()

    assert statuses == [200] * in_flight
    running.reload()
    assert running.attrs["State"]["ExitCode"] == 0
    assert stop_seconds < grace - pre_stop
    assert b"lifespan shutdown complete" in running.logs()


def test_the_production_configuration_passes_preflight(tmp_path: Path, test_image: None) -> None:
    """The production overlay's settings (a real DOMAIN: production mode) are accepted by
    the app's own preflight, run in the image as the init container runs."""
    objects = parse(kustomize(prepare_tree(tmp_path) / "overlays" / "production"))
    client = docker.from_env()
    network = client.networks.create(f"berth-kubernetes-{uuid.uuid4().hex[:8]}")
    pod = Pod(objects=objects, network=network, workdir=tmp_path, started=[])
    try:
        preflight = pod.run("preflight", detach=False)
        domain = config_data(objects)["DOMAIN"]
        assert f"configuration ok, production (DOMAIN={domain}) mode" in preflight.logs().decode()
    finally:
        for container in pod.started:
            container.remove(force=True, v=True)
        network.remove()
