"""Shared by every test: a clean environment, so nothing in a developer's shell (a DOMAIN,
a COMPOSE_FILE, a password) leaks into the app under test or the stacks the tests start."""

from __future__ import annotations

import os
from collections.abc import Iterator

import docker
import docker.errors
import pytest

from berth.settings import Settings

# The *_IMAGE variables stay: they are how the sandbox swaps in local images.
LEAKY_PREFIXES = ("COMPOSE_", "ACME_", "TRAEFIK_", "EDGE_", "DEPLOY_", "BACKUP_")
LEAKY_NAMES = {
    "APP_IMAGE",
    "APP_TAG",
    "DB_IMAGE",
    "DB_TAG",
    "HTTP_PORT",
    "HTTPS_PORT",
    "PUBLISH_ADDRESS",
    "PROXY_SUBNET",
    "BERTH_STATE_DIR",
    *(name.upper() for name in Settings.model_fields),
    *(f"{name.upper()}_FILE" for name in Settings.model_fields),
}


@pytest.fixture(scope="session", autouse=True)
def clean_environment() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            leaky = name in LEAKY_NAMES or name.startswith(LEAKY_PREFIXES)
            if leaky and not name.endswith("_IMAGE"):
                patch.delenv(name)
        yield


def dangling_volumes() -> set[str] | None:
    """Volumes no container uses; None where no Docker engine answers."""
    try:
        client = docker.from_env()
        return {volume.name for volume in client.volumes.list(filters={"dangling": True})}
    except docker.errors.DockerException:
        return None


# (module, volumes) for each test module during which unused volumes appeared.
VOLUMES_LEFT: list[tuple[str, list[str]]] = []


@pytest.fixture(scope="module", autouse=True)
def no_volume_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test module removes what it started, pass or fail, the volumes its containers
    made included (an image's VOLUME with nothing mounted over it gets an anonymous one,
    which outlives a container removed without it). A volume no container uses that
    appeared during the module is reported at the end of the run, with the module: it may
    not be the module's own (the engine is shared), so it is never removed here, and no
    test fails for it."""
    before = dangling_volumes()
    yield
    after = dangling_volumes()
    if before is not None and after is not None and after - before:
        VOLUMES_LEFT.append((request.module.__name__, sorted(after - before)))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if VOLUMES_LEFT:
        terminalreporter.section("volumes left behind")
        for module, names in VOLUMES_LEFT:
            terminalreporter.line(f"{module}: {', '.join(names)}")
