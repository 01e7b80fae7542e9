"""Off-site copies in an S3 bucket, and restores from it, on one stack in order:
- each scheduled backup lands there encrypted to a public key; the service verifies backups
  on its own schedule and exposes all of it as metrics;
- an outage of the bucket turns it unhealthy, then it recovers by itself with nothing lost;
- a corrupted copy is caught by verification, and retention keeps the last good backup;
- the database goes back to a point in time, exactly;
- after `docker compose down -v` (every local volume gone), a fresh stack gets every
  acknowledged item back from the bucket and the private key alone."""

from __future__ import annotations

import calendar
import hashlib
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.stack import service
from tests.stack.backups import backup, backup_now, create, names_in_db
from tests.stack.faults import Load, report, wait_healthy
from tests.stack.harness import Stack, wait_for
from tests.stack.offsite import Bucket, is_pg_dump_archive, restore_to, scrape

# These tests use the items example (a service generated without it skips them):
# backups are checked by the items in them.
pytestmark = service.example_only

SCHEDULE = 20  # seconds between scheduled backups here
OUTAGE = 30


@pytest.fixture(scope="module")
def bucket(tmp_path_factory: pytest.TempPathFactory) -> Bucket:
    return Bucket(Path(tmp_path_factory.mktemp("bucket")))


def settings(bucket: Bucket) -> dict[str, str]:
    return bucket.settings(
        BACKUP_SCHEDULE=f"every {SCHEDULE}s", BACKUP_VERIFY_SCHEDULE="every 30s",
        BACKUP_RETRY_DELAY="2s", BACKUP_HEALTH_INTERVAL="2s",
        BACKUP_WAL_ARCHIVE_TIMEOUT="10s", BACKUP_WAL_MAX_LAG="10s",
    )  # fmt: skip


# The restores need a quiet service: backups only when the test takes them, and retention
# of one a day, so that what it keeps is the rule's doing.
QUIET = {
    "BACKUP_SCHEDULE": "every 1h", "BACKUP_VERIFY_SCHEDULE": "off", "BACKUP_KEEP_DAILY": "1",
    "BACKUP_KEEP_WEEKLY": "0", "BACKUP_OFFSITE_KEEP_DAILY": "1",
    "BACKUP_OFFSITE_KEEP_WEEKLY": "0",
}  # fmt: skip


@pytest.fixture(scope="module")
def stack(stack_factory: Callable[..., Stack], bucket: Bucket) -> Stack:
    stack = stack_factory("s3.yaml", **settings(bucket))
    stack.up()
    return stack


# The outage: a backup every 10 s and nothing else scheduled, so that two fall in it.
BUSY = {"BACKUP_SCHEDULE": "every 10s", "BACKUP_VERIFY_SCHEDULE": "off"}


def switch(stack: Stack, settings: dict[str, str]) -> Stack:
    """The backup service recreated with these settings (only it)."""
    if any(stack.env.get(key) != value for key, value in settings.items()):
        stack.set_env(**settings)
        stack.up("backup")
    return stack


@pytest.fixture
def quiet(stack: Stack) -> Stack:
    return switch(stack, QUIET)


def copied_after(stack: Stack, moment: float) -> str | None:
    """The newest backup copied off-site whose dump started after `moment`."""
    names = re.findall(r"copied (berth-(\d{8}T\d{6})Z\.dump) off-site", stack.logs("backup"))
    later = [name for name, _ in names if stamp_of(name) > moment]
    return max(later) if later else None


def log_time(stamp: str) -> float:
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))


def stamp_of(name: str) -> float:
    """When a backup's dump started, from its name."""
    found = re.search(r"(\d{8}T\d{6})Z", name)
    assert found, name
    return calendar.timegm(time.strptime(found.group(1), "%Y%m%dT%H%M%S"))


