"""Three `migrate` containers at once on an empty database apply the schema once.

"At once" is made certain, not left to timing: the test holds the migrators' advisory lock
until all three are connected and waiting for it, so every run overlaps the others, then
lets them race for it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from berth.migrations import MIGRATION_LOCK_ID
from tests.stack import service
from tests.stack.faults import psql_holding, report
from tests.stack.harness import Stack, wait_for

RUNS = 3
WAITING = "another migration is running; waiting for it to finish"


def migrators_connected(stack: Stack) -> str:
    return stack.psql(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'berth-migrate'"
    )


def test_three_migrate_containers_at_once(stack_factory: Callable[..., Stack]) -> None:
    stack = stack_factory()
    stack.up("db")
    assert stack.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == "0"

    def migrate(_: int) -> subprocess.CompletedProcess[str]:
        return stack.run("run", "--rm", "--no-deps", "migrate", check=False, timeout=300)

    with ThreadPoolExecutor(max_workers=RUNS) as pool:
        held = psql_holding(
            stack,
            f"SELECT pg_advisory_lock({MIGRATION_LOCK_ID});",
            # A bigint key shows as classid (high 32 bits) and objid (low 32 bits).
            held=f"SELECT count(*) = 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
            f"AND classid = {MIGRATION_LOCK_ID >> 32} AND objid = {MIGRATION_LOCK_ID & 0xFFFFFFFF}",
            what="the migration lock",
        )
        with held:
            started = [pool.submit(migrate, number) for number in range(RUNS)]

            def all_waiting() -> bool:
                finished = [run.result() for run in started if run.done()]
                assert not finished, f"a migrator ran while the lock was held: {finished}"
                return migrators_connected(stack) == str(RUNS)

            # All three running at the same moment, each polling for the lock we hold.
            wait_for(
                all_waiting,
                timeout=240,
                interval=0.2,
                what=f"{RUNS} migrators waiting for the lock",
            )
            assert stack.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == "0"
        runs = [run.result() for run in started]

    assert [run.returncode for run in runs] == [0] * RUNS, [run.stderr for run in runs]
    # Each run said it waited: none of them ran alone.
    assert all(WAITING in run.stderr for run in runs), [run.stderr for run in runs]
    applied = [run for run in runs if "Running upgrade  -> 0001" in run.stderr]
    assert len(applied) == 1
    assert stack.psql("SELECT version_num FROM alembic_version") == "0001"
    assert stack.psql("SELECT count(*) FROM alembic_version") == "1"
    tables = stack.psql("SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables "
                        "WHERE schemaname = 'public'")  # fmt: skip
    assert tables == ",".join(sorted(["alembic_version", *service.TABLES]))
    report(
        "three migrate at once",
        runs=RUNS,
        waited_for_the_lock=sum(WAITING in run.stderr for run in runs),
        applied_the_schema=len(applied),
        alembic_version_rows=1,
    )
