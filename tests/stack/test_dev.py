"""The dev stack (compose.dev.yaml) from a copy of the repository: an edit under app/ is
served over HTTPS within seconds with no rebuild, Postgres is on 127.0.0.1 only, and
running the tests never touches its data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from app.settings import DEV_POSTGRES_PASSWORD
from tests.stack.harness import ROOT, Stack, free_port, wait_for

RELOAD_BOUND_SECONDS = 10
# What a fresh clone has: the working tree without local state or caches.
NOT_IN_A_CHECKOUT = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", ".*_cache", "test-output", ".berth", ".env"
)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("checkout") / "berth"
    shutil.copytree(ROOT, copy, ignore=NOT_IN_A_CHECKOUT)
    return copy


@pytest.fixture(scope="module")
def dev(stack_factory: Callable[..., Stack], checkout: Path) -> Stack:
    stack = stack_factory(
        files=("compose.yaml", "compose.dev.yaml"), root=checkout, DEV_DB_PORT=str(free_port())
    )
    stack.up()
    return stack


def version_answer(stack: Stack) -> str | None:
    with stack.client(timeout=5) as client:
        response = client.get("/api/version")
        return str(response.json()["version"]) if response.status_code == 200 else None


def test_an_edit_is_served_within_seconds_without_a_rebuild(dev: Stack, checkout: Path) -> None:
    before = dev.container("app")
    assert version_answer(dev) == "latest"

    route = checkout / "app" / "api" / "version.py"
    route.write_text(
        route.read_text().replace(
            "return Version(version=request.app.version)",
            'return Version(version="edited while running")',
        )
    )
    edited_at = time.monotonic()
    wait_for(
        lambda: version_answer(dev) == "edited while running",
        timeout=RELOAD_BOUND_SECONDS,
        interval=0.1,
        what="the edited route over HTTPS",
    )
    served_after = time.monotonic() - edited_at

    after = dev.container("app")
    assert after.id == before.id  # not recreated
    assert after.image.id == before.image.id  # not rebuilt
    assert after.attrs["State"]["StartedAt"] == before.attrs["State"]["StartedAt"]
    assert "StatReload detected changes in 'app/api/version.py'" in dev.logs("app")
    print(f"edit served after {served_after:.2f}s")


def test_dev_postgres_listens_on_localhost_only(dev: Stack) -> None:
    bindings = dev.container("db").attrs["NetworkSettings"]["Ports"]["5432/tcp"]
    assert bindings == [{"HostIp": "127.0.0.1", "HostPort": dev.env["DEV_DB_PORT"]}]


def test_dev_logs_at_debug_level(dev: Stack) -> None:
    assert '"level": "DEBUG", "logger": "berth", "message": "database pool per worker"' in (
        dev.logs("app")
    )


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
    unit_tests = [sys.executable, "-m", "pytest", "tests/unit/test_items.py", "-q"]
    result = subprocess.run(
        [*unit_tests, "-p", "no:cacheprovider"],
        cwd=ROOT, env=shell, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    assert dev.psql("SELECT count(*) FROM items WHERE name = 'dev sentinel'") == "1"
    assert dev.psql("SELECT count(*) FROM items") == rows_before


def test_production_stack_is_untouched_by_the_dev_overlay(
    stack_factory: Callable[..., Stack],
) -> None:
    config = stack_factory().run("config", "--format", "json").stdout
    assert "--reload" not in config
    assert '"internal": true' in config
    assert "127.0.0.1:" not in config  # nothing published on a dev port