def test_a_scheduled_backup_lands_in_the_bucket_encrypted(stack: Stack, bucket: Bucket) -> None:
    with stack.client() as client:
        for number in range(10):
            response = client.post("/api/items", json={"name": f"off-site-{number}", "price": "2"})
            assert response.status_code == 201
    written = time.time()
    wait_for(lambda: copied_after(stack, written), timeout=SCHEDULE + 60,
             what="a scheduled backup copied off-site")  # fmt: skip
    name, data, record = bucket.newest_copy(stack)
    assert stamp_of(name) > written

    assert data.startswith(b"age-encryption.org/v1\n")
    readable, said = is_pg_dump_archive(data)
    assert not readable, said  # without the key the bytes are no dump
    assert b"off-site-3" not in data
    plain = bucket.decrypt(data)
    assert is_pg_dump_archive(plain)[0]
    table = bucket.dump_table(plain, "items")
    assert all(f"off-site-{number}" in table for number in range(10))
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["revision"] == "0001"
    # The private key never reached the server: nothing there can decrypt.
    assert "AGE-SECRET-KEY" not in stack.run("exec", "-T", "backup", "sh", "-c",
                                             "env; cat /backups/.state.json").stdout  # fmt: skip


def test_verification_on_a_schedule_and_the_metrics(stack: Stack) -> None:
    wait_for(lambda: "verified berth-" in stack.logs("backup"), timeout=90,
             what="a scheduled verification")  # fmt: skip
    line = re.search(r"verified (\S+): restored in \S+, alembic revision (\S+), rows: (.*)",
                     stack.logs("backup"))  # fmt: skip
    assert line, stack.logs("backup")
    assert line.group(2) == "0001"
    assert "alembic_version=1" in line.group(3)
    assert "off-site copy intact" in line.group(3)

    metrics = scrape(stack)
    assert metrics["berth_backup_healthy"] == 1
    assert metrics["berth_backup_offsite_newest_age_seconds"] < SCHEDULE + 60
    assert metrics["berth_backup_last_verified_timestamp_seconds"] > time.time() - 120
    assert metrics["berth_backup_verify_failing"] == 0
    assert metrics['berth_backup_verified_rows{table="alembic_version"}'] == 1
    assert metrics["berth_backup_wal_archived_total"] > 0
    assert metrics["berth_backup_wal_archive_failing"] == 0
    assert metrics["berth_backup_base_backup_last_success_timestamp_seconds"] > 0
    assert metrics["berth_backup_wal_queue_max_bytes"] == 2048 * 2**20


