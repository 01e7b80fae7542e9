"""Off-site copies in an S3 bucket: each scheduled backup lands there encrypted to a public
key; the service verifies backups on its own schedule and exposes all of it as metrics; and
an outage of the bucket turns it unhealthy, then it recovers by itself with nothing lost."""

from __future__ import annotations

import calendar
import hashlib
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.stack.backups import names_in_db
from tests.stack.faults import Load, create_item, report, wait_healthy
from tests.stack.harness import Stack, wait_for
from tests.stack.offsite import Bucket, is_pg_dump_archive, scrape

SCHEDULE = 20  # seconds between scheduled backups here
OUTAGE = 30


@pytest.fixture(scope="module")
def bucket(tmp_path_factory: pytest.TempPathFactory) -> Bucket:
    return Bucket(Path(tmp_path_factory.mktemp("bucket")))


@pytest.fixture(scope="module")
def stack(stack_factory: Callable[..., Stack], bucket: Bucket) -> Stack:
    stack = stack_factory("s3.yaml", **bucket.settings(
        BACKUP_SCHEDULE=f"every {SCHEDULE}s", BACKUP_VERIFY_SCHEDULE="every 30s",
        BACKUP_RETRY_DELAY="2s", BACKUP_HEALTH_INTERVAL="2s",
        BACKUP_WAL_ARCHIVE_TIMEOUT="5s", BACKUP_WAL_MAX_LAG="10s",
    ))  # fmt: skip
    stack.up()
    return stack


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
    wait_healthy(stack, "backup", timeout=60)
    with Load(stack, request=create_item, clients=1, pause=0.2, max_seconds=240) as load:
        time.sleep(3)
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
        wait_healthy(stack, "backup", timeout=150)
        recovered = time.time() - up
        wait_for(lambda: copied_after(stack, up), timeout=SCHEDULE + 60,
                 what="a backup copied after the outage")  # fmt: skip
        load.stop()

    assert not load.failures(), load.failures()[:3]
    acknowledged = {o.tag for o in load.outcomes if o.status == 201}
    assert len(acknowledged) >= 50
    log = stack.logs("backup")
    wrote = re.findall(r"^(\S+Z) backup: wrote berth-", log, re.MULTILINE)
    during = [stamp for stamp in wrote if down < log_time(stamp) < up]
    assert during, "no local backup while the bucket was away"
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
