"""Bad configuration stops `docker compose up` with a clear message, before anything
starts that could act on it (Postgres initialising a volume, Traefik asking for a
certificate)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from berth.settings import DEV_POSTGRES_PASSWORD
from tests.stack.harness import Stack

PRODUCTION = {"DOMAIN": "berth.test", "ACME_EMAIL": "ops@berth.test"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            PRODUCTION,
            "berth: configuration error: POSTGRES_PASSWORD is the development default, "
            "refused in production (DOMAIN=berth.test)",
        ),
        (
            {**PRODUCTION, "POSTGRES_PASSWORD": DEV_POSTGRES_PASSWORD},
            "berth: configuration error: POSTGRES_PASSWORD is the development default",
        ),
        (
            {"DOMAIN": "berth.test", "POSTGRES_PASSWORD": "a-long-production-password"},
            "berth: configuration error: ACME_EMAIL must be an e-mail address in production",
        ),
        (
            {"DOMAIN": "https://berth.test/app", "POSTGRES_PASSWORD": "a-long-one"},
            "berth: configuration error: DOMAIN='https://berth.test/app' is not a host name",
        ),
        (
            {"WEB_CONCURRENCY": "two"},
            "berth: configuration error: WEB_CONCURRENCY: Input should be a valid integer",
        ),
    ],
    ids=["no-password", "dev-password", "no-acme-email", "malformed-domain", "bad-number"],
)
def test_bad_config_stops_up_before_anything_starts(
    stack_factory: Callable[..., Stack], env: dict[str, str], message: str
) -> None:
    stack = stack_factory(**env)
    result = stack.up(wait=False, check=False)
    assert result.returncode != 0
    assert 'service "preflight" didn\'t complete successfully: exit 78' in result.stderr
    log = stack.logs("preflight").strip().splitlines()
    assert len(log) == 1
    assert log[0].startswith(message)
    for service in ("db", "traefik"):
        assert all(c.attrs["State"]["StartedAt"].startswith("0001") for c in
                   stack.containers(service)), f"{service} was started"  # fmt: skip


def test_wrong_database_password_fails_migrate_in_one_line(
    stack_factory: Callable[..., Stack],
) -> None:
    """The usual cause: POSTGRES_PASSWORD changed in .env after the volume was created."""
    stack = stack_factory(POSTGRES_PASSWORD="the-first-password")
    stack.up()
    stack.run("stop")
    stack.set_env(POSTGRES_PASSWORD="a-different-password")

    result = stack.up(wait=False, check=False)

    assert result.returncode != 0
    assert 'service "migrate" didn\'t complete successfully: exit 1' in result.stderr
    log = stack.logs("migrate").strip().splitlines()
    assert log[-1].startswith("berth: migration failed: cannot connect to db:5432/berth as berth")
    assert 'password authentication failed for user "berth"' in log[-1]
    assert "ALTER ROLE" in log[-1]
    assert not any("Traceback" in line for line in log)
    app = stack.state("app")
    assert app["Status"] != "running"
