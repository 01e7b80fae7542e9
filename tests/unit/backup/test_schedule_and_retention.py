"""The backup service's pure rules: schedules, backoff, retention, settings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backup import config
from backup.errors import ConfigError
from backup.retention import to_keep
from backup.schedule import Schedule, backoff, format_duration, parse_duration


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_daily_times_run_next_at_the_first_time_after_now() -> None:
    schedule = Schedule.parse("15:00, 03:00", "BACKUP_SCHEDULE")
    assert schedule.next_after(at("2026-11-24T02:59:59")) == at("2026-11-24T03:00:00")
    assert schedule.next_after(at("2026-11-24T03:00:00")) == at("2026-11-24T15:00:00")
    assert schedule.next_after(at("2026-11-24T23:00:00")) == at("2026-11-25T03:00:00")
    assert schedule.period == 12 * 3600


def test_an_interval_runs_one_interval_later() -> None:
    schedule = Schedule.parse("every 6h", "BACKUP_SCHEDULE")
    assert schedule.next_after(1000.0) == 1000.0 + 6 * 3600
    assert schedule.period == 6 * 3600
    assert Schedule.parse("every 3s", "X").period == 3


@pytest.mark.parametrize("text", ["3:00", "25:00", "03:00,", "every", "every 0s", "every 5x"])
def test_a_bad_schedule_names_the_variable(text: str) -> None:
    with pytest.raises(ConfigError, match=f'^BACKUP_SCHEDULE="{text}": use '):
        Schedule.parse(text, "BACKUP_SCHEDULE")


def test_durations() -> None:
    assert parse_duration("90s", "X") == 90
    assert parse_duration("7d", "X") == 7 * 86400
    with pytest.raises(ConfigError, match=r'^X="1\.5h"'):
        parse_duration("1.5h", "X")
    assert format_duration(59) == "59s"
    assert format_duration(3 * 3600 + 1200) == "3h 20m"


def test_backoff_doubles_up_to_its_ceiling() -> None:
    assert [backoff(n, 30, 3600) for n in range(1, 9)] == [
        30, 60, 120, 240, 480, 960, 1920, 3600,
    ]  # fmt: skip
    assert backoff(1, 30, 10) == 30  # a ceiling below the first delay never shortens it


def stamps(*days_ago: float) -> dict[str, datetime]:
    now = datetime(2026, 11, 24, 3, tzinfo=UTC)
    return {f"b{n}": now - timedelta(days=d) for n, d in enumerate(days_ago)}


def test_retention_keeps_the_newest_of_each_day_and_week() -> None:
    # Tuesday 03:00; b1 is earlier the same day, b3 the Sunday before (the previous week)
    backups = stamps(0, 0.1, 1, 2, 9, 30)
    assert to_keep(backups, daily=2, weekly=0) == {"b0", "b2"}
    assert to_keep(backups, daily=0, weekly=2) == {"b0", "b3"}
    assert to_keep(backups, daily=0, weekly=0) == {"b0"}  # the newest, always


def test_retention_never_drops_a_protected_backup() -> None:
    backups = stamps(0, 1, 2, 3)
    assert to_keep(backups, daily=1, weekly=0, protected={"b3", "unknown"}) == {"b0", "b3"}


S3_ENV = {
    "PGDATABASE": "berth",
    "BACKUP_S3_BUCKET": "berth-backups",
    "BACKUP_S3_ENDPOINT": "https://s3.eu-central-003.backblazeb2.com",
    "BACKUP_S3_ACCESS_KEY_ID": "key-id",
    "BACKUP_S3_SECRET_ACCESS_KEY": "secret",
    "BACKUP_AGE_RECIPIENT": "age1" + "q" * 58,
    "BACKUP_PITR_PASSPHRASE": "p" * 32,
}


def test_settings_from_the_environment() -> None:
    settings = config.load(S3_ENV)
    assert settings.s3 is not None
    assert (settings.s3.host, settings.s3.port, settings.s3.prefix) == (
        "s3.eu-central-003.backblazeb2.com", 443, "berth",
    )  # fmt: skip
    assert settings.pitr is not None
    assert settings.pitr.full_every == 7 * 86400
    assert settings.max_age == 2 * 86400 + 3600
    assert config.load({"PGDATABASE": "berth"}).s3 is None  # off-site is opt-in


def test_secrets_come_from_files(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text("from-a-file\n")
    env = {**S3_ENV, "BACKUP_S3_SECRET_ACCESS_KEY": "", "BACKUP_S3_SECRET_ACCESS_KEY_FILE":
           str(secret)}  # fmt: skip
    settings = config.load(env)
    assert settings.s3 is not None
    assert settings.s3.secret_access_key == "from-a-file"
    # Both given: the file wins. An empty file (as `make secrets` creates it) is not given.
    env["BACKUP_S3_SECRET_ACCESS_KEY"] = "from-the-environment"
    assert config.load(env).s3.secret_access_key == "from-a-file"  # type: ignore[union-attr]
    secret.write_text("")
    assert config.load(env).s3.secret_access_key == "from-the-environment"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"BACKUP_S3_ENDPOINT": "s3.amazonaws.com"}, 'BACKUP_S3_ENDPOINT="s3.amazonaws.com"'),
        ({"BACKUP_S3_SECRET_ACCESS_KEY": ""}, "BACKUP_S3_SECRET_ACCESS_KEY"),
        ({"BACKUP_AGE_RECIPIENT": "ssh-ed25519 AAAA"}, "BACKUP_AGE_RECIPIENT must be an age"),
        ({"BACKUP_PITR_PASSPHRASE": "short"}, "BACKUP_PITR_PASSPHRASE (or _FILE) must be set"),
        ({"BACKUP_S3_ENDPOINT": "http://minio:9000"}, "needs https"),
        ({"BACKUP_MAX_AGE_HOURS": "30"}, "BACKUP_MAX_AGE=30h"),
        ({"BACKUP_KEEP_DAILY": "seven"}, 'BACKUP_KEEP_DAILY="seven" is not a whole number'),
        ({"BACKUP_S3_SECRET_ACCESS_KEY_FILE": "/nonexistent"}, "_FILE=/nonexistent"),
    ],
    ids=["endpoint", "no-secret", "recipient", "passphrase", "pitr-http", "old-max-age",
         "number", "missing-file"],
)  # fmt: skip
def test_bad_settings_are_one_line_naming_the_variable(
    change: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        config.load({**S3_ENV, **change})
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_pitr_can_be_turned_off_for_a_plain_http_store() -> None:
    settings = config.load({**S3_ENV, "BACKUP_S3_ENDPOINT": "http://minio:9000",
                            "BACKUP_PITR": "off"})  # fmt: skip
    assert settings.s3 is not None
    assert settings.pitr is None
    assert (settings.s3.port, settings.s3.secure) == (9000, False)
