"""Health and metrics from a given state: each problem is named, and the WAL archiver's
failures show before pg_wal fills."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from backup import config, status
from backup.errors import ConfigError
from backup.status import Snapshot, metrics, problems, wal_problems

NOW = 1_800_000_000.0
HEALTHY_WAL = {
    "archive_mode": "on", "archived_count": 40, "failed_count": 0, "last_archived": NOW - 5,
    "last_failed": 0.0, "last_failed_wal": "", "ready": 0, "lag": 0.0, "bytes": 2**26,
    "at": NOW - 1,
}  # fmt: skip


def snap(
    tmp_path: Path, state: dict[str, Any] | None = None, *, newest: float | None = NOW - 60,
    wal: dict[str, Any] | None = None, **env: str,
) -> Snapshot:  # fmt: skip
    settings = config.load({
        "PGDATABASE": "berth", "BACKUP_DIR": str(tmp_path), "BACKUP_SCHEDULE": "every 1h",
        "BACKUP_S3_BUCKET": "bucket", "BACKUP_S3_ENDPOINT": "https://s3",
        "BACKUP_S3_ACCESS_KEY_ID": "id", "BACKUP_S3_SECRET_ACCESS_KEY": "secret",
        "BACKUP_AGE_RECIPIENT": "age1" + "q" * 58, "BACKUP_PITR_PASSPHRASE": "p" * 30, **env,
    })  # fmt: skip
    fresh = {"offsite": {"newest_at": NOW - 60}, "verify": {"last_success": NOW - 60}}
    live = {"started": NOW - 7200, "heartbeat": NOW - 2, "wal": wal or HEALTHY_WAL}
    result = Snapshot(settings=settings, now=NOW, state=state or fresh, live=live,
                      newest_local=newest, local_count=1)  # fmt: skip
    result.problems = problems(result)
    return result


def test_healthy(tmp_path: Path) -> None:
    assert snap(tmp_path).problems == []


def test_a_failed_backup_with_its_retry(tmp_path: Path) -> None:
    state = {"backup": {"last_success": NOW - 100, "last_failure": NOW - 5,
                        "error": "pg_dump: connection refused", "retry_at": NOW + 20},
             "offsite": {"newest_at": NOW - 60}, "verify": {"last_success": NOW - 60}}  # fmt: skip
    assert snap(tmp_path, state).problems == [
        "last backup failed: pg_dump: connection refused (retrying in 20s)"
    ]


def test_the_newest_backup_too_old(tmp_path: Path) -> None:
    found = snap(tmp_path, newest=NOW - 3 * 3600 - 60).problems  # limit: 2 x 1h + 1h
    assert found == ["newest backup is 3h 1m old (limit 3h 0m)"]
    found = snap(tmp_path, newest=NOW - 100, BACKUP_MAX_AGE="90s").problems
    assert found == ["newest backup is 100s old (limit 90s)"]


def test_off_site_failures_and_staleness(tmp_path: Path) -> None:
    state = {"upload": {"last_failure": NOW - 1, "error": "rclone: no such host"},
             "offsite": {"newest_at": NOW - 4 * 3600}, "verify": {"last_success": NOW}}  # fmt: skip
    assert snap(tmp_path, state).problems == [
        "off-site upload failed: rclone: no such host",
        "newest off-site copy is 4h 0m old (limit 3h 0m)",
    ]


def test_a_failed_verification(tmp_path: Path) -> None:
    state = {"offsite": {"newest_at": NOW}, "verify": {
        "last_success": NOW - 100, "last_failure": NOW - 1,
        "error": "the off-site copy of x is corrupt"}}  # fmt: skip
    assert snap(tmp_path, state).problems == [
        "verification failed: the off-site copy of x is corrupt"
    ]


def test_a_dead_scheduler(tmp_path: Path) -> None:
    result = snap(tmp_path)
    result.live["heartbeat"] = NOW - 300
    assert problems(result) == ["the scheduler is not running (no heartbeat for 5m)"]


def wal(**change: Any) -> dict[str, Any]:
    return {**HEALTHY_WAL, **change}


def test_wal_archiving_failing_behind_and_filling() -> None:
    assert wal_problems(wal(), 300, 2048) == []
    failing = wal(ready=3, last_failed=NOW - 1, last_failed_wal="00000001000000000000002A")
    assert wal_problems(failing, 300, 2048) == [
        "WAL archiving is failing (3 segments waiting, last failed 00000001000000000000002A; "
        "see `docker compose logs db`)"
    ]
    hanging = wal(ready=2, lag=400.0)
    assert wal_problems(hanging, 300, 2048) == [
        "WAL archiving is behind: a segment has waited 6m (limit 5m; 2 waiting)"
    ]
    filling = wal(ready=70, lag=10.0)  # 1120 MB waiting, over half of 2048
    assert wal_problems(filling, 300, 2048)[-1].startswith("1120 MB of WAL waiting to be archived")
    assert wal_problems(wal(archive_mode="off"), 300, 2048)[0].startswith(
        "WAL archiving is off in the database"
    )


def test_metrics_are_prometheus_text(tmp_path: Path) -> None:
    state = {"backup": {"last_success": NOW - 60}, "offsite": {"newest_at": NOW - 30},
             "verify": {"last_success": NOW - 10, "tables": {"items": 25}}}  # fmt: skip
    text = metrics(snap(tmp_path, state, wal=wal(ready=1, lag=12.5)))
    values = dict(re.findall(r"^(berth_backup_\S+) (\S+)$", text, re.MULTILINE))
    assert values["berth_backup_healthy"] == "1"
    assert values["berth_backup_offsite_newest_age_seconds"] == "30"
    assert values["berth_backup_last_verified_timestamp_seconds"] == f"{NOW - 10:.0f}"
    assert values['berth_backup_verified_rows{table="items"}'] == "25"
    assert values["berth_backup_wal_archive_lag_seconds"] == "12.5"
    assert values["berth_backup_wal_archived_total"] == "40"
    for line in text.splitlines():  # every sample has its HELP and TYPE
        if not line.startswith("#"):
            name = line.split("{")[0].split(" ")[0]
            assert f"# TYPE {name} " in text


@pytest.mark.parametrize("age", [0.0, time.time()])
def test_metrics_values_have_no_exponent(tmp_path: Path, age: float) -> None:
    text = metrics(snap(tmp_path, {"backup": {"last_success": age or NOW}}))
    assert "e+" not in text


def paced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answers: list[list[str]], **env: str
) -> tuple[list[str], float, int]:
    """One run of the paced healthcheck whose readings are `answers` in turn: its result,
    how long it slept in all, and how many readings it took."""
    settings = config.load({"PGDATABASE": "berth", "BACKUP_DIR": str(tmp_path), **env})
    readings = iter(answers)
    taken = []
    slept = []
    clock = [0.0]

    def reading(_: config.Settings) -> Snapshot:
        taken.append(1)
        result = snap(tmp_path)
        result.problems = next(readings)
        return result

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr(status, "snapshot", reading)
    monkeypatch.setattr(time, "sleep", sleep)
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    found = status.paced_health(settings, passed=str(tmp_path / "passed"))
    return found, sum(slept), len(taken)


def test_until_its_first_pass_the_check_retries_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`up --wait` sees the service healthy as soon as its scheduler runs: no pause first,
    readings STARTUP_POLL_SECONDS apart, and the pass is remembered."""
    starting = ["the scheduler is not running (no heartbeat for ever)"]
    found, slept, readings = paced(tmp_path, monkeypatch, [starting, starting, []])
    assert (found, readings) == ([], 3)
    assert slept == pytest.approx(2 * status.STARTUP_POLL_SECONDS)
    assert (tmp_path / "passed").exists()


