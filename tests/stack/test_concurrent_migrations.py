"""Three `migrate` containers at once on an empty database apply the schema once."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from tests.stack.harness import Stack


def test_three_migrate_containers_at_once(stack_factory: Callable[..., Stack]) -> None:
    stack = stack_factory()
    stack.up("db")
    assert stack.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == "0"

    def migrate(_: int) -> subprocess.CompletedProcess[str]:
        return stack.run("run", "--rm", "--no-deps", "migrate", check=False, timeout=180)

    with ThreadPoolExecutor(max_workers=3) as pool:
        runs = list(pool.map(migrate, range(3)))

    assert [run.returncode for run in runs] == [0, 0, 0], [run.stderr for run in runs]
    applied = [run for run in runs if "Running upgrade  -> 0001" in run.stderr]
    assert len(applied) == 1
    assert stack.psql("SELECT version_num FROM alembic_version") == "0001"
    assert stack.psql("SELECT count(*) FROM alembic_version") == "1"
    tables = stack.psql("SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables "
                        "WHERE schemaname = 'public'")  # fmt: skip
    assert tables == "alembic_version,items"
