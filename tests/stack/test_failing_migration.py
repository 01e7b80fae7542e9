"""A migration that fails on first `up` keeps the app from ever starting."""

from __future__ import annotations

from collections.abc import Callable

from tests.stack.harness import Stack


def test_failing_migration_blocks_the_app(stack_factory: Callable[..., Stack]) -> None:
    stack = stack_factory("failing-migration.yaml")

    result = stack.up(wait=False, check=False)

    assert result.returncode != 0
    assert 'service "migrate" didn\'t complete successfully: exit 1' in result.stderr
    migrate = stack.state("migrate")
    assert migrate["Status"] == "exited"
    assert migrate["ExitCode"] == 1
    assert (
        "berth: migration failed: revision 0002 raised DataError: division by zero"
        in stack.logs("migrate")
    )
    # The app container was created but never started.
    app = stack.state("app")
    assert app["Status"] == "created"
    assert app["StartedAt"].startswith("0001-01-01")
    # Transactional DDL: 0001 and the failed 0002 ran in one transaction and were both
    # rolled back, so the next `up` starts again from an empty schema.
    assert stack.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == "0"
