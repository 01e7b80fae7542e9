"""Alembic: models match migrations, concurrent upgrades serialise, failures roll back."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from testcontainers.community.postgres import PostgresContainer

from berth.db import read_revisions
from berth.preflight import EX_CONFIG
from berth.settings import Settings
from tests.unit.conftest import PASSWORD, ROOT, admin_connection, alembic_config

# Changes the schema, then fails: all of it must be rolled back. It touches no table of the
# service's, so it fails the same way under any service (a generated one has no items).
FAILING_REVISION = """
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table("half_done", sa.Column("id", sa.Integer(), primary_key=True))
    op.execute("SELECT 1 / 0")
"""


def alembic_cli(
    postgres: PostgresContainer,
    database: str = "berth",
    ini: Path = ROOT / "alembic.ini",
    password: str = PASSWORD,
    **settings: str,
) -> subprocess.CompletedProcess[str]:
    """`alembic upgrade head` as the migrate service runs it: settings from the environment."""
    env = {
        **os.environ,
        "POSTGRES_HOST": postgres.get_container_host_ip(),
        "POSTGRES_PORT": str(postgres.get_exposed_port(5432)),
        "POSTGRES_USER": "berth",
        "POSTGRES_PASSWORD": password,
        "POSTGRES_DB": database,
        **settings,
    }
    return subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ini), "upgrade", "head"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def tables(postgres: PostgresContainer, database: str) -> set[str]:
    with admin_connection(postgres, database) as connection:
        rows = connection.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {row[0] for row in rows}


@pytest.fixture
def service_tables(settings: Settings, postgres: PostgresContainer) -> set[str]:
    """The tables of a database at head: the session's, which Alembic's API migrated."""
    return tables(postgres, settings.postgres_db)


def versions(postgres: PostgresContainer, database: str) -> list[str]:
    with admin_connection(postgres, database) as connection:
        return [row[0] for row in connection.execute("SELECT version_num FROM alembic_version")]


def test_revisions_read_without_alembic_match_alembic(tmp_path: Path) -> None:
    """The app reads migration heads from the scripts' assignments (berth.db.read_revisions);
    Alembic must agree, also with a second head, a merge and a branch point."""
    shutil.copytree(ROOT / "migrations", tmp_path / "migrations")
    versions = tmp_path / "migrations" / "versions"
    template = 'revision: str = {rev!r}\ndown_revision = {down!r}\n' + \
        "def upgrade() -> None: ...\ndef downgrade() -> None: ...\n"  # fmt: skip
    for rev, down in (
        ("a2", "0001"),
        ("b2", "0001"),
        ("m3", ("a2", "b2")),
        ("c4", "m3"),
        ("d4", "m3"),
    ):
        (versions / f"{rev}.py").write_text(template.format(rev=rev, down=down))
    ini = tmp_path / "alembic.ini"
    shutil.copy(ROOT / "alembic.ini", ini)
    script = ScriptDirectory.from_config(Config(str(ini)))

    heads, revisions = read_revisions(versions)

    assert heads == set(script.get_heads()) == {"c4", "d4"}
    assert revisions == {rev.revision for rev in script.walk_revisions()}
    assert read_revisions() == (frozenset({"0001"}), frozenset({"0001"}))


def test_models_and_migrations_agree(settings: Settings) -> None:
    command.check(alembic_config(settings))  # raises on any drift


def test_three_concurrent_upgrades_apply_the_schema_once(
    postgres: PostgresContainer, fresh_database: str, service_tables: set[str]
) -> None:
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda _: alembic_cli(postgres, fresh_database), range(3)))
    for result in results:
        assert result.returncode == 0, result.stderr
    assert sum("Running upgrade  -> 0001" in result.stderr for result in results) == 1
    assert versions(postgres, fresh_database) == ["0001"]
    assert tables(postgres, fresh_database) == service_tables


def test_upgrade_at_head_is_a_no_op(postgres: PostgresContainer, fresh_database: str) -> None:
    assert alembic_cli(postgres, fresh_database).returncode == 0
    again = alembic_cli(postgres, fresh_database)
    assert again.returncode == 0
    assert "Running upgrade" not in again.stderr


def test_failing_revision_rolls_back_and_is_named(
    postgres: PostgresContainer, fresh_database: str, tmp_path: Path, service_tables: set[str]
) -> None:
    assert alembic_cli(postgres, fresh_database).returncode == 0
    shutil.copytree(ROOT / "migrations", tmp_path / "migrations")
    (tmp_path / "migrations" / "versions" / "0002_fails_halfway.py").write_text(FAILING_REVISION)
    ini = tmp_path / "alembic.ini"
    shutil.copy(ROOT / "alembic.ini", ini)

    result = alembic_cli(postgres, fresh_database, ini)

    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(
        "berth: migration failed: revision 0002 raised DataError: division by zero"
    )
    assert "Traceback" not in result.stderr
    assert versions(postgres, fresh_database) == ["0001"]
    assert tables(postgres, fresh_database) == service_tables


def test_wrong_password_is_one_readable_line(postgres: PostgresContainer) -> None:
    result = alembic_cli(postgres, password="wrong")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("berth: migration failed: cannot connect to ")
    assert 'password authentication failed for user "berth"' in lines[-1]
    assert "Traceback" not in result.stderr


def test_a_refused_configuration_exits_78_before_connecting(
    postgres: PostgresContainer, fresh_database: str
) -> None:
    """scripts/deploy runs migrate without a preflight of its own: migrate must refuse a bad
    configuration the way preflight does (one line, exit 78) and touch nothing."""
    result = alembic_cli(postgres, fresh_database, WEB_CONCURRENCY="many")
    assert result.returncode == EX_CONFIG
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("berth: configuration error: WEB_CONCURRENCY")
    assert "alembic_version" not in tables(postgres, fresh_database)
