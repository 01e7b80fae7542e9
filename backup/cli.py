"""backup: Berth's database backups. In the stack:

docker compose exec backup backup now              back up now (dump, off-site copy,
                                                   base backup, retention)
docker compose exec backup backup list             backups, off-site copies, PITR window
docker compose exec backup backup verify           verify the newest backup now
docker compose exec backup backup restore FILE     restore a local dump (refused while
                                                   the app is connected; --force)
docker compose exec -T backup backup restore --offsite latest --identity - < key.txt
                                                   restore from the bucket
backup/restore-to TIME|latest                      point-in-time restore (host script)
docker compose run --rm --no-deps -T backup pitr-passphrase --identity - < key.txt
                                                   print pgBackRest's passphrase (recovery)
"""

from __future__ import annotations

import argparse
import os
import sys

from backup import config
from backup.errors import EX_CONFIG, BackupError, ConfigError, Stopping
from backup.offsite import age_recipient_works
from backup.operations import Operations
from backup.restore import fetch_passphrase, restore_dump, restore_point_in_time
from backup.service import Service
from backup.status import metrics, paced_health, snapshot
from backup.tools import log


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="backup", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("schedule", help="run the service: backups, copies, verification")
    commands.add_parser("now", help="back up now")
    commands.add_parser("list", help="list backups (newest first) and off-site copies")
    commands.add_parser("prune", help="apply retention now")
    commands.add_parser("verify", help="restore the newest backup into a scratch database")
    commands.add_parser("health", help="the health check: ok, or every problem in one line")
    commands.add_parser("metrics", help="print the Prometheus metrics")
    restore = commands.add_parser("restore", help="restore a dump into the database")
    restore.add_argument("name", metavar="FILE", nargs="?", default="")
    restore.add_argument(
        "--force",
        action="store_true",
        help="go ahead although the app is connected (disconnects it)",
    )
    restore.add_argument(
        "--offsite",
        action="store_true",
        help="FILE (or latest) from the bucket, decrypted with --identity",
    )
    restore.add_argument(
        "--identity",
        default="",
        metavar="KEYFILE",
        help="the age private key; - reads it from standard input",
    )
    pitr = commands.add_parser(
        "pitr-restore", help="(db stopped) restore the data directory to TIME or latest"
    )
    pitr.add_argument("target", metavar="TIME")
    pitr.add_argument("--check", action="store_true", help="check only; change nothing")
    commands.add_parser("pitr-adopt", help="archive this (new) cluster in the existing bucket")
    passphrase = commands.add_parser(
        "pitr-passphrase", help="print the PITR passphrase stored in the bucket"
    )
    passphrase.add_argument("--identity", required=True, metavar="KEYFILE")
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return run(args)
    except ConfigError as error:
        log(f"configuration error: {error}")
        return EX_CONFIG
    except BackupError as error:
        log(f"error: {error}")
        return 1
    except (Stopping, KeyboardInterrupt):
        log("interrupted")
        return 130


def run(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    if args.command == "pitr-passphrase":
        # Recovery on a new server starts without the passphrase: it is what this reads.
        env["BACKUP_PITR"] = "off"
    settings = config.load(env)

    if args.command == "health":
        found = paced_health(settings)
        print("; ".join(found) if found else "ok")
        return 1 if found else 0
    if args.command == "metrics":
        print(metrics(snapshot(settings)), end="")
        return 0
    if args.command == "schedule":
        if settings.s3 is not None:
            age_recipient_works(settings.age_recipient)
        return Service(settings).run()

    ops = Operations(settings)
    if args.command == "list":
        print("\n".join(ops.listing()))
        return 0
    if args.command == "pitr-passphrase":
        print(fetch_passphrase(ops, args.identity))
        return 0
    with ops.exclusive():
        return locked_command(args, settings, ops)


def locked_command(args: argparse.Namespace, settings: config.Settings, ops: Operations) -> int:
    if args.command == "now":
        ops.dump()
        failed = False
        if ops.offsite is not None:
            try:
                ops.upload()
                ops.prune_offsite()
            except BackupError:
                failed = True  # logged; the local backup stands
        if ops.pgbackrest is not None and failed:
            log("skipped the base backup: the bucket is unreachable")
        elif ops.pgbackrest is not None:
            try:
                # Everything written so far reaches the bucket: a base backup when one is
                # due, else the current WAL segment, archived now rather than at the next
                # archive_timeout.
                assert settings.pitr is not None
                ops.base_backup(unless_newer_than=settings.pitr.base_every, else_flush=True)
            except BackupError:
                failed = True
        ops.prune()
        return 1 if failed else 0
    if args.command == "prune":
        ops.prune()
        if ops.offsite is not None:
            ops.prune_offsite()
        return 0
    if args.command == "verify":
        ops.verify()
        return 0
    if args.command == "restore":
        if not args.name:
            raise BackupError(
                "which backup? usage: restore FILE [--force] (see: list), or "
                "restore --offsite FILE|latest --identity KEYFILE"
            )
        restore_dump(ops, args.name, force=args.force, offsite=args.offsite, identity=args.identity)
        return 0
    if args.command == "pitr-restore":
        restore_point_in_time(settings, ops, args.target, check_only=args.check)
        return 0
    if args.command == "pitr-adopt":
        if ops.pgbackrest is None:
            raise BackupError("point-in-time recovery is not configured")
        ops.pgbackrest.adopt()
        log("this cluster is now the archive's current one; taking a full base backup")
        ops.pgbackrest.run("backup", "--type=full", timeout=6 * 3600)
        ops.state.succeeded("base")
        return 0
    raise BackupError(f"unknown command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
