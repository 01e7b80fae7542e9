"""scripts/deploy under load: zero failed requests for a new version, a version that never
turns healthy, a failing migration, and a rollback; the naive redeploy for comparison."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import docker
import pytest

from tests.stack.deploying import (
    FIXTURES,
    Deploy,
    app_ids,
    deploy_script,
    record,
    serving,
    sigterm_times,
    under_load,
    version_answer,
    versions,
)
from tests.stack.harness import TEST_IMAGE, Stack, derived_image, wait_for

# Deploys point <repository>:latest at what they deployed: a repository of their own keeps
# that from changing the image every other test module runs.
REPOSITORY = f"{TEST_IMAGE}-deploy"


@pytest.fixture(scope="module")
def images(test_image: None) -> Iterator[None]:
    sku, failing = "0002_add_item_sku.py", "0003_fails_halfway.py"
    migrations = "migrations/versions"
    derived_image(f"{REPOSITORY}:v1", "latest", "v1")
    derived_image(
        f"{REPOSITORY}:v2", f"{REPOSITORY}:v1", "v2", files={f"{migrations}/{sku}": FIXTURES / sku}
    )
    derived_image(f"{REPOSITORY}:v3", f"{REPOSITORY}:v2", "v3")
    derived_image(
        f"{REPOSITORY}:never-healthy",
        f"{REPOSITORY}:v2",
        "never-healthy",
        "USER root",
        "RUN printf 'raise SystemExit(\"broken on purpose\")\\n' > /app/berth/healthcheck.py",
        "USER berth:berth",
    )
    derived_image(
        f"{REPOSITORY}:bad-migration",
        f"{REPOSITORY}:v2",
        "bad-migration",
        files={f"{migrations}/{failing}": FIXTURES / failing},
    )
    yield
    client = docker.from_env()
    for image in client.images.list(REPOSITORY):
        for tag in image.tags:
            client.images.remove(tag, force=True)


@pytest.fixture(scope="module")
def stack(stack_factory: Callable[..., Stack], images: None) -> Stack:
    stack = stack_factory(APP_IMAGE=REPOSITORY)
    first = deploy_script(stack, "--tag", "v1")
    assert first.returncode == 0, first.stderr
    return stack


def test_a_new_version_deploys_with_zero_failed_requests(stack: Stack) -> None:
    assert serving(stack) == "v1"
    old = app_ids(stack)
    began = time.time()

    deploy = under_load(stack, lambda: deploy_script(stack, "--tag", "v2"))

    assert deploy.result.returncode == 0, deploy.result.stderr
    assert deploy.load.failures() == []
    seen = versions(deploy.load.outcomes)
    assert seen[0] == "v1"
    assert seen[-10:] == ["v2"] * 10  # traffic ends on the new version
    assert app_ids(stack).isdisjoint(old)
    # Traefik stopped routing to the old container before it got SIGTERM.
    stopped_at = min(sigterm_times(stack, old, began))
    last_old = max(o.started for o in deploy.load.outcomes if o.tag == "v1")
    assert last_old < stopped_at
    # The additive migration ran once, before the switch, and v1 kept working on it.
    assert stack.psql("SELECT version_num FROM alembic_version") == "0002"
    record("deploy: new version", deploy)


def assert_v2_kept_serving(stack: Stack, deploy: Deploy, before: set[str]) -> None:
    """A refused deploy: no failed request, v2 answered throughout, and the same
    containers serve afterwards."""
    assert deploy.result.returncode != 0
    assert deploy.load.failures() == []
    assert set(versions(deploy.load.outcomes)) == {"v2"}
    assert app_ids(stack) == before
    assert len(stack.containers("app")) == len(before)  # any new ones were removed


def test_a_version_that_never_turns_healthy_is_abandoned(stack: Stack) -> None:
    before = app_ids(stack)

    deploy = under_load(stack, lambda: deploy_script(stack, "--tag", "never-healthy"))

    assert_v2_kept_serving(stack, deploy, before)
    assert "never became healthy" in deploy.result.stderr
    assert "broken on purpose" in deploy.result.stderr
    assert serving(stack) == "v2"
    record("deploy: never healthy", deploy)


def test_a_failing_migration_changes_nothing(stack: Stack) -> None:
    before = app_ids(stack)

    deploy = under_load(stack, lambda: deploy_script(stack, "--tag", "bad-migration"))

    assert_v2_kept_serving(stack, deploy, before)
    assert "berth: migration failed: revision 0003 raised DataError" in deploy.result.stderr
    assert "nothing running was changed" in deploy.result.stderr
    assert stack.psql("SELECT version_num FROM alembic_version") == "0002"
    assert stack.psql("SELECT to_regclass('half_done') IS NULL") == "t"
    record("deploy: failing migration", deploy)


def test_rollback_returns_to_the_previous_version(stack: Stack) -> None:
    old = app_ids(stack)
    began = time.time()

    deploy = under_load(stack, lambda: deploy_script(stack, "--rollback"))

    assert deploy.result.returncode == 0, deploy.result.stderr
    assert "rolling back to v1" in deploy.result.stderr
    assert deploy.load.failures() == []
    assert versions(deploy.load.outcomes)[-10:] == ["v1"] * 10
    stopped_at = min(sigterm_times(stack, old, began))
    assert max(o.started for o in deploy.load.outcomes if o.tag == "v2") < stopped_at
    # The schema stays where it was: v1 runs on v2's expanded schema.
    assert stack.psql("SELECT version_num FROM alembic_version") == "0002"
    listed = deploy_script(stack, "--list").stdout.split("\n")
    assert "* v1" in listed
    record("deploy: rollback", deploy)


def test_the_naive_redeploy_drops_requests(stack: Stack) -> None:
    """For the record: `docker compose up -d` with a new image, under the same load."""

    stack.set_env(APP_TAG="v3")

    deploy = under_load(
        stack,
        lambda: stack.run("up", "--detach", check=False),
        done=lambda: wait_for(
            lambda: version_answer(stack) == "v3", timeout=60, what="v3 to serve"
        ),
    )

    assert deploy.result.returncode == 0, deploy.result.stderr
    record("deploy: naive docker compose up -d", deploy)
    assert deploy.load.failures(), "the naive redeploy was expected to drop requests"