def test_an_outage_of_the_bucket(stack: Stack, bucket: Bucket) -> None:
    """The bucket unreachable for 30 s: the service turns unhealthy within seconds and says
    why, keeps backing up locally, and recovers by itself; every acknowledged write is in
    the database, and in the first backup copied after the outage."""
    switch(stack, BUSY)
    wait_healthy(stack, "backup", timeout=60)
    with Load(stack, request=service.write, clients=1, pause=0.2, max_seconds=240) as load:
        # Right after a scheduled copy, so the next scheduled one falls in the outage.
        copies = stack.logs("backup").count(" off-site to ")
        wait_for(lambda: stack.logs("backup").count(" off-site to ") > copies,
                 timeout=60, interval=0.5, what="a scheduled copy")  # fmt: skip
        stack.run("stop", "s3")
        down = time.time()
        wait_for(lambda: stack.state("backup")["Health"]["Status"] == "unhealthy",
                 timeout=OUTAGE, what="the backup service to turn unhealthy")  # fmt: skip
        turned = time.time() - down
        lags, outputs = [], []
        while time.time() < down + OUTAGE:
            lags.append(scrape(stack).get("berth_backup_wal_archive_lag_seconds", 0.0))
            outputs.append(stack.state("backup")["Health"]["Log"][-1]["Output"])
            time.sleep(2)
        stack.run("start", "s3")
        up = time.time()
        try:
            wait_healthy(stack, "backup", timeout=150)
        except TimeoutError:
            health = stack.state("backup")["Health"]["Log"][-1]["Output"]
            logs = f"{stack.logs('backup')}\n{stack.logs('db')[-3000:]}"
            raise AssertionError(f"not healthy again: {health}\n{logs}") from None
        recovered = time.time() - up
        wait_for(lambda: copied_after(stack, up), timeout=60,
                 what="a backup copied after the outage")  # fmt: skip
        load.stop()

    assert not load.failures(), load.failures()[:3]
    acknowledged = {o.tag for o in load.outcomes if o.status == 201}
    assert len(acknowledged) >= 50
    log = stack.logs("backup")
    wrote = re.findall(r"^(\S+Z) backup: wrote berth-", log, re.MULTILINE)
    during = [stamp for stamp in wrote if down < log_time(stamp) < up]
    assert len(during) >= 2, f"local backups while the bucket was away: {during}\n{log}"
    assert "retrying upload in" in log
    # The failed upload and the WAL archive's lag showed in the health check, the lag in
    # the metrics too.
    assert any("off-site upload failed: rclone:" in output for output in outputs), outputs
    assert any("WAL archiving is" in output for output in outputs), outputs
    assert max(lags) > 10, lags
    # Nothing acknowledged was lost; the first copy after the outage holds all of it.
    assert acknowledged <= names_in_db(stack)
    name, data, _ = bucket.newest_copy(stack)
    assert stamp_of(name) > up
    table = bucket.dump_table(bucket.decrypt(data), "items")
    before_dump = {o.tag for o in load.outcomes if o.status == 201 and o.ended < stamp_of(name)}
    assert len(before_dump) >= 50
    assert all(tag in table for tag in before_dump)
    # The archive caught up: nothing waits in pg_wal beyond the segment in flight.
    wait_for(lambda: scrape(stack)["berth_backup_wal_pending_segments"] == 0, timeout=60,
             interval=2, what="the WAL archive to catch up")  # fmt: skip
    assert scrape(stack)["berth_backup_offsite_upload_failing"] == 0
    report(
        "bucket outage", outage_seconds=OUTAGE, unhealthy_after_seconds=round(turned, 1),
        healthy_again_after_seconds=round(recovered, 1), max_wal_lag_seconds=max(lags),
        local_backups_during_outage=len(during), writes=len(acknowledged),
    )  # fmt: skip


def local_backups(stack: Stack) -> set[str]:
    return set(re.findall(r"^(berth-\S+\.dump)", backup(stack, "list").stdout, re.MULTILINE))


def health_output(stack: Stack) -> str:
    return str(stack.state("backup")["Health"]["Log"][-1]["Output"])


def test_verification_catches_a_corrupted_copy_and_retention_keeps_the_last_good(
    quiet: Stack, bucket: Bucket
) -> None:
    stack = quiet
    create(stack, "verified-1", "verified-2")
    good = backup_now(stack)
    verified = backup(stack, "verify").stderr
    expected = (rf"verified {good}: restored in \S+, alembic revision 0001, "
                r"rows: alembic_version=1, items=\d+; off-site copy intact")  # fmt: skip
    assert re.search(expected, verified), verified
    time.sleep(1)  # a backup of its own second
    bad = backup_now(stack)
    key = f"dumps/{bad}.age"
    data = bytearray(bucket.read(stack, key))
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the bucket
    bucket.write(stack, key, bytes(data))

    result = backup(stack, "verify", check=False)

    assert result.returncode == 1
    assert f"error: verification failed: the off-site copy of {bad} is corrupt" in result.stderr
    wait_for(lambda: health_output(stack).startswith(
        f"verification failed: the off-site copy of {bad} is corrupt"), timeout=30,
        what="the health check to report it")  # fmt: skip
    assert stack.state("backup")["Health"]["Status"] == "unhealthy"
    assert scrape(stack)["berth_backup_verify_failing"] == 1
    with pytest.raises(AssertionError, match="age --decrypt"):
        bucket.decrypt(bytes(data))  # authenticated: a flipped byte never decrypts

    # Retention keeps one backup a day here: the newest, and the last one verified good.
    time.sleep(1)
    newest = backup_now(stack)
    assert local_backups(stack) == {good, newest}
    assert set(bucket.dumps(stack)) == {f"{good}.age", f"{newest}.age"}
    listed = {line.split()[0]: line for line in backup(stack, "list").stdout.splitlines()}
    assert listed[good].endswith("(last good)")

    # Verifying the newest backup clears the alarm and makes it the last good one.
    backup(stack, "verify")
    wait_for(lambda: stack.state("backup")["Health"]["Status"] == "healthy", timeout=30,
             what="the service to be healthy again")  # fmt: skip
    backup(stack, "prune")
    assert local_backups(stack) == {newest}


