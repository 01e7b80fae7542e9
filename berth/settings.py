"""Every runtime setting, read once from the environment (and `*_FILE` secrets).

Compose's `.env` feeds these variables; `.env.example` documents each one. A bad or
missing value stops start-up with one line naming the variable (`ConfigError`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from sqlalchemy import URL

# Must match the fallback in compose.yaml: it is what a laptop runs with when there is no
# `.env`, and production mode refuses it.
DEV_POSTGRES_PASSWORD = "berth-dev-only-password"  # noqa: S105 - a known, refused value
LOCAL_DOMAIN = "localhost"
# Settings whose value may come from a file named by `<NAME>_FILE` (Docker secrets).
SECRET_FIELDS = ("postgres_password",)
# During a rolling deploy the old and new app containers run side by side, so the pool
# budget has to fit twice under max_connections, with room left for migrate, backups and
# an operator's psql.
DEPLOY_OVERLAP = 2
RESERVED_CONNECTIONS = 10
# The app container's memory beyond its workers: uvicorn's supervisor, and headroom for a
# worker's spike between two checks of its budget.
APP_BASE_MEMORY_MB = 150

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*$", re.IGNORECASE
)


class ConfigError(Exception):
    """Invalid configuration, worded for the operator who has to fix `.env`."""


class SecretFileSource(PydanticBaseSettingsSource):
    """Reads `<NAME>_FILE` for secret settings, the Docker secrets convention."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        if field_name not in SECRET_FIELDS:
            return None, field_name, False
        env_name = field_name.upper()
        file_var = f"{env_name}_FILE"
        path = os.environ.get(file_var)
        if not path:
            return None, field_name, False
        if os.environ.get(env_name):
            raise ConfigError(f"{env_name} and {file_var} are both set; set only one of them")
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{file_var}: cannot read {path}: {exc.strerror}") from None
        if not value:
            raise ConfigError(f"{file_var}: {path} is empty")
        return value, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            value, key, _ = self.get_field_value(field, name)
            if value is not None:
                values[key] = value
        return values


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    # Where the app is served. Anything but "localhost" means production mode.
    domain: str = LOCAL_DOMAIN
    acme_email: str = ""

    postgres_host: str = "db"
    postgres_port: int = Field(default=5432, ge=1, le=65535)
    postgres_user: str = Field(default="berth", min_length=1)
    postgres_password: SecretStr
    postgres_db: str = Field(default="berth", min_length=1)
    postgres_max_connections: int = Field(default=100, ge=10)

    web_concurrency: int = Field(default=2, ge=1, le=64)
    # Kept connections, with no overflow: an overflow connection is opened for one request
    # and closed after it, and under steady load that churn cost more CPU than the queries.
    db_pool_size: int = Field(default=10, ge=1, le=100)
    db_max_overflow: int = Field(default=0, ge=0, le=100)
    db_pool_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    db_connect_timeout_seconds: int = Field(default=3, ge=1, le=60)
    db_statement_timeout_ms: int = Field(default=10_000, ge=0)
    # Longer than the statement timeout, which ends slow queries with a clearer error; this
    # one ends waits that no database timeout can (see berth/deadline.py).
    request_timeout_seconds: float = Field(default=15.0, gt=0, le=300)
    # Request bodies over this get 413, whatever their method or framing (berth/runtime.py).
    max_request_body_bytes: int = Field(default=1024 * 1024, ge=0, le=1024**3)
    # Requests one worker runs at once; more wait ADMISSION_WAIT_MS for a slot, then get 503
    # with Retry-After (berth/admission.py). 0: the worker's database connections,
    # DB_POOL_SIZE + DB_MAX_OVERFLOW. /health/* and /metrics are never limited.
    max_in_flight_per_worker: int = Field(default=0, ge=0, le=10_000)
    admission_wait_ms: int = Field(default=30, ge=0, le=60_000)

    # A worker over this resident memory restarts gracefully (0: no limit). The container's
    # limit, APP_MEMORY_LIMIT_MB, must leave room for every worker at its budget.
    worker_max_rss_mb: int = Field(default=0, ge=0)
    app_memory_limit_mb: int | None = Field(default=None, ge=64)

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    app_version: str = "dev"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        assert isinstance(env_settings, EnvSettingsSource)
        return init_settings, env_settings, SecretFileSource(settings_cls)

    @field_validator("postgres_password")
    @classmethod
    def _password_not_empty(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value():
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> Settings:
        if not _HOSTNAME.match(self.domain):
            raise ValueError(
                f"DOMAIN={self.domain!r} is not a host name (expected e.g. api.example.com, "
                "without scheme, port or path)"
            )
        per_worker = self.db_pool_size + self.db_max_overflow
        budget = self.postgres_max_connections - RESERVED_CONNECTIONS
        if per_worker * self.web_concurrency * DEPLOY_OVERLAP > budget:
            raise ValueError(
                f"DB_POOL_SIZE + DB_MAX_OVERFLOW ({per_worker}) x WEB_CONCURRENCY "
                f"({self.web_concurrency}) x {DEPLOY_OVERLAP} (deploy overlap) exceeds "
                f"POSTGRES_MAX_CONNECTIONS ({self.postgres_max_connections}) minus "
                f"{RESERVED_CONNECTIONS} reserved"
            )
        needed = self.web_concurrency * self.worker_max_rss_mb + APP_BASE_MEMORY_MB
        if (
            self.app_memory_limit_mb
            and self.worker_max_rss_mb
            and self.app_memory_limit_mb < needed
        ):
            raise ValueError(
                f"APP_MEMORY_LIMIT_MB ({self.app_memory_limit_mb}) is below WEB_CONCURRENCY "
                f"({self.web_concurrency}) x WORKER_MAX_RSS_MB ({self.worker_max_rss_mb}) + "
                f"{APP_BASE_MEMORY_MB} = {needed}: workers would be OOM-killed mid-request "
                "before their own budget restarts them gracefully"
            )
        if self.production:
            if self.postgres_password.get_secret_value() == DEV_POSTGRES_PASSWORD:
                raise ValueError(
                    f"POSTGRES_PASSWORD is the development default, refused in production "
                    f"(DOMAIN={self.domain}); set a strong password in .env"
                )
            if "@" not in self.acme_email:
                raise ValueError(
                    f"ACME_EMAIL must be an e-mail address in production (DOMAIN={self.domain})"
                )
        return self

    @property
    def in_flight_per_worker(self) -> int:
        return self.max_in_flight_per_worker or self.db_pool_size + self.db_max_overflow

    @property
    def production(self) -> bool:
        return self.domain != LOCAL_DOMAIN

    @property
    def development_defaults(self) -> bool:
        return self.postgres_password.get_secret_value() == DEV_POSTGRES_PASSWORD

    @property
    def database_url(self) -> URL:
        return URL.create(
            "postgresql+psycopg",
            username=self.postgres_user,
            password=self.postgres_password.get_secret_value(),
            host=self.postgres_host,
            port=self.postgres_port,
            database=self.postgres_db,
        )


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, or a `ConfigError` with a one-line explanation."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"]).upper()
        message = error["msg"].removeprefix("Value error, ")
        if location and location.lower() not in SECRET_FIELDS and "input" in error:
            message += f" (got {error['input']!r})"
        if error["type"] == "missing":
            message = "required but not set"
            if location.lower() in SECRET_FIELDS:
                message += f" (set {location} or {location}_FILE)"
        problems.append(f"{location}: {message}" if location else message)
    return "; ".join(problems)
