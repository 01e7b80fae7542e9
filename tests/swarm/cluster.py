"""A real three-node Docker Swarm on this machine, built for a test run and removed after it.

Each node is a `$DIND_IMAGE` container (a whole Docker Engine) on a bridge network of the
run's own; a `$REGISTRY_IMAGE` container on that network is the registry the nodes pull
from. The outer engine pushes to it through a port published on 127.0.0.1 (Docker allows
plain HTTP to 127.0.0.0/8); the nodes reach it by its network alias, `registry:5000`,
allowed with `--insecure-registry`. Every object is named `berth-swarm-<run>-...`, and
`remove()` deletes each one, whatever state the run ended in.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial

import docker
from docker.models.containers import Container

from tests.stack.harness import free_port, release_port, wait_for

DIND_IMAGE = os.environ.get("DIND_IMAGE", "docker:dind")
REGISTRY_IMAGE = os.environ.get("REGISTRY_IMAGE", "registry:2")
REGISTRY = "registry:5000"  # how the nodes name the registry
# `--privileged` fails on this engine (it cannot grant CAP_SYS_RESOURCE); these flags give a
# node what an inner engine needs (../shared/sandbox/README.md).
NODE_FLAGS = (
    "--cap-add=ALL", "--cap-drop=SYS_RESOURCE", "--security-opt=seccomp=unconfined",
    "--security-opt=apparmor=unconfined", "--security-opt=systempaths=unconfined",
)  # fmt: skip
NODE_MEMORY = "2g"  # a bound per node, so a runaway task cannot take the shared machine


@dataclass
class Node:
    name: str  # the Swarm node's hostname
    container: Container
    address: str  # on the run's network, reachable from this machine

    @property
    def docker_host(self) -> str:
        return f"tcp://{self.address}:2375"

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.docker_host, timeout=60)


@dataclass
class Cluster:
    """One manager and two workers. `start()` builds it; `remove()` always runs after."""

    workers: int = 2
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.prefix = f"berth-swarm-{self.run}"
        self.outer = docker.from_env()
        self.registry_port = 0
        # Names, recorded before each container is created: a creation that fails half way
        # still leaves something for remove() to find.
        self._containers: list[str] = []
        self._network: docker.models.networks.Network | None = None

    # -- building and removing ------------------------------------------------------------
    def start(self) -> Cluster:
        self._network = self.outer.networks.create(
            self.prefix, driver="bridge", labels={"berth.test": "swarm"}
        )
        self.registry_port = free_port()
        self._containers.append(f"{self.prefix}-registry")
        registry = self.outer.containers.run(
            REGISTRY_IMAGE,
            name=f"{self.prefix}-registry",
            detach=True,
            ports={"5000/tcp": ("127.0.0.1", self.registry_port)},
            labels={"berth.test": "swarm"},
        )
        self._network.connect(registry, aliases=["registry"])
        names = ["manager", *(f"worker{number}" for number in range(1, self.workers + 1))]
        containers = [self._start_node(name) for name in names]
        self.nodes = [
            Node(name, container, self._address(container))
            for name, container in zip(names, containers, strict=True)
        ]
        for node in self.nodes:
            wait_for(partial(self._engine_up, node), timeout=90, what=f"{node.name}'s engine")
        self._form_swarm()
        wait_for(self._registry_up, timeout=30, what="the registry")
        return self

    def _start_node(self, name: str) -> Container:
        # The Docker CLI, not docker-py: `systempaths=unconfined` is a CLI option (it clears
        # the masked and read-only /proc paths) that docker-py cannot express.
        node = f"{self.prefix}-{name}"
        self._containers.append(node)
        subprocess.run(
            ["docker", "run", "--detach", "--name", node, "--hostname", name,
             "--network", self.prefix, "--memory", NODE_MEMORY, "--label", "berth.test=swarm",
             "--env", f"DOCKERD_ARGS=--insecure-registry {REGISTRY}",
             *NODE_FLAGS, DIND_IMAGE],
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        return self.outer.containers.get(node)

    def _address(self, container: Container) -> str:
        container.reload()
        address: str = container.attrs["NetworkSettings"]["Networks"][self.prefix]["IPAddress"]
        return address

    @staticmethod
    def _engine_up(node: Node) -> bool:
        try:
            return bool(node.client().ping())
        except Exception:
            return False

    def _registry_up(self) -> bool:
        result = subprocess.run(
            ["curl", "-fsS", f"http://127.0.0.1:{self.registry_port}/v2/"],
            capture_output=True,
            check=False,
            timeout=10,
        )
        return result.returncode == 0

    def _form_swarm(self) -> None:
        manager = self.manager.client()
        manager.swarm.init(advertise_addr=self.manager.address, listen_addr="0.0.0.0:2377")
        token = manager.swarm.attrs["JoinTokens"]["Worker"]
        for node in self.workers_nodes:
            node.client().swarm.join(
                remote_addrs=[f"{self.manager.address}:2377"],
                join_token=token,
                advertise_addr=node.address,
            )
        wait_for(
            lambda: len(self.ready_nodes()) == len(self.nodes),
            timeout=60,
            what="every node to join the swarm",
        )

    def remove(self) -> None:
        """Remove nodes (with their engines' volumes), registry and network. Never raises."""
        for name in reversed(self._containers):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                self.outer.containers.get(name).remove(force=True, v=True)
        if self._network is not None:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                self._network.remove()
        if self.registry_port:
            release_port(self.registry_port)

    # -- using it -------------------------------------------------------------------------
    @property
    def manager(self) -> Node:
        return self.nodes[0]

    @property
    def workers_nodes(self) -> list[Node]:
        return self.nodes[1:]

    @property
    def gateway(self) -> str:
        """This machine's address on the cluster's network: what a node sees as the client
        of a request sent from here."""
        assert self._network is not None
        self._network.reload()
        gateway: str = self._network.attrs["IPAM"]["Config"][0]["Gateway"]
        return gateway

    def node(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)

    def ready_nodes(self) -> list[str]:
        nodes = self.manager.client().nodes.list()
        return [
            n.attrs["Description"]["Hostname"]
            for n in nodes
            if n.attrs["Status"]["State"] == "ready"
        ]

    def env(self) -> dict[str, str]:
        """What a Docker CLI needs to talk to the manager."""
        return {**os.environ, "DOCKER_HOST": self.manager.docker_host}

    def docker(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """The Docker CLI against the manager."""
        result = subprocess.run(
            ["docker", *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} exited {result.returncode}: {result.stderr}"
            )
        return result

    def push(self, image: str, repository: str) -> str:
        """Push a local image to the cluster's registry as `repository`; the name the nodes
        pull it by."""
        pushed = f"127.0.0.1:{self.registry_port}/{repository}"
        self.outer.images.get(image).tag(pushed)
        try:
            for line in self.outer.images.push(pushed, stream=True, decode=True):
                if "error" in line:
                    raise AssertionError(f"pushing {image}: {line['error']}")
        finally:
            self.outer.images.remove(pushed)
        return f"{REGISTRY}/{repository}"


@contextlib.contextmanager
def swarm_cluster(workers: int = 2) -> Iterator[Cluster]:
    """A running cluster, removed afterwards: on success, failure, or KeyboardInterrupt."""
    cluster = Cluster(workers=workers)
    try:
        yield cluster.start()
    finally:
        cluster.remove()
