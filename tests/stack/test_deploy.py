"""scripts/deploy under load: zero failed requests for a new version, a version that never
turns healthy, a failing migration, and a rollback; the naive redeploy for comparison."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterator

import docker
import pytest
from docker.models.containers import Container

from tests.stack import service
from tests.stack.deploying import (
    FIXTURES,
    Deploy,
    app_ids,
    deploy_script,
    finish,
    interrupted_deploy,
    record,
    serving,
    start_deploy,
    state_dir,
    under_load,
    version_answer,
    versions,
)
from tests.stack.harness import TEST_IMAGE, Stack, derived_image, free_subnet, wait_for

# These tests use the items example (a service generated without it skips them):
# v2's migration adds a column to the items table.
pytestmark = service.example_only

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
    # A release whose healthcheck never notices the drain flag, so it can never be drained.
    derived_image(
        f"{REPOSITORY}:no-drain",
        f"{REPOSITORY}:v2",
        "no-drain",
        "USER root",
        "RUN sed -i 's|/tmp/berth-draining|/tmp/berth-never-set|' /app/berth/healthcheck.py",
        "USER berth:berth",
    )
    yield
    client = docker.from_env()
    for image in client.images.list(REPOSITORY):
        for tag in image.tags:
            client.images.remove(tag, force=True)


MINIMUM_REQUESTS = 100  # under_load sends for 6 s and more: far fewer means the load broke


def assert_zero_failed(deploy: Deploy) -> None:
    """0 failed, whole: every client thread ran to its end and sent enough requests."""
    deploy.load.assert_no_failures(min_requests=MINIMUM_REQUESTS)


@pytest.fixture(scope="module")
def stack(stack_factory: Callable[..., Stack], images: None) -> Stack:
    stack = stack_factory(APP_IMAGE=REPOSITORY)
    first = deploy_script(stack, "--tag", "v1")
    assert first.returncode == 0, first.stderr
    return stack


def test_a_new_version_deploys_with_zero_failed_requests(stack: Stack) -> None:
    assert serving(stack) == "v1"
    old = app_ids(stack)

    deploy = under_load(stack, lambda: deploy_script(stack, "--tag", "v2"))

    assert deploy.result.returncode == 0, deploy.result.stderr
    assert_zero_failed(deploy)
    seen = versions(deploy.load.outcomes)
    assert seen[0] == "v1"
    assert seen[-10:] == ["v2"] * 10  # traffic ends on the new version
    assert app_ids(stack).isdisjoint(old)
    # Traefik stopped routing to the old container before it got SIGTERM: it was reported
    # unhealthy (so dropped), and the last request it answered had started, before that.
    stopped_at = min(deploy.times("kill", old))
    unhealthy_at = deploy.times("health_status: unhealthy", old)
    assert unhealthy_at, "the old container was never reported unhealthy"
    assert min(unhealthy_at) < stopped_at
    last_old = max(o.started for o in deploy.load.outcomes if o.tag == "v1")
    assert last_old < stopped_at
    # The additive migration ran once, before the switch, and v1 kept working on it.
    assert stack.psql("SELECT version_num FROM alembic_version") == "0002"
    record("deploy: new version", deploy)


def assert_v2_kept_serving(stack: Stack, deploy: Deploy, before: set[str]) -> None:
    """A refused deploy: no failed request, v2 answered throughout, and the same
    containers serve afterwards."""
    assert deploy.result.returncode != 0
    assert_zero_failed(deploy)
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


def test_a_refused_configuration_changes_nothing(stack: Stack) -> None:
    """An operator's bad edit of .env, then a deploy: migrate refuses it before connecting
    (scripts/deploy runs no preflight of its own when it migrates), and the running
    containers, started with the old configuration, keep serving."""
    before = app_ids(stack)
    previous = stack.settings.get("WEB_CONCURRENCY", "2")  # compose.yaml's default
    stack.set_env(WEB_CONCURRENCY="many")
    try:
        deploy = under_load(stack, lambda: deploy_script(stack, "--tag", "v3"))
    finally:
        stack.set_env(WEB_CONCURRENCY=previous)

    assert_v2_kept_serving(stack, deploy, before)
    assert "berth: configuration error: WEB_CONCURRENCY" in deploy.result.stderr
    assert "the configuration was refused for v3" in deploy.result.stderr
    assert stack.psql("SELECT version_num FROM alembic_version") == "0002"


def test_rollback_returns_to_the_previous_version(stack: Stack) -> None:
    old = app_ids(stack)

    deploy = under_load(stack, lambda: deploy_script(stack, "--rollback"))

    assert deploy.result.returncode == 0, deploy.result.stderr
    assert "rolling back to v1" in deploy.result.stderr
    assert_zero_failed(deploy)
    assert versions(deploy.load.outcomes)[-10:] == ["v1"] * 10
    stopped_at = min(deploy.times("kill", old))
    assert max(o.started for o in deploy.load.outcomes if o.tag == "v2") < stopped_at
    # The schema stays where it was: v1 runs on v2's expanded schema.
    assert stack.psql("SELECT version_num FROM alembic_version") == "0002"
    listed = deploy_script(stack, "--list").stdout.split("\n")
    assert "* v1" in listed
    record("deploy: rollback", deploy)


DRAIN_FLAG = "/tmp/berth-draining"  # inside the containers


def container_version(container: Container) -> str:
    variables = [str(item) for item in container.attrs["Config"]["Env"]]
    return [item.split("=", 1)[1] for item in variables if item.startswith("APP_VERSION=")][-1]


def assert_one_release_serving(stack: Stack, version: str, output: str = "") -> None:
    """Every app container runs `version`, healthy and not draining, `latest` names its
    image, and Traefik answers with it."""
    containers = stack.containers("app")
    assert containers, "no app container"
    for container in containers:
        container.reload()
        assert container.status == "running", container.name
        assert container_version(container) == version, f"{container.name}\n{output}"
        assert container.attrs["State"]["Health"]["Status"] == "healthy", container.name
        assert container.exec_run(["test", "-e", DRAIN_FLAG]).exit_code == 1, "left draining"
    latest = stack.docker.images.get(f"{REPOSITORY}:latest")
    assert {container.image.id for container in containers} == {latest.id}
    assert serving(stack) == version


def ensure_serving(stack: Stack, tag: str) -> None:
    """Tests below start from a known release, whatever ran before them."""
    if serving(stack) != tag:
        result = deploy_script(stack, "--tag", tag)
        assert result.returncode == 0, result.stderr


def history(stack: Stack) -> list[str]:
    return (state_dir(stack) / f"{stack.project}.releases").read_text().splitlines()


def test_a_long_release_history_is_bounded_and_pruned(stack: Stack) -> None:
    """`head` on a long history killed its writer with SIGPIPE under pipefail: the deploy
    failed after the switch, without saying done or pruning."""
    path = state_dir(stack) / f"{stack.project}.releases"
    # 50,000 releases from an older script: far more than a pipe holds, so a writer cut
    # off by `head` dies of SIGPIPE every time, not now and then.
    older = "".join(f"{1_700_000_000 + n} old-{n}\n" for n in range(50_000))
    path.write_text(older + path.read_text())
    derived_image(f"{REPOSITORY}:old-7", f"{REPOSITORY}:v1", "old-7")

    deploy = under_load(stack, lambda: deploy_script(stack, "--tag", "v2"))

    assert deploy.result.returncode == 0, deploy.result.stderr
    assert "deploy: done: " in deploy.result.stderr
    assert_zero_failed(deploy)
    kept = [line.split()[1] for line in history(stack)]
    assert kept == ["old-49997", "old-49998", "old-49999", "v1", "v2"]  # DEPLOY_KEEP=5
    assert not stack.docker.images.list(f"{REPOSITORY}:old-7")  # fell out of the window
    assert deploy_script(stack, "--list").stdout.splitlines()[:2] == ["* v2", "  v1"]


def test_a_second_deploy_at_once_refuses_with_one_line(stack: Stack) -> None:
    second: list[subprocess.CompletedProcess[str]] = []

    def two_deploys() -> subprocess.CompletedProcess[str]:
        first = start_deploy(stack, "--tag", "v3")

        def start_another(line: str) -> None:
            if "deploying" in line and not second:
                second.append(deploy_script(stack, "--tag", "v2"))

        return finish(first, start_another)

    deploy = under_load(stack, two_deploys)

    assert deploy.result.returncode == 0, deploy.result.stderr
    assert second[0].returncode == 1
    assert second[0].stderr.splitlines() == [
        f"deploy: error: another deploy of project {stack.project} is running "
        f"(pid {second[0].stderr.split('(pid ')[1].split(')')[0]}); nothing was changed, "
        "try again when it has finished"
    ]
    assert_zero_failed(deploy)
    assert_one_release_serving(stack, "v3")


@pytest.mark.parametrize(
    ("at", "signal_number", "whole_group", "then_serving"),
    [
        # Before the old containers get SIGTERM, an interruption rolls back...
        pytest.param("waiting for 1 new", signal.SIGINT, True, "v3", id="ctrl-c-in-health-wait"),
        pytest.param("waiting for 1 new", signal.SIGTERM, False, "v3", id="kill-in-health-wait"),
        pytest.param("draining", signal.SIGINT, True, "v3", id="ctrl-c-in-drain"),
        pytest.param("draining", signal.SIGTERM, False, "v3", id="kill-in-drain"),
        # ...and after, it finishes the switch.
        pytest.param("stopping the old", signal.SIGTERM, False, "v2", id="kill-in-stop"),
    ],
)
def test_an_interrupted_deploy_leaves_one_release_serving(
    stack: Stack, at: str, signal_number: int, whole_group: bool, then_serving: str
) -> None:
    ensure_serving(stack, "v3")
    before = app_ids(stack)

    deploy = under_load(
        stack,
        lambda: interrupted_deploy(
            stack, "--tag", "v2", at=at, signal_number=signal_number, whole_group=whole_group
        ),
    )

    assert deploy.result.returncode == 128 + signal_number, deploy.result.stderr
    assert_one_release_serving(stack, then_serving, deploy.result.stderr)
    assert_zero_failed(deploy)
    assert f"interrupted by {signal.Signals(signal_number).name}" in deploy.result.stderr
    if then_serving == "v3":
        assert app_ids(stack) == before
        assert "rolled back" in deploy.result.stderr
    assert deploy_script(stack, "--list").stdout.splitlines()[0] == f"* {then_serving}"
    record(f"deploy: interrupted ({at!r}, {signal.Signals(signal_number).name})", deploy)


def test_a_drain_that_fails_aborts_with_the_old_release_serving(stack: Stack) -> None:
    first = deploy_script(stack, "--tag", "no-drain")
    assert first.returncode == 0, first.stderr
    before = app_ids(stack)

    deploy = under_load(
        stack,
        lambda: deploy_script(stack, "--tag", "v3", settings={"DEPLOY_DRAIN_TIMEOUT": "5"}),
    )

    assert deploy.result.returncode == 1
    assert "the old containers still reported healthy after 5s" in deploy.result.stderr
    assert "rolling back" in deploy.result.stderr
    assert_zero_failed(deploy)
    assert set(versions(deploy.load.outcomes)) >= {"no-drain"}
    assert {c.id for c in stack.containers("app")} == before  # the new ones are gone
    assert_one_release_serving(stack, "no-drain")
    assert deploy_script(stack, "--list").stdout.splitlines()[0] == "* no-drain"
    record("deploy: drain fails", deploy)


def test_a_scale_up_that_fails_part_way_leaves_nothing_behind(
    stack_factory: Callable[..., Stack], images: None
) -> None:
    # A proxy network with 5 addresses: Traefik, two app containers and a filler take 4,
    # so of the two new app containers one starts and the other cannot.
    small = stack_factory(APP_IMAGE=REPOSITORY, PROXY_SUBNET=free_subnet().replace("/24", "/29"))
    assert deploy_script(small, "--tag", "v1").returncode == 0
    small.run("up", "--detach", "--wait", "--no-recreate", "--scale", "app=2", "app")
    old = app_ids(small)
    assert len(old) == 2
    filler = small.docker.containers.run(
        f"{REPOSITORY}:v1", ["python", "-c", "import time; time.sleep(300)"],
        name=f"{small.project}-deploy-filler", network=f"{small.project}_proxy", detach=True,
    )  # fmt: skip
    try:
        deploy = under_load(small, lambda: deploy_script(small, "--tag", "v2"))
    finally:
        filler.remove(force=True)

    assert deploy.result.returncode == 1, deploy.result.stderr
    assert {c.id for c in small.containers("app")} == old  # none left, in any state
    assert "could not start the new containers" in deploy.result.stderr
    assert "removing the new container(s)" in deploy.result.stderr
    assert_zero_failed(deploy)
    assert set(versions(deploy.load.outcomes)) == {"v1"}
    assert_one_release_serving(small, "v1")


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
