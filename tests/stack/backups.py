"""Helpers shared by the backup tests: run the backup command, write and read items."""

from __future__ import annotations

import re
import subprocess

from tests.stack.harness import Stack


def backup(
    stack: Stack, *args: str, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return stack.run("exec", "-T", "backup", "backup", *args, check=check, input=input)


def backup_now(stack: Stack) -> str:
    """Takes a backup; returns its file name."""
    result = backup(stack, "now")
    match = re.search(r"wrote (\S+\.dump)", result.stderr)
    assert match, result.stderr
    return match.group(1)


def create(stack: Stack, *names: str) -> None:
    with stack.client() as client:
        for name in names:
            assert client.post("/api/items", json={"name": name, "price": "1"}).status_code == 201


def names_in_db(stack: Stack, database: str = "berth") -> set[str]:
    rows = stack.run(
        "exec", "-T", "db", "psql", "-XAtq", "-U", "berth", "-d", database,
        "-c", "SELECT name FROM items",
    ).stdout  # fmt: skip
    return set(rows.split())


def databases(stack: Stack) -> set[str]:
    return set(stack.psql("SELECT datname FROM pg_database").split())
