"""The dev stack (compose.dev.yaml) from a copy of the repository: an edit under app/ is
served over HTTPS within seconds with no rebuild, a dependency change rebuilds the image,
Postgres is on 127.0.0.1 only, and running the tests never touches its data."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from berth.settings import DEV_POSTGRES_PASSWORD
from tests.stack.deploying import version_answer
from tests.stack.faults import report
from tests.stack.harness import ROOT, TEST_IMAGE, Stack, copy_checkout, free_port, wait_for
from tests.stack.service import example_only

# Guards that a reload or rebuild happens at all, not speed claims: the README's timings are
# one run's measurements, recorded in the fault report (see tests/stack/faults.py).
RELOAD_BOUND_SECONDS = 30
REBUILD_BOUND_SECONDS = 180


def fresh_checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_checkout(tmp_path_factory.mktemp("checkout") / "berth")


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fresh_checkout(tmp_path_factory)


def api_title(stack: Stack) -> str | None:
    """The title in the OpenAPI document served through Traefik."""
    try:
        with stack.client(timeout=5) as client:
            response = client.get("/openapi.json")
    except httpx.TransportError:  # uvicorn restarting the worker after the edit
        return None
    return str(response.json()["info"]["title"]) if response.status_code == 200 else None


@pytest.fixture(scope="module")
def dev(stack_factory: Callable[..., Stack], checkout: Path) -> Stack:
    stack = stack_factory(
        files=("compose.yaml", "compose.dev.yaml"), root=checkout, DEV_DB_PORT=str(free_port())
    )
    stack.up()
    return stack


def test_an_edit_is_served_within_seconds_without_a_rebuild(dev: Stack, checkout: Path) -> None:
    before = dev.container("app")
    assert api_title(dev) == "Berth"

    entry_point = checkout / "app" / "main.py"  # the service's own code
    entry_point.write_text(
        entry_point.read_text().replace('title="Berth"', 'title="Edited while running"')
    )
    edited_at = time.monotonic()
    wait_for(
        lambda: api_title(dev) == "Edited while running",
        timeout=RELOAD_BOUND_SECONDS,
        interval=0.1,
        what="the edited app over HTTPS",
    )
    served_after = time.monotonic() - edited_at

    after = dev.container("app")
    assert after.id == before.id  # not recreated
    assert after.image.id == before.image.id  # not rebuilt
    assert after.attrs["State"]["StartedAt"] == before.attrs["State"]["StartedAt"]
    assert "StatReload detected changes in 'app/main.py'" in dev.logs("app")
    report("dev: an edit served", seconds=round(served_after, 2))


@pytest.fixture
def own_image() -> Iterator[str]:
    """An app image name of the test's own, so a rebuild never replaces the image that
    every other stack test runs."""
    client = docker.from_env()
    name = f"berth-dev-rebuild-{uuid.uuid4().hex[:8]}"
    client.images.get(f"{TEST_IMAGE}:latest").tag(name, "latest")
    yield name
    # By name: the first image under it is also the shared test image, which stays.
    with contextlib.suppress(docker.errors.ImageNotFound):
        client.images.remove(f"{name}:latest")


class Watcher:
    """`docker compose watch` in the background, its output collected."""

    def __init__(self, stack: Stack) -> None:
        command = [*stack.compose.compose_command_property, "watch", "--no-up", "app"]
        self.process = subprocess.Popen(
            command, cwd=stack.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.output: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)

    def text(self) -> str:
        return "".join(self.output)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
        self.reader.join(timeout=5)


def add_dependency(checkout: Path, requirement: str, workdir: Path) -> None:
    """Add a dependency as a developer would (edit pyproject.toml, `uv lock`), then put
    both files in place together, so the watcher never builds a stale lock."""
    workdir.mkdir()
    pyproject = (checkout / "pyproject.toml").read_text()
    marker = '"httptools>=0.6",'
    assert marker in pyproject
    (workdir / "pyproject.toml").write_text(
        pyproject.replace(marker, f'{marker}\n    "{requirement}",')
    )
    shutil.copy(checkout / "uv.lock", workdir / "uv.lock")
    subprocess.run(["uv", "lock", "--quiet"], cwd=workdir, check=True, timeout=300)
    for name in ("pyproject.toml", "uv.lock"):
        os.replace(workdir / name, checkout / name)


def imports(stack: Stack, module: str) -> bool:
    command = ("exec", "-T", "app", "python", "-c", f"import {module}")
    return stack.run(*command, check=False).returncode == 0


def test_a_dependency_change_rebuilds_the_image(
    stack_factory: Callable[..., Stack],
    tmp_path_factory: pytest.TempPathFactory,
    own_image: str,
) -> None:
    copy = fresh_checkout(tmp_path_factory)
    stack = stack_factory(
        files=("compose.yaml", "compose.dev.yaml"), root=copy,
        APP_IMAGE=own_image, DEV_DB_PORT=str(free_port()),
    )  # fmt: skip
    stack.up()
    before = stack.container("app")
    assert not imports(stack, "six")

    watcher = Watcher(stack)
    try:
        wait_for(lambda: "Watch enabled" in watcher.text(), timeout=30, what="the watcher")
        changed_at = time.monotonic()
        add_dependency(copy, "six>=1.16", tmp_path_factory.mktemp("lock") / "edit")

        def rebuilt_and_serving() -> bool:
            try:
                (app,) = stack.containers("app")
                app.reload()
            except (ValueError, docker.errors.NotFound):  # mid-swap: none, or two
                return False
            try:
                return (
                    app.id != before.id
                    and app.attrs["State"].get("Health", {}).get("Status") == "healthy"
                    and imports(stack, "six")
                    and version_answer(stack) == "latest"
                )
            except httpx.TransportError:  # Traefik mid-swap between the two containers
                return False

        try:
            wait_for(rebuilt_and_serving, timeout=REBUILD_BOUND_SECONDS, interval=1)
        except TimeoutError:
            pytest.fail(f"no rebuilt app serving; `compose watch` said:\n{watcher.text()}")
        rebuilt_after = time.monotonic() - changed_at
        after = stack.container("app")
        assert after.image.id != before.image.id
        report("dev: a dependency added and served", seconds=round(rebuilt_after, 1))
    finally:
        watcher.stop()
        stack.down()  # before own_image's clean-up: a running container holds its image


def test_dev_postgres_listens_on_localhost_only(dev: Stack) -> None:
    bindings = dev.container("db").attrs["NetworkSettings"]["Ports"]["5432/tcp"]
    assert bindings == [{"HostIp": "127.0.0.1", "HostPort": dev.env["DEV_DB_PORT"]}]


def test_dev_logs_at_debug_level(dev: Stack) -> None:
    assert '"level": "DEBUG", "logger": "berth", "message": "database pool per worker"' in (
        dev.logs("app")
    )


@example_only  # the example's table and its unit tests
def test_running_the_tests_never_touches_dev_data(dev: Stack) -> None:
    """The unit tests empty the items table after each test: were they pointed at the dev
    database, by the variables a developer has in their shell, the sentinel would go."""
    dev.psql("INSERT INTO items (name, price) VALUES ('dev sentinel', 1)")
    rows_before = dev.psql("SELECT count(*) FROM items")
    shell = {
        **os.environ,
        "POSTGRES_HOST": "127.0.0.1",
        "POSTGRES_PORT": dev.env["DEV_DB_PORT"],
        "POSTGRES_PASSWORD": DEV_POSTGRES_PASSWORD,
        "COMPOSE_PROJECT_NAME": dev.project,
    }
    unit_tests = [sys.executable, "-m", "pytest", "tests/unit/app/test_items.py", "-q"]
    result = subprocess.run(
        [*unit_tests, "-p", "no:cacheprovider"],
        cwd=ROOT, env=shell, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    assert dev.psql("SELECT count(*) FROM items WHERE name = 'dev sentinel'") == "1"
    assert dev.psql("SELECT count(*) FROM items") == rows_before


def published(config: dict[str, Any]) -> dict[str, set[tuple[str, int]]]:
    """{service: {(host address, container port)}} for every port a config publishes."""
    return {
        name: {(port.get("host_ip", "0.0.0.0"), port["target"]) for port in service["ports"]}
        for name, service in config["services"].items()
        if service.get("ports")
    }


def test_production_stack_is_untouched_by_the_dev_overlay(
    stack_factory: Callable[..., Stack],
) -> None:
    stack = stack_factory()
    production = json.loads(stack.run("config", "--format", "json").stdout)
    assert "--reload" not in production["services"]["app"]["command"]
    assert production["networks"]["backend"]["internal"] is True
    # Only Traefik publishes anything, and only HTTP and HTTPS: no database port.
    assert published(production) == {"traefik": {("127.0.0.1", 80), ("127.0.0.1", 443)}}
    # The same check on the dev overlay finds what it adds.
    dev = json.loads(stack.run("-f", "compose.dev.yaml", "config", "--format", "json").stdout)
    assert published(dev)["db"] == {("127.0.0.1", 5432)}
    assert "--reload" in dev["services"]["app"]["command"]
    assert not dev["networks"]["backend"].get("internal")
