"""Start the real Compose stack for a test, talk to it, look inside it, and remove it.

Each stack is its own Compose project (containers, networks, volumes), published on random
127.0.0.1 ports with its own proxy subnet, so it never collides with a dev stack or another
test's stack. `down -v` runs however the test ends (Ryuk is off here).
"""

from __future__ import annotations

import atexit
import io
import os
import random
import shutil
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import docker
import httpx
from docker.models.containers import Container
from testcontainers.compose import DockerCompose

ROOT = Path(__file__).resolve().parents[2]
OVERRIDES = ROOT / "tests" / "stack" / "compose"
# The app image every stack test runs, built once per session from this checkout. Two
# checkouts testing at once on one engine (worktrees, helpers) set BERTH_TEST_IMAGE apart.
TEST_IMAGE = os.environ.get("BERTH_TEST_IMAGE", "berth-test-app")
# The database image (backup/Dockerfile), built beside it.
TEST_DB_IMAGE = f"{TEST_IMAGE}-db"
T = TypeVar("T")
# Every test client reaches Traefik from one address (Docker's userland proxy on 127.0.0.1,
# or the test process), so the per-client edge limits would count a whole test as one
# client: lifted for the tests, never reached; test_edge_limits.py sets its own.
LIFTED_EDGE_LIMITS = {
    "EDGE_RATE_LIMIT_AVERAGE": "100000",
    "EDGE_RATE_LIMIT_BURST": "100000",
    "EDGE_INFLIGHT_LIMIT": "10000",
}
# What a fresh clone has: the working tree without local state, caches or bench results.
# Never part of a copy, tracked or not: the benchmark results are history, not the stack.
NOT_COPIED = ("bench/results/",)
# Without git (a tarball of the project), what a fresh clone would not have.
NOT_IN_A_CHECKOUT = shutil.ignore_patterns(
    ".git",
    ".venv",
    "__pycache__",
    ".*_cache",
    ".hypothesis",
    ".schemathesis",
    "test-output",
    ".berth",
    ".env",
    "results",
    "secrets",
)


