"""Running the real tools (psql, pg_dump, pg_restore, age, rclone, pgbackrest) and saying
what happened, one line at a time."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from backup.errors import BackupError


def log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(f"{stamp} backup: {message}", file=sys.stderr, flush=True)


def one_line(text: str, limit: int = 400) -> str:
    """Tool output as one line: whitespace collapsed, long output cut at the end."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def run(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    what: str = "",
    timeout: float | None = None,
    input: str | None = None,
) -> str:
    """Run a command; its stdout, or a BackupError with its stderr as one line."""
    try:
        result = subprocess.run(
            list(args),
            env=env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BackupError(f"{what or args[0]}: no answer in {timeout:.0f}s") from None
    except OSError as error:
        raise BackupError(f"{what or args[0]}: {error.strerror}") from None
    if result.returncode != 0:
        detail = one_line(result.stderr or result.stdout) or f"exit status {result.returncode}"
        raise BackupError(f"{what or args[0]}: {detail}")
    return result.stdout


def psql(
    sql: str, env: Mapping[str, str], *, database: str = "postgres", timeout: float = 60
) -> str:
    """Rows as text (fields separated by |), from SQL run with ON_ERROR_STOP."""
    return run(
        ["psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-d", database, "-c", sql],
        env=env,
        what="psql",
        timeout=timeout,
    ).strip()


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def restore_into_new_database(
    dump: Path, database: str, env: Mapping[str, str], *, what: str = ""
) -> None:
    """Create `database` afresh (dropping a leftover of the same name) and restore the dump
    into it, in one transaction that stops at the first error."""
    psql(f"DROP DATABASE IF EXISTS {quote_identifier(database)}", env)
    psql(f"CREATE DATABASE {quote_identifier(database)}", env)
    run(
        ["pg_restore", "--exit-on-error", "--single-transaction", "--no-owner",
         f"--dbname={database}", str(dump)],
        env=env,
        what=what,
    )  # fmt: skip


def alembic_revision(database: str, env: Mapping[str, str]) -> str:
    """The database's Alembic revision, or "none" when it has no alembic_version table.
    Two queries: Postgres resolves every table a statement names before it runs, so one
    that reads alembic_version fails where there is none, whatever CASE guards it."""
    if psql("SELECT to_regclass('alembic_version') IS NULL", env, database=database) == "t":
        return "none"
    return psql(
        "SELECT coalesce(max(version_num), 'none') FROM alembic_version", env, database=database
    )
