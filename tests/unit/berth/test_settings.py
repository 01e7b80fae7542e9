"""Configuration errors: one line that names the variable, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from berth.application import build_app
from berth.preflight import EX_CONFIG
from berth.settings import DEV_POSTGRES_PASSWORD, ConfigError, load_settings

ROOT = Path(__file__).resolve().parents[3]
STRONG = "a-strong-production-password"


def error_for(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_missing_password_names_both_ways_to_set_it(monkeypatch: pytest.MonkeyPatch) -> None:
    message = error_for(monkeypatch)
    assert message == (
        "POSTGRES_PASSWORD: required but not set (set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE)"
    )


def test_password_from_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-a-file\n")
    monkeypatch.setenv("POSTGRES_PASSWORD_FILE", str(secret))
    assert load_settings().postgres_password.get_secret_value() == "from-a-file"


def test_unreadable_password_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    message = error_for(monkeypatch, POSTGRES_PASSWORD_FILE=str(missing))
    assert message == f"POSTGRES_PASSWORD_FILE: cannot read {missing}: No such file or directory"


def test_empty_password_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert "is empty" in error_for(monkeypatch, POSTGRES_PASSWORD_FILE=str(empty))


def test_password_and_password_file_conflict(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = tmp_path / "pw"
    secret.write_text("x")
    message = error_for(monkeypatch, POSTGRES_PASSWORD="y", POSTGRES_PASSWORD_FILE=str(secret))
    assert (
        message == "POSTGRES_PASSWORD and POSTGRES_PASSWORD_FILE are both set; set only one of them"
    )


def test_invalid_number_names_the_variable_and_value(monkeypatch: pytest.MonkeyPatch) -> None:
    message = error_for(monkeypatch, POSTGRES_PASSWORD="x", WEB_CONCURRENCY="lots")
    assert message.startswith("WEB_CONCURRENCY: Input should be a valid integer")
    assert "'lots'" in message


def test_bad_values_are_quoted_but_secrets_never(monkeypatch: pytest.MonkeyPatch) -> None:
    message = error_for(monkeypatch, POSTGRES_PASSWORD="", WEB_CONCURRENCY="0")
    assert "WEB_CONCURRENCY: Input should be greater than or equal to 1 (got '0')" in message
    assert "POSTGRES_PASSWORD: must not be empty" in message
    assert "POSTGRES_PASSWORD: must not be empty (got" not in message


def test_pool_budget_must_fit_max_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    message = error_for(monkeypatch, POSTGRES_PASSWORD="x", WEB_CONCURRENCY="8", DB_POOL_SIZE="10")
    assert "exceeds POSTGRES_MAX_CONNECTIONS (100)" in message


@pytest.mark.parametrize(("max_connections", "fits"), [(50, True), (49, False)])
def test_pool_budget_is_the_documented_formula_to_the_connection(
    monkeypatch: pytest.MonkeyPatch, max_connections: int, fits: bool
) -> None:
    """README: WEB_CONCURRENCY x (DB_POOL_SIZE + DB_MAX_OVERFLOW) x 2 <=
    POSTGRES_MAX_CONNECTIONS - 10. Here 2 x (8 + 2) x 2 = 40: it fits 50 - 10, not 49 - 10,
    so the overflow counts, the deploy overlap doubles, and 10 stay reserved."""
    env = {"WEB_CONCURRENCY": "2", "DB_POOL_SIZE": "8", "DB_MAX_OVERFLOW": "2"}
    env |= {"POSTGRES_PASSWORD": "x", "POSTGRES_MAX_CONNECTIONS": str(max_connections)}
    if fits:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        assert load_settings().postgres_max_connections == max_connections
    else:
        message = error_for(monkeypatch, **env)
        assert message == (
            "DB_POOL_SIZE + DB_MAX_OVERFLOW (10) x WEB_CONCURRENCY (2) x 2 (deploy overlap) "
            "exceeds POSTGRES_MAX_CONNECTIONS (49) minus 10 reserved"
        )


@pytest.mark.parametrize(
    "domain", ["https://example.com", "example.com/app", "exa mple.com", "-bad.example", "a..b", ""]
)
def test_malformed_domain(monkeypatch: pytest.MonkeyPatch, domain: str) -> None:
    message = error_for(monkeypatch, POSTGRES_PASSWORD="x", DOMAIN=domain)
    assert message.startswith(f"DOMAIN={domain!r} is not a host name")


def test_production_refuses_the_development_password(monkeypatch: pytest.MonkeyPatch) -> None:
    message = error_for(
        monkeypatch,
        POSTGRES_PASSWORD=DEV_POSTGRES_PASSWORD,
        DOMAIN="api.example.com",
        ACME_EMAIL="ops@example.com",
    )
    assert message.startswith("POSTGRES_PASSWORD is the development default, refused in production")


def test_production_requires_an_acme_email(monkeypatch: pytest.MonkeyPatch) -> None:
    message = error_for(monkeypatch, POSTGRES_PASSWORD=STRONG, DOMAIN="api.example.com")
    assert message == "ACME_EMAIL must be an e-mail address in production (DOMAIN=api.example.com)"


def test_production_settings_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "POSTGRES_PASSWORD": STRONG,
        "DOMAIN": "api.example.com",
        "ACME_EMAIL": "ops@example.com",
    }.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.production
    assert not settings.development_defaults


def test_app_factory_exits_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", "many")
    with pytest.raises(SystemExit) as caught:
        build_app(title="t")
    assert str(caught.value).startswith("berth: configuration error: POSTGRES_PASSWORD: required")
    assert "WEB_CONCURRENCY" in str(caught.value)


def run_preflight(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if key not in env}
    return subprocess.run(
        [sys.executable, "-m", "berth.preflight"],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=False,
    )


def test_preflight_exits_78_with_one_line() -> None:
    result = run_preflight(POSTGRES_PASSWORD=DEV_POSTGRES_PASSWORD, DOMAIN="api.example.com")
    assert result.returncode == EX_CONFIG
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("berth: configuration error: POSTGRES_PASSWORD is the development")


def test_preflight_warns_about_development_defaults() -> None:
    result = run_preflight(POSTGRES_PASSWORD=DEV_POSTGRES_PASSWORD)
    assert result.returncode == 0
    assert "berth: configuration ok, local mode" in result.stderr
    assert "development-only defaults" in result.stderr


def test_compose_fallback_password_is_the_refused_one() -> None:
    compose = (ROOT / "compose.yaml").read_text()
    assert f"POSTGRES_PASSWORD:-{DEV_POSTGRES_PASSWORD}}}" in compose


def test_preflight_warns_about_a_production_password_in_the_environment(tmp_path: Path) -> None:
    production = {"DOMAIN": "api.example.com", "ACME_EMAIL": "ops@example.com"}
    in_environment = run_preflight(POSTGRES_PASSWORD=STRONG, **production)
    assert in_environment.returncode == 0
    assert "POSTGRES_PASSWORD is in the environment" in in_environment.stderr
    secret = tmp_path / "postgres_password"
    secret.write_text(STRONG)
    from_file = run_preflight(POSTGRES_PASSWORD_FILE=str(secret), **production)
    assert from_file.returncode == 0
    assert "warning" not in from_file.stderr