def test_a_check_that_never_passes_gives_up_after_the_startup_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing = ["last backup failed: pg_dump: connection refused"]
    found, slept, _ = paced(tmp_path, monkeypatch, [failing] * 1000)
    assert found == failing
    assert status.STARTUP_WAIT_SECONDS <= slept <= status.STARTUP_WAIT_SECONDS + 0.5
    assert not (tmp_path / "passed").exists()


def test_after_its_first_pass_the_check_pauses_then_checks_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "passed").touch()
    failing = ["off-site upload failed: bucket unreachable"]
    found, slept, readings = paced(
        tmp_path, monkeypatch, [failing, []], BACKUP_HEALTH_INTERVAL="2s"
    )
    assert (found, readings) == (failing, 1)  # one reading: a failure is reported at once
    assert slept == pytest.approx(2 - status.DOCKER_INTERVAL_SECONDS)  # checks 2 s apart


@pytest.mark.parametrize(
    ("interval", "error"),
    [
        ("61s", "BACKUP_HEALTH_INTERVAL=61s: at most 60s"),
        ("often", 'BACKUP_HEALTH_INTERVAL="often"'),
    ],
)
def test_the_health_interval_is_a_short_duration(interval: str, error: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(error)):
        config.load({"PGDATABASE": "berth", "BACKUP_HEALTH_INTERVAL": interval})
