"""Backups that are known to restore: after losing the volume, under write load, with
retention, refusing bad files without changing anything, never two runs at once, and with
no root anywhere."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from tests.stack import service
from tests.stack.backups import backup, backup_now, create, databases, names_in_db
from tests.stack.faults import Load, report
from tests.stack.harness import Stack, wait_for

# These tests use the items example (a service generated without it skips them):
# backups are checked by the items in them.
pytestmark = service.example_only


@pytest.fixture(scope="module")
def stack(stack_factory: Callable[..., Stack]) -> Stack:
    stack = stack_factory()
    stack.up()
    return stack


def test_restore_after_losing_the_database_volume(stack: Stack) -> None:
    names = {f"precious-{number}" for number in range(25)}
    create(stack, *sorted(names))
    dump = backup_now(stack)
    listed = backup(stack, "list").stdout.splitlines()
    assert any(line.split()[:1] == [dump] and line.split()[2] == "0001" for line in listed), listed

    stack.run("stop", "app", "backup", "db")
    stack.run("rm", "--force", "db", "backup")  # backup reads the data volume, too
    stack.docker.volumes.get(f"{stack.project}_db-data").remove()
    stack.up("db")  # a brand-new, empty database
    assert stack.psql("SELECT to_regclass('items') IS NULL") == "t"

    restored = stack.run("run", "--rm", "--no-deps", "backup", "restore", dump)
    assert "alembic revision 0001" in restored.stderr
    stack.up()  # migrate (already at head) and the app come back

    assert names <= names_in_db(stack)
    assert stack.psql("SELECT version_num FROM alembic_version") == "0001"
    with stack.client() as client:
        wait_for(lambda: client.get("/health/ready").status_code == 200, timeout=30)
        listed = client.get("/api/items", params={"limit": 500}).json()["items"]
    assert names <= {item["name"] for item in listed}


def test_a_backup_under_write_load_restores_to_a_consistent_state(stack: Stack) -> None:
    stop = threading.Event()
    pairs_written: list[int] = []

    def write_pairs() -> None:
        """Two rows per transaction: a consistent snapshot has both or neither."""
        number = 0
        while not stop.is_set() and number < 2000:
            stack.psql(
                f"BEGIN; INSERT INTO items (name, price) VALUES ('pair-a-{number}', 1); "
                f"INSERT INTO items (name, price) VALUES ('pair-b-{number}', 1); COMMIT;"
            )
            pairs_written.append(number)
            number += 1

    writer = threading.Thread(target=write_pairs)
    with Load(stack, request=service.write, clients=3, max_seconds=60) as load:
        writer.start()
        time.sleep(2)
        acknowledged_before = {o.tag for o in load.outcomes if o.status == 201}
        dump = backup_now(stack)
        time.sleep(2)
        stop.set()
        writer.join()

    check = "berth_consistency_check"
    stack.psql(f"CREATE DATABASE {check}")
    stack.run("exec", "-T", "backup", "pg_restore", "--exit-on-error", "--no-owner",
              f"--dbname={check}", f"/backups/{dump}")  # fmt: skip
    restored = names_in_db(stack, check)
    stack.psql(f"DROP DATABASE {check}")

    halves_a = {name.removeprefix("pair-a-") for name in restored if name.startswith("pair-a-")}
    halves_b = {name.removeprefix("pair-b-") for name in restored if name.startswith("pair-b-")}
    assert halves_a == halves_b  # no transaction is half in the backup
    assert halves_a  # the writer was under way when the backup was taken
    assert len(halves_a) < len(pairs_written)  # ...and went on after it
    assert acknowledged_before <= restored  # everything acknowledged before it is in it
    report(
        "backup under write load",
        items_acknowledged_before_backup=len(acknowledged_before),
        pairs_in_backup=len(halves_a),
        pairs_written_in_all=len(pairs_written),
        api_writes=len(load.outcomes),
    )


def test_retention_keeps_7_daily_and_4_weekly(stack: Stack) -> None:
    now = datetime.now(UTC).replace(hour=3, minute=0, second=0, microsecond=0)
    stamps = [now - timedelta(days=day) for day in range(40)]
    stamps.append(now + timedelta(hours=12))  # a second backup on the newest day
    names = [f"berth-{stamp:%Y%m%dT%H%M%SZ}.dump" for stamp in stamps]
    script = "cd /backups && rm -f berth-*.dump* && for f in " + " ".join(names) + \
        "; do echo x > $f; echo revision=0001 > $f.meta; done"  # fmt: skip
    stack.run("exec", "-T", "-u", "postgres", "backup", "sh", "-c", script)

    backup(stack, "prune")

    # The rule, stated independently of the script: the newest backup of all; the newest of
    # each of the 7 most recent days with a backup; the newest of each of the 4 most recent
    # ISO weeks with a backup.
    newest_first = sorted(stamps, reverse=True)
    expected = {newest_first[0]}
    days = sorted({stamp.date() for stamp in stamps}, reverse=True)[:7]
    weeks = sorted({stamp.isocalendar()[:2] for stamp in stamps}, reverse=True)[:4]
    expected |= {next(s for s in newest_first if s.date() == day) for day in days}
    expected |= {next(s for s in newest_first if s.isocalendar()[:2] == week) for week in weeks}
    kept = set(backup(stack, "list").stdout.split()) & set(names)
    assert kept == {f"berth-{stamp:%Y%m%dT%H%M%SZ}.dump" for stamp in expected}
    assert 7 <= len(kept) <= 11
    leftovers = stack.run("exec", "-T", "backup", "ls", "/backups").stdout.split()
    assert all(name.removesuffix(".meta") in kept for name in leftovers if name.endswith(".meta"))
    stack.run("exec", "-T", "-u", "postgres", "backup", "sh", "-c", "rm -f /backups/berth-*.dump*")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        ("", "no backup named berth-19990101T000000Z.dump"),
        ("echo garbage > /backups/berth-19990101T000000Z.dump",
         "is not a readable pg_dump archive"),
        # All but the end: the table of contents reads, the data does not.
        ("head -c -200 /backups/{latest} > /backups/berth-19990101T000000Z.dump",
         "restoring berth-19990101T000000Z.dump failed"),
    ],
    ids=["missing", "garbage", "truncated"],
)  # fmt: skip
def test_a_bad_backup_file_changes_nothing(stack: Stack, make: str, message: str) -> None:
    latest = backup_now(stack)
    if make:
        stack.run("exec", "-T", "-u", "postgres", "backup", "sh", "-c", make.format(latest=latest))
    before_names, before_dbs = names_in_db(stack), databases(stack)

    result = backup(stack, "restore", "berth-19990101T000000Z.dump", "--force", check=False)

    assert result.returncode != 0
    assert message in result.stderr
    assert "nothing was changed" in result.stderr
    assert names_in_db(stack) == before_names
    assert databases(stack) == before_dbs
    stack.run(
        "exec", "-T", "-u", "postgres", "backup", "rm", "-f", "/backups/berth-19990101T000000Z.dump"
    )


def test_restore_is_refused_while_the_app_is_connected(stack: Stack) -> None:
    dump = backup_now(stack)
    with stack.client() as client:
        client.get("/api/items")  # the app holds pooled connections
    result = backup(stack, "restore", dump, check=False)
    assert result.returncode != 0
    assert "the app is connected to berth" in result.stderr
    assert "stop it first (docker compose stop app), or pass --force" in result.stderr


def test_restore_force_disconnects_the_app_and_keeps_the_database_it_replaced(
    stack: Stack,
) -> None:
    with stack.client() as client:
        kept_id = client.post("/api/items", json={"name": "in-the-backup", "price": "1"})
        dump = backup_now(stack)
        lost_id = client.post("/api/items", json={"name": "after-the-backup", "price": "1"})
        assert kept_id.status_code == lost_id.status_code == 201
        client.get("/api/items")  # the app holds pooled connections
    before = databases(stack)

    result = backup(stack, "restore", dump, "--force")

    assert f"restored {dump} into berth" in result.stderr
    kept = re.search(r"kept as (berth_before_restore_\d{8}T\d{6}Z)", result.stderr)
    assert kept, result.stderr
    assert databases(stack) == before | {kept.group(1)}
    assert "in-the-backup" in names_in_db(stack)
    assert "after-the-backup" not in names_in_db(stack)
    assert {"in-the-backup", "after-the-backup"} <= names_in_db(stack, kept.group(1))
    # The app's connections were cut; its pool reconnects to the restored database.
    with stack.client() as client:
        wait_for(lambda: client.get("/health/ready").status_code == 200, timeout=30)
        assert client.get(f"/api/items/{kept_id.json()['id']}").status_code == 200
        assert client.get(f"/api/items/{lost_id.json()['id']}").status_code == 404
    stack.psql(f'DROP DATABASE "{kept.group(1)}"')


def test_backups_at_the_same_moment_never_share_a_file(stack: Stack) -> None:
    """Three runs started together (as a scheduled backup and a manual one can be): the
    run lock makes them take turns, and each gets a file of its own."""
    before = set(backup(stack, "list").stdout.split())
    result = stack.run(
        "exec", "-T", "backup", "sh", "-c",
        "backup now & backup now & backup now & wait; ls -a /backups",
    )  # fmt: skip
    written = re.findall(r"wrote (berth-\S+\.dump)", result.stderr)
    assert len(written) == 3, result.stderr
    assert len(set(written)) == 3
    assert "waiting for the backup run in progress to finish" in result.stderr
    assert not [name for name in result.stdout.split() if name.endswith(".partial")]
    assert not set(written) & before
    # Each was whole when written; retention then keeps the newest of the day.
    newest = max(written)
    stack.run("exec", "-T", "backup", "pg_restore", "--list", f"/backups/{newest}")
    for name in set(written) - {newest}:
        assert name in result.stdout.split() or f"pruned {name}" in result.stderr


def test_partial_files_left_by_a_killed_run_are_removed(stack: Stack) -> None:
    """A run killed mid-dump (a stop past the grace period, a crash) leaves its partial
    file; the next run holding the lock removes it."""
    leftover = ".berth-20261124T030000Z.dump.partial"
    stack.run("exec", "-T", "backup", "sh", "-c", f"echo half > /backups/{leftover}")
    result = backup(stack, "now")
    assert f"removed {leftover}, left by an interrupted run" in result.stderr
    listing = stack.run("exec", "-T", "backup", "ls", "-a", "/backups").stdout.split()
    assert leftover not in listing


def test_no_backup_process_runs_as_root(stack: Stack) -> None:
    container = stack.container("backup")
    assert container.attrs["Config"]["User"] == "postgres"
    backup(stack, "health", check=False)  # the healthcheck's command, too
    uids = {row[1] for row in container.top(ps_args="-o pid,uid,comm")["Processes"]}
    assert uids, "no process listed"
    assert "0" not in uids, uids
    owner = stack.run("exec", "-T", "backup", "stat", "-c", "%U", "/backups").stdout.strip()
    assert owner == "postgres"


def test_a_database_without_migrations_backs_up_and_verifies(stack: Stack) -> None:
    """The first backup can run before migrate has (backup waits for db alone): the dump
    then has no alembic_version table, and verifying it must still work, as must the
    revision of a restored database that has none."""
    revision = stack.run(
        "exec", "-T", "backup", "python3", "-c",
        "import os; from backup.tools import alembic_revision; "
        "print(alembic_revision('postgres', os.environ))",
    ).stdout.strip()  # fmt: skip
    assert revision == "none"
    assert stack.psql("SELECT version_num FROM alembic_version") != "none"
