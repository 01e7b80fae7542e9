"""Off-site backups measured: the time to restore N rows from the bucket, and the WAL
archive's lag under a steady write load.

    uv run python -m bench.backup [--rows N] [--load-seconds S]

One stack with the test bucket (tests/stack/compose/s3.yaml: an S3 store behind TLS on
this machine, so network time to a real provider is not in these figures). It fills the
items table with N rows, takes a backup (dump, encrypted copy, base backup), then times:
- `backup restore --offsite NAME --identity -`: download, decrypt, pg_restore into a new
  database, swap (the dump path of a disaster recovery);
- `backup/restore-to latest`: the whole point-in-time path (stop, pgBackRest restore,
  WAL replay, promotion, the stack back up).
Then it writes rows for S seconds in 1 MB transactions and samples the backup service's
metrics every second: the WAL archive's lag (how long the oldest finished segment has
waited) and the segments waiting. Writes bench/results/backup-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tests.stack.backups import backup
from tests.stack.harness import Stack, build_test_image
from tests.stack.offsite import Bucket, restore_to, scrape

RESULTS = Path(__file__).parent / "results"


def fill(stack: Stack, rows: int) -> None:
    sql = (
        "INSERT INTO items (name, price, description) SELECT 'bench-' || g, mod(g, 1000) + 0.99, "
        "repeat('x', 100) FROM generate_series(1, %d) g"
    )
    stack.psql(sql % rows)


def bench_rows(stack: Stack) -> int:
    return int(stack.psql("SELECT count(*) FROM items WHERE name LIKE 'bench-%'"))


def restore_from_bucket(stack: Stack, bucket: Bucket, name: str) -> dict[str, float]:
    started = time.monotonic()
    result = backup(stack, "restore", "--offsite", name, "--identity", "-", "--force",
                    input=bucket.identity.read_text())  # fmt: skip
    seconds = time.monotonic() - started
    fetched = re.search(r"fetched and decrypted \S+ from \S+ in ([\d.]+)s", result.stderr)
    restored = re.search(r"into \S+ in ([\d.]+)s", result.stderr)
    assert fetched, result.stderr
    assert restored, result.stderr
    return {
        "total_seconds": round(seconds, 2),
        "fetch_and_decrypt_seconds": float(fetched.group(1)),
        "pg_restore_seconds": float(restored.group(1)),
    }


WRITE_LOOP = (
    "DO $$ DECLARE deadline timestamptz := clock_timestamp() + interval 'SECONDS seconds'; "
    "BEGIN WHILE clock_timestamp() < deadline LOOP "
    "INSERT INTO items (name, price, description) SELECT 'load-' || gen_random_uuid(), "
    "1, repeat(md5(random()::text), 310) FROM generate_series(1, 100); COMMIT; "
    "END LOOP; END $$"
)


def write_load(stack: Stack, seconds: float) -> None:
    """One session inserting 1 MB transactions (100 rows of 10 kB) as fast as it can, each
    committed, for `seconds`: the server's own pace, not the client's."""
    stack.run(
        "exec", "-T", "db", "psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-U", "berth",
        "-d", "berth", "-c",
        WRITE_LOOP.replace("SECONDS", str(int(seconds))),
        timeout=seconds + 120,
    )  # fmt: skip


def wal_lsn(stack: Stack) -> int:
    text = stack.psql("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
    return int(float(text))


def archive_lag(stack: Stack, seconds: float) -> dict[str, Any]:
    """Two writing sessions for `seconds`, the backup service's metrics sampled meanwhile,
    then until the archive has caught up."""
    writers = [threading.Thread(target=write_load, args=(stack, seconds)) for _ in range(2)]
    start_lsn = wal_lsn(stack)
    archived_before = scrape(stack)["berth_backup_wal_archived_total"]
    started = time.monotonic()
    for writer in writers:
        writer.start()
    lags, waiting = [], []
    while any(writer.is_alive() for writer in writers):
        metrics = scrape(stack)
        lags.append(metrics.get("berth_backup_wal_archive_lag_seconds", 0.0))
        waiting.append(metrics.get("berth_backup_wal_pending_segments", 0.0))
        time.sleep(1)
    for writer in writers:
        writer.join()
    elapsed = time.monotonic() - started
    wal_mb = (wal_lsn(stack) - start_lsn) / 2**20
    caught_up = time.monotonic()
    while scrape(stack).get("berth_backup_wal_pending_segments", 0.0) > 0:
        if time.monotonic() - caught_up > 600:
            break
        time.sleep(1)
    catch_up = time.monotonic() - caught_up
    archived = scrape(stack)["berth_backup_wal_archived_total"] - archived_before
    lags.sort()
    return {
        "seconds": round(elapsed, 1),
        "wal_written_mb": round(wal_mb, 1),
        "wal_mb_per_second": round(wal_mb / elapsed, 2),
        "segments_archived": int(archived),
        "samples": len(lags),
        "lag_seconds_median": round(statistics.median(lags), 1),
        "lag_seconds_p95": round(lags[int(0.95 * (len(lags) - 1))], 1),
        "lag_seconds_max": round(lags[-1], 1),
        "segments_waiting_max": int(max(waiting)),
        "seconds_to_catch_up_after_load": round(catch_up, 1),
    }


def run(rows: int, load_seconds: float) -> dict[str, Any]:
    build_test_image()
    with tempfile.TemporaryDirectory() as workdir:
        bucket = Bucket(Path(workdir) / "bucket")
        stack = Stack(workdir=Path(workdir), overrides=["s3.yaml"], env=bucket.settings(
            BACKUP_SCHEDULE="every 24h", BACKUP_VERIFY_SCHEDULE="off",
            BACKUP_HEALTH_INTERVAL="2s",
        ))  # fmt: skip
        try:
            stack.up()
            fill(stack, rows)
            result = backup(stack, "now")
            name = re.search(r"wrote (\S+\.dump) \(([^,]+),", result.stderr)
            copied = re.search(r"copied \S+ off-site to \S+ \(([^ ]+) encrypted, ([\d.]+)s\)",
                               result.stderr)  # fmt: skip
            assert name, result.stderr
            assert copied, result.stderr
            dump = restore_from_bucket(stack, bucket, name.group(1))
            assert bench_rows(stack) == rows
            started = time.monotonic()
            restore_to(stack, "latest")
            pitr_seconds = time.monotonic() - started
            assert bench_rows(stack) == rows
            lag = archive_lag(stack, load_seconds)
            archive_timeout = stack.psql("SHOW archive_timeout")
        finally:
            stack.down()
    return {
        "rows": rows,
        "dump_size": name.group(2),
        "encrypted_size": copied.group(1),
        "upload_seconds": float(copied.group(2)),
        "restore_from_bucket": dump,
        "restore_to_latest_seconds": round(pitr_seconds, 1),
        "archive_timeout": archive_timeout,
        "wal_archive_under_load": lag,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--load-seconds", type=float, default=60)
    args = parser.parse_args()
    when = time.strftime("%Y-%m-%dT%H-%M-%S")
    figures = run(args.rows, args.load_seconds)
    machine = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout
    figures |= {
        "measured_at": when,
        "cpus": int(machine.strip() or 0),
        "note": "one run on a shared machine; the bucket is on the same host (no WAN time)",
        "command": "uv run python -m bench.backup",
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"backup-{when}.json"
    path.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