def test_restore_to_a_point_in_time(quiet: Stack) -> None:
    stack = quiet
    create(stack, *(f"at-t-{number}" for number in range(20)))
    expected = names_in_db(stack)  # every row acknowledged before T, and nothing else
    moment = stack.psql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
    )
    time.sleep(1.5)
    create(stack, *(f"after-t-{number}" for number in range(20)))
    stack.psql("DELETE FROM items WHERE name IN ('at-t-0', 'at-t-1', 'at-t-2')")
    assert names_in_db(stack) != expected

    # A time that cannot be restored stops nothing.
    for bad, said in [("2026-11-24 10:15", "has no time zone"),
                      ("2001-01-01T00:00:00Z", "is before the oldest base backup")]:  # fmt: skip
        refused = restore_to(stack, bad, check=False)
        assert refused.returncode != 0
        assert said in refused.stderr
        assert stack.state("app")["Running"]

    started = time.monotonic()
    result = restore_to(stack, moment)
    restored_in = time.monotonic() - started

    assert f"done: the database is at {moment}" in result.stderr
    assert names_in_db(stack) == expected
    stack.wait_routed()
    with stack.client() as client:
        items = client.get("/api/items", params={"limit": 500}).json()["items"]
    assert {item["name"] for item in items} == expected
    assert restored_in < 600


def test_disaster_recovery_from_the_bucket_and_the_private_key(
    quiet: Stack, bucket: Bucket, stack_factory: Callable[..., Stack]
) -> None:
    stack = quiet
    """The server is gone: a new stack, the bucket and the private key give it all back."""
    names = {f"disaster-{number}" for number in range(30)}
    create(stack, *sorted(names))
    dump = backup_now(stack)
    backup(stack, "verify")  # the last good one: the new server's retention keeps it
    stack.run("down", "--volumes", "--remove-orphans", "--timeout", "10", timeout=180)
    leftover = stack.docker.volumes.list(
        filters={"label": f"com.docker.compose.project={stack.project}"}
    )
    assert not leftover, "every local volume is gone"

    fresh = stack_factory("s3.yaml", **{**settings(bucket), **QUIET})
    fresh.up("s3", "s3-store")  # the bucket, which outlived the server
    # The runbook's step 3: the passphrase, from the bucket, with the private key.
    told = fresh.run("run", "--rm", "--no-deps", "-T", "backup", "pitr-passphrase",
                     "--identity", "-", input=bucket.identity.read_text())  # fmt: skip
    assert told.stdout.strip() == bucket.passphrase
    result = restore_to(fresh, "latest")  # the runbook's one command

    assert "done: the database is at latest" in result.stderr
    assert names <= names_in_db(fresh)
    fresh.wait_routed()
    with fresh.client() as client:
        items = {item["name"] for item in client.get(
            "/api/items", params={"limit": 500}).json()["items"]}  # fmt: skip
    assert names <= items

    # The dumps in the bucket restore too, with the private key only (read from stdin).
    wrong = backup(fresh, "restore", "--offsite", dump, "--identity", "-", "--force",
                   check=False, input="AGE-SECRET-KEY-1" + "Q" * 58 + "\n")  # fmt: skip
    assert wrong.returncode == 1
    assert "nothing was changed" in wrong.stderr
    restored = backup(fresh, "restore", "--offsite", dump, "--identity", "-", "--force",
                      input=bucket.identity.read_text())  # fmt: skip
    assert f"fetched and decrypted {dump}" in restored.stderr
    assert names <= names_in_db(fresh)
