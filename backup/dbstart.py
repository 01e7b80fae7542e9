"""The db container's entrypoint: the Postgres image's own (docker-entrypoint.sh), plus
continuous WAL archiving to the bucket when point-in-time recovery is configured.

    archive_mode=on, archive_command='pgbackrest archive-push %p',
    archive_timeout=BACKUP_WAL_ARCHIVE_TIMEOUT (a quiet server still ships its last writes)

The PGBACKREST_* settings reach archive_command through Postgres's environment. A bad
setting stops the database from starting, with one line naming it, rather than running
with an archive that silently does not work.
"""

from __future__ import annotations

import os
import sys

from backup.config import load_pitr, load_s3
from backup.errors import EX_CONFIG, ConfigError
from backup.pitr import pgbackrest_env


def password_from_file(env: dict[str, str]) -> None:
    """POSTGRES_PASSWORD from POSTGRES_PASSWORD_FILE, as the official image's entrypoint does
    itself, for images that only know POSTGRES_PASSWORD (such as Debian-based stand-ins). The
    password stays in this process's environment, never in the container's configuration."""
    path = env.pop("POSTGRES_PASSWORD_FILE", "")
    if path and not env.get("POSTGRES_PASSWORD"):
        with open(path, encoding="utf-8") as secret:
            env["POSTGRES_PASSWORD"] = secret.read().rstrip("\n")


def main(args: list[str]) -> int:
    env = dict(os.environ)
    try:
        password_from_file(env)
    except OSError as error:
        print(f"berth-postgres: POSTGRES_PASSWORD_FILE: {error.strerror}", file=sys.stderr)
        return EX_CONFIG
    try:
        s3 = load_s3(env)
        pitr = load_pitr(env, s3)
    except ConfigError as error:
        print(f"berth-postgres: configuration error: {error}", file=sys.stderr)
        return EX_CONFIG
    if s3 is not None and pitr is not None:
        pgdata = env.get("PGDATA", "") or "/var/lib/postgresql/data"
        env.update(pgbackrest_env(s3, pitr, pgdata=pgdata, pg_user=env.get("POSTGRES_USER", "")))
        if args[:1] == ["postgres"]:
            args = [
                *args,
                "-c", "archive_mode=on",
                "-c", "archive_command=pgbackrest archive-push %p",
                "-c", f"archive_timeout={pitr.archive_timeout}",
            ]  # fmt: skip
    if args[:1] == ["pgbackrest"]:
        # `docker compose exec -u postgres db berth-postgres pgbackrest check`: pgBackRest
        # with the settings archive_command has.
        if s3 is None or pitr is None:
            print("berth-postgres: point-in-time recovery is not configured", file=sys.stderr)
            return EX_CONFIG
        os.execvpe("pgbackrest", args, env)  # noqa: S606
    os.execvpe("docker-entrypoint.sh", ["docker-entrypoint.sh", *args], env)  # noqa: S606
    return 0  # not reached: exec replaces this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["postgres"]))