def copy_checkout(destination: Path) -> Path:
    """A copy of this repository as a fresh clone would have it, at `destination`: the files
    git tracks and the new ones it does not ignore, as they are in the working tree, so
    uncommitted edits are tested too, and local state (.env, secrets/, caches) never is."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=False,
    )  # fmt: skip
    if listed.returncode != 0:  # not a git checkout
        shutil.copytree(ROOT, destination, ignore=NOT_IN_A_CHECKOUT)
        return destination
    for name in filter(None, listed.stdout.split(b"\0")):
        relative = os.fsdecode(name)
        source = ROOT / relative
        if relative.startswith(NOT_COPIED) or not source.is_file():  # deleted, not committed
            continue
        (destination / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination / relative, follow_symlinks=False)
    return destination


# Ports for test stacks come from below the kernel's ephemeral range, where nothing gets a
# port without asking for that number; a reservation file per port keeps two stacks, in
# this run or in a parallel one, from ever being handed the same one.
PORT_RESERVATIONS = Path(tempfile.gettempdir()) / "berth-test-ports"
PORT_RANGE = range(20_000, 32_000)
_reserved_here: set[int] = set()


def free_port() -> int:
    """A 127.0.0.1 port reserved for this process until `release_port` (or its exit)."""
    PORT_RESERVATIONS.mkdir(exist_ok=True)
    for port in random.sample(PORT_RANGE, 200):
        claim = PORT_RESERVATIONS / str(port)
        if claim.exists() and not _owner_gone(claim):
            continue
        claim.unlink(missing_ok=True)
        try:
            descriptor = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue  # another process claimed it just now
        with os.fdopen(descriptor, "w") as owner:
            owner.write(str(os.getpid()))
        if _bindable(port):
            _reserved_here.add(port)
            return port
        claim.unlink(missing_ok=True)
    raise RuntimeError(f"no free port in {PORT_RANGE} after 200 tries")


def release_port(port: int) -> None:
    if port in _reserved_here:
        _reserved_here.discard(port)
        (PORT_RESERVATIONS / str(port)).unlink(missing_ok=True)


@atexit.register
def _release_all() -> None:
    for port in list(_reserved_here):
        release_port(port)


def _owner_gone(claim: Path) -> bool:
    try:
        os.kill(int(claim.read_text() or "0"), 0)
    except (ProcessLookupError, ValueError):
        return True
    except (PermissionError, FileNotFoundError):
        return False
    return False


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def parse_docker_time(value: str) -> float:
    """Docker's RFC 3339 timestamps carry nanoseconds, which fromisoformat can't take."""
    head, _, fraction = value.rstrip("Z").partition(".")
    seconds = datetime.fromisoformat(head + "+00:00").timestamp()
    return seconds + float(f"0.{fraction or 0}")


def wait_for(
    probe: Callable[[], T | None], *, timeout: float, interval: float = 0.2, what: str = ""
) -> T:
    """Poll until `probe` returns something truthy; bounded by `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout}s waiting for {what or probe}")
        time.sleep(interval)


_handed_out: set[str] = set()
SERVICE_LABEL = "com.docker.compose.service"


def free_subnet() -> str:
    """A /24 for a stack's proxy network that no Docker network uses and no stack of this
    run was given: a random pick collided now and then ("Pool overlaps")."""
    in_use = {
        config["Subnet"]
        for network in docker.from_env().networks.list()
        for config in (network.attrs.get("IPAM") or {}).get("Config") or []
        if "Subnet" in config
    }
    candidates = [f"10.213.{third}.0/24" for third in range(1, 255)]
    subnet = random.choice([c for c in candidates if c not in in_use | _handed_out])
    _handed_out.add(subnet)
    return subnet


@dataclass
class Stack:
    workdir: Path
    overrides: Sequence[str] = ()
    # The project's own overlays (compose.dev.yaml, compose.demo.yaml), and where it is.
    files: Sequence[str] = ("compose.yaml",)
    root: Path = ROOT
    env: dict[str, str] = field(default_factory=dict)
    project: str = field(default_factory=lambda: f"berth-t{uuid.uuid4().hex[:8]}")

    def __post_init__(self) -> None:
        self.http_port = free_port()
        self.https_port = free_port()
        self.subnet = free_subnet()
        self.domain = self.env.get("DOMAIN", "localhost")
        settings = {
            "COMPOSE_PROJECT_NAME": self.project,
            "APP_IMAGE": TEST_IMAGE,
            "APP_TAG": "latest",
            "DB_IMAGE": TEST_DB_IMAGE,
            "DB_TAG": "latest",
            "PUBLISH_ADDRESS": "127.0.0.1",
            "HTTP_PORT": str(self.http_port),
            "HTTPS_PORT": str(self.https_port),
            "PROXY_SUBNET": self.subnet,
            **LIFTED_EDGE_LIMITS,
            **self.env,
        }
        self.settings = settings
        self.env_file = self.workdir / f"{self.project}.env"
        self._write_env()
        files = [*self.files, *(str(OVERRIDES / name) for name in self.overrides)]
        self.compose = DockerCompose(
            self.root, compose_file_name=files, env_file=str(self.env_file), wait=True
        )
        self.docker = docker.from_env()

    def _write_env(self) -> None:
        lines = (f"{key}={value}\n" for key, value in self.settings.items())
        self.env_file.write_text("".join(lines))

    def set_env(self, **changes: str) -> None:
        """Change the stack's .env, as an operator editing it between two `up`s would."""
        self.settings.update(changes)
        self.env.update(changes)
        self._write_env()

    # -- lifecycle ---------------------------------------------------------------------
    def up(
        self, *services: str, wait: bool = True, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        args = ["up", "--detach", *(["--wait"] if wait else []), *services]
        result = self.run(*args, check=check, timeout=300)
        if wait and not services and result.returncode == 0:
            self.wait_routed()
        return result

    def wait_routed(self) -> None:
        """Right after `up --wait`, Traefik may still answer 404 for about a second while it
        processes Docker's events; wait until it routes to the app."""
        with self.client(timeout=5) as client:

            def routed() -> bool:
                try:
                    return client.get("/health/live").status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(routed, timeout=30, interval=0.1, what="Traefik to route to the app")

    def down(self) -> None:
        self.run(
            "down", "--volumes", "--remove-orphans", "--timeout", "10", check=False, timeout=180
        )
        self.env_file.unlink(missing_ok=True)
        release_port(self.http_port)
        release_port(self.https_port)

    def run(
        self, *args: str, check: bool = True, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Any `docker compose` command against this stack."""
        result = subprocess.run(
            [*self.compose.compose_command_property, *args],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            input=input,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"docker compose {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    # -- talking to it -------------------------------------------------------------------
    def client(self, *, timeout: float = 10, **options: Any) -> httpx.Client:
        """HTTPS through Traefik on 127.0.0.1, with the Host the router expects."""
        options.setdefault("verify", False)
        return httpx.Client(
            base_url=f"https://127.0.0.1:{self.https_port}",
            headers={"Host": self.domain},
            timeout=timeout,
            **options,
        )

    def psql(self, sql: str, *, check: bool = True) -> str:
        """Run SQL as the app's database user inside the db container; rows as text."""
        user = self.env.get("POSTGRES_USER", "berth")
        database = self.env.get("POSTGRES_DB", "berth")
        result = self.run(
            "exec", "-T", "db", "psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1",
            "-U", user, "-d", database, "-c", sql, check=check,
        )  # fmt: skip
        return result.stdout.strip()

    # -- looking inside ------------------------------------------------------------------
    def containers(self, service: str) -> list[Container]:
        found: list[Container] = self.docker.containers.list(
            all=True,
            filters={
                "label": [
                    f"com.docker.compose.project={self.project}",
                    f"com.docker.compose.service={service}",
                ]
            },
        )
        return found

    def container(self, service: str) -> Container:
        found = self.containers(service)
        assert len(found) == 1, f"expected one {service} container, found {len(found)}"
        found[0].reload()
        return found[0]

    def state(self, service: str) -> dict[str, Any]:
        state: dict[str, Any] = self.container(service).attrs["State"]
        return state

    def logs(self, service: str) -> str:
        return self.run("logs", "--no-log-prefix", "--no-color", service).stdout

    def watch_health(self) -> ContainerEvents:
        """Collect this stack's container events from now on, as they happen."""
        return ContainerEvents(self).start()

    def health_events(
        self, service: str, since: float, until: float
    ) -> Iterator[tuple[float, str]]:
        """(time, status) of each health_status event of the service's containers.

        Only for a moment a few seconds back: Docker answers `since` from the last 256
        events it keeps, engine-wide, and every healthcheck probe adds three (exec create,
        start, die). On a busy engine, a stack's start-up is gone within a minute; use
        `watch_health` from before the moment instead."""
        ids = {container.id for container in self.containers(service)}
        events = self.docker.events(
            since=int(since) - 1,
            until=int(until) + 1,
            filters={"event": "health_status", "type": "container"},
            decode=True,
        )
        for event in events:
            if event.get("id") in ids:
                yield event["timeNano"] / 1e9, event["status"].split(":", 1)[1].strip()


class ContainerEvents:
    """Records a stack's container events as they happen. Docker answers a query for past
    events from the last 256 only, which a busy engine (every healthcheck run is three
    events) overwrites within seconds."""

    def __init__(self, stack: Stack) -> None:
        self.events: list[dict[str, Any]] = []
        self._stream = stack.docker.events(
            decode=True,
            filters={"type": "container", "label": f"com.docker.compose.project={stack.project}"},
        )
        self._thread = threading.Thread(target=self._record, daemon=True)

    def _record(self) -> None:
        try:
            for event in self._stream:
                if not str(event.get("Action", "")).startswith("exec_"):
                    self.events.append(event)
        except Exception:  # the stream ends, one way or another, when it is closed
            return

    def start(self) -> ContainerEvents:
        self._thread.start()
        return self

    def __enter__(self) -> ContainerEvents:
        return self if self._thread.is_alive() else self.start()

    def __exit__(self, *_: object) -> None:
        time.sleep(0.5)  # the last events of the action are on their way
        self._stream.close()
        self._thread.join(timeout=10)

    def first(self, action: str, service: str) -> float:
        """When a container of `service` first had `action` ("health_status: healthy")."""
        for event in list(self.events):
            labels = event.get("Actor", {}).get("Attributes", {})
            if event.get("Action") == action and labels.get(SERVICE_LABEL) == service:
                return float(event["timeNano"]) / 1e9
        raise AssertionError(f"no {action!r} event for {service}")

    def health(self, service: str, status: str, after: float = 0.0) -> float | None:
        """When `service` first reported health `status` after `after`, if it has."""
        for event in list(self.events):
            labels = event.get("Actor", {}).get("Attributes", {})
            when = float(event["timeNano"]) / 1e9
            if (
                event.get("Action") == f"health_status: {status}"
                and labels.get(SERVICE_LABEL) == service
                and when > after
            ):
                return when
        return None

    def wait(self, service: str, status: str, after: float = 0.0, timeout: float = 30) -> float:
        """Until `service` reports health `status` after `after`; when it did."""
        return wait_for(
            lambda: self.health(service, status, after),
            timeout=timeout,
            interval=0.1,
            what=f"{service} to report {status}",
        )


def derived_image(
    image: str, base: str, version: str, *lines: str, files: dict[str, Path] | None = None
) -> None:
    """`image` = `base` plus a few Dockerfile lines, APP_VERSION set, and `files`
    (name: source) copied into the image at their names' paths under /app. Bare tags
    ("v1") name tags of TEST_IMAGE."""
    files = files or {}
    dockerfile = "\n".join(
        [f"FROM {qualified(base)}", *lines, f"ENV APP_VERSION={version}"]
        + [f"COPY {name} /app/{name}" for name in files]
    )
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        contents = {"Dockerfile": dockerfile.encode()}
        contents |= {name: source.read_bytes() for name, source in files.items()}
        for name, data in contents.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    docker.from_env().images.build(
        fileobj=context, custom_context=True, tag=qualified(image), rm=True
    )


def qualified(image: str) -> str:
    return image if ":" in image else f"{TEST_IMAGE}:{image}"


def build_test_image(root: Path = ROOT, image: str = TEST_IMAGE) -> None:
    """Build the app image and the database image from a checkout (this one, once per test
    session) as image:latest and image-db:latest."""
    env = {**os.environ, "APP_IMAGE": image, "APP_TAG": "latest",
           "DB_IMAGE": f"{image}-db", "DB_TAG": "latest"}  # fmt: skip
    if "RCLONE_IMAGE" not in env and "S3_IMAGE" in env:
        # The sandbox's S3 stand-in carries the rclone binary where rclone/rclone has it.
        env["RCLONE_IMAGE"] = env["S3_IMAGE"]
    subprocess.run(
        ["docker", "compose", "--env-file", os.devnull, "build", "--quiet", "app", "db"],
        cwd=root,
        env=env,
        check=True,
        timeout=900,
    )
