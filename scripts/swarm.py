"""Deploy Berth to a Docker Swarm, in the order Swarm itself does not keep.

    scripts/swarm deploy TAG     migrate with APP_IMAGE:TAG, then roll the app to it
    scripts/swarm rollback       the app back to the release before (no migration)
    scripts/swarm status         where every task of the stack runs

It drives the Docker CLI, so DOCKER_HOST or `docker context use` picks the manager (ssh://
works). Settings come from the environment, then from `.env` (or --env-file), as with
Compose. `deploy` does, in order:

  1. Checks: a manager answers; APP_IMAGE is set; one node carries the berth.db=true label
     (unless POSTGRES_HOST names an external Postgres); the database connections of every
     task fit under POSTGRES_MAX_CONNECTIONS. The Postgres password secret is created if
     missing (from POSTGRES_PASSWORD, or generated).
  2. `docker stack deploy` of compose.swarm.yaml without `migrate` and `app`: Postgres,
     Traefik and the socket proxy. Waits until they run (healthy).
  3. The `migrate` job alone, with the new image; waits for it to complete. A failure exits
     non-zero naming the failing revision: the app was not touched, so the running version
     keeps serving on the unchanged schema (the upgrade is one transaction).
  4. The `app` service alone, with the new image. Swarm rolls it task by task (start-first,
     gated on the healthcheck) and rolls back by itself if a new task fails within the
     monitor window; this waits for the outcome and exits non-zero after a rollback.
`docker stack deploy` of a file re-runs every job in it, so steps 2-4 each deploy only
their own services from the stack file (services left out of a deploy are left alone).
`rollback` runs step 4 alone with the release before the current one (a label on the app
service keeps its tag): the schema is never downgraded, so migrations must keep the
previous release working (README: "Migrations during a rolling deploy").
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from dotenv import dotenv_values

ROOT = Path(__file__).resolve().parent.parent
STACK_FILE = ROOT / "compose.swarm.yaml"
DB_LABEL = "berth.db"
# Services with a role of their own in the deploy; every other one is infrastructure.
MIGRATE, APP, DB = "migrate", "app", "db"
RESERVED_CONNECTIONS = 10  # berth/settings.py: room for migrate, backups and psql
POLL_SECONDS = 1.0
FAILED_TASK_STATES = {"failed", "rejected", "orphaned"}


class SwarmError(Exception):
    """A deploy that cannot go on, in one line for the operator."""


STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"swarm: [{time.monotonic() - STARTED:3.0f}s] {message}", file=sys.stderr, flush=True)


# -- settings ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    stack: str
    environment: dict[str, str]  # what the Docker CLI runs with

    @property
    def image(self) -> str:
        return self.environment["APP_IMAGE"]

    def get(self, name: str, default: str = "") -> str:
        return self.environment.get(name) or default

    def number(self, name: str, default: int) -> int:
        value = self.get(name, str(default))
        if not value.isdigit():
            raise SwarmError(f"{name}={value!r} is not a whole number")
        return int(value)

    @property
    def external_db(self) -> bool:
        return self.get("POSTGRES_HOST", DB) != DB

    def service(self, name: str) -> str:
        return f"{self.stack}_{name}"


def load_settings(env_file: Path | None, stack: str) -> Settings:
    """The environment over the env file (Compose's precedence)."""
    path = env_file or ROOT / ".env"
    if env_file is not None and not env_file.exists():
        raise SwarmError(f"--env-file {env_file}: no such file")
    from_file = {k: v for k, v in dotenv_values(path).items() if v is not None}
    environment = {**from_file, **os.environ}
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", stack):
        raise SwarmError(f"stack name {stack!r}: use lowercase letters, digits, - and _")
    if not environment.get("APP_IMAGE"):
        raise SwarmError(
            "APP_IMAGE is not set: name the app image's repository in your registry "
            "(e.g. registry.example.com/team/berth-app), in .env or the environment"
        )
    return Settings(stack=stack, environment=environment)


def check_connection_budget(settings: Settings) -> None:
    """Every app task's pool, plus the extra task of a rolling update, must fit under
    max_connections with room to spare (berth/settings.py does this per container)."""
    replicas = settings.number("APP_REPLICAS", 2)
    per_task = settings.number("DB_POOL_SIZE", 10) + settings.number("DB_MAX_OVERFLOW", 0)
    budget = settings.number("POSTGRES_MAX_CONNECTIONS", 100) - RESERVED_CONNECTIONS
    tasks = replicas + 1  # start-first with parallelism 1: one extra task at a time
    if tasks * per_task > budget:
        raise SwarmError(
            f"(APP_REPLICAS {replicas} + 1 during an update) x (DB_POOL_SIZE + "
            f"DB_MAX_OVERFLOW = {per_task}) exceeds POSTGRES_MAX_CONNECTIONS - "
            f"{RESERVED_CONNECTIONS} = {budget}: lower the pool or raise max_connections"
        )


# -- the Docker CLI ----------------------------------------------------------------------
def docker(
    settings: Settings, *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(  # noqa: S603 - fixed arguments, no shell
            ["docker", *args],  # noqa: S607 - the Docker CLI on PATH is the point
            env=settings.environment,
            cwd=ROOT,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    except FileNotFoundError:
        raise SwarmError("the docker CLI is not on PATH") from None
    except subprocess.TimeoutExpired:
        raise SwarmError(f"docker {' '.join(args[:2])} gave no answer within 300s") from None
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise SwarmError(f"docker {args[0]} {args[1] if len(args) > 1 else ''}: "
                         f"{detail[-1] if detail else f'exit {result.returncode}'}")  # fmt: skip
    return result


def inspect(settings: Settings, *objects: str) -> list[dict[str, Any]]:
    if not objects:
        return []
    # A task can vanish between listing and inspecting it (Swarm prunes task history): the
    # CLI then exits 1 but still prints the objects it found.
    result = docker(settings, "inspect", *objects, check=False)
    found: list[dict[str, Any]] = json.loads(result.stdout or "[]")
    return found


def service_spec(settings: Settings, name: str) -> dict[str, Any] | None:
    result = docker(settings, "service", "inspect", settings.service(name), check=False)
    if result.returncode != 0:
        return None
    service: dict[str, Any] = json.loads(result.stdout)[0]
    return service


def tasks(settings: Settings, name: str) -> list[dict[str, Any]]:
    ids = docker(settings, "service", "ps", "--quiet", "--no-trunc", settings.service(name))
    return inspect(settings, *ids.stdout.split())


# -- checks ------------------------------------------------------------------------------
def check_manager(settings: Settings) -> None:
    result = docker(settings, "info", "--format", "{{json .Swarm}}", check=False)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no answer"])[-1]
        raise SwarmError(f"cannot reach Docker (DOCKER_HOST or the docker context): {reason}")
    swarm = json.loads(result.stdout)
    if not swarm.get("ControlAvailable"):
        raise SwarmError(
            "this Docker engine is not a Swarm manager: point DOCKER_HOST (or `docker context "
            "use`) at a manager, or run `docker swarm init` to make one"
        )


def check_db_node(settings: Settings) -> str:
    nodes = docker(
        settings,
        "node",
        "ls",
        "--filter",
        f"node.label={DB_LABEL}=true",
        "--format",
        "{{.Hostname}}",
    ).stdout.split()
    if len(nodes) != 1:
        found = ", ".join(nodes) if nodes else "none"
        raise SwarmError(
            f"exactly one node must carry the label {DB_LABEL}=true (found: {found}): "
            f"Postgres is pinned to the node that holds its volume; run `docker node update "
            f"--label-add {DB_LABEL}=true NODE` on a manager"
        )
    return nodes[0]


def ensure_password_secret(settings: Settings) -> None:
    name = f"{settings.stack}_postgres_password"
    if docker(settings, "secret", "inspect", name, check=False).returncode == 0:
        return
    password = settings.get("POSTGRES_PASSWORD")
    origin = "from POSTGRES_PASSWORD"
    if not password:
        password, origin = secrets.token_urlsafe(32), "generated"
    docker(settings, "secret", "create", "--label", f"com.docker.stack.namespace={settings.stack}",
           name, "-", stdin=password)  # fmt: skip
    say(f"created the Swarm secret {name} ({origin})")


# -- the stack file, in parts --------------------------------------------------------------
def load_stack_file() -> dict[str, Any]:
    try:
        document = yaml.safe_load(STACK_FILE.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SwarmError(f"cannot read {STACK_FILE.name}: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("services"), dict):
        raise SwarmError(f"{STACK_FILE.name} has no services")
    return document


def part(document: Mapping[str, Any], services: Sequence[str]) -> str:
    """The stack file with only `services`: anchors resolved, `${...}` left for the CLI."""
    kept = {name: document["services"][name] for name in services}
    text: str = yaml.safe_dump({**document, "services": kept}, sort_keys=False)
    return text


def infrastructure(document: Mapping[str, Any], settings: Settings) -> list[str]:
    skipped = {MIGRATE, APP} | ({DB} if settings.external_db else set())
    return [name for name in document["services"] if name not in skipped]


def config_version(document: Mapping[str, Any]) -> str:
    """A hash of every file the stack turns into a Swarm config: configs cannot change in
    place, so their names carry it, and a changed file becomes a new config."""
    digest = hashlib.sha256()
    for name, config in sorted(document.get("configs", {}).items()):
        digest.update(name.encode() + b"\0" + (ROOT / config["file"]).read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def stack_variables(
    settings: Settings, tag: str, version: str, previous: str = ""
) -> dict[str, str]:
    """What compose.swarm.yaml needs beyond the operator's settings: the release, and the
    values Compose derives with ${VAR:+...}, which the Docker CLI's stack loader lacks."""
    production = settings.get("DOMAIN", "localhost") != "localhost"
    return {
        "BERTH_STACK": settings.stack,
        "APP_TAG": tag,
        "BERTH_PREVIOUS_TAG": previous,
        "BERTH_CONFIG_VERSION": version,
        "BERTH_CERT_RESOLVER": "letsencrypt" if production else "",
        "BERTH_HSTS": "hsts@file," if production else "",
        "BERTH_BACKEND_INTERNAL": "false" if settings.external_db else "true",
    }


def stack_deploy(settings: Settings, document: Mapping[str, Any], services: Sequence[str]) -> None:
    docker(settings, "stack", "deploy", "--detach=true", "--resolve-image=always",
           "--compose-file", "-", settings.stack, stdin=part(document, services))  # fmt: skip


# -- waiting for Swarm -------------------------------------------------------------------
def deadline_passed(started: float, timeout: float) -> bool:
    return time.monotonic() - started > timeout


def last_error(found: Sequence[Mapping[str, Any]]) -> str:
    errors = [t for t in found if t["Status"].get("Err")]
    if not errors:
        return ""
    newest = max(errors, key=lambda t: t["Status"]["Timestamp"])
    return f"{newest['Status']['State']}: {newest['Status']['Err']}"


def converged(settings: Settings, name: str) -> tuple[bool, str]:
    """Whether every task the service wants runs its current spec (healthy: Swarm counts a
    task with a healthcheck as running only once it is healthy), and a summary."""
    spec = service_spec(settings, name)
    if spec is None:
        return False, "not created yet"
    image = spec["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
    found = tasks(settings, name)
    wanted = [t for t in found if t["DesiredState"] == "running"]
    running = [
        t
        for t in wanted
        if t["Status"]["State"] == "running" and t["Spec"]["ContainerSpec"]["Image"] == image
    ]
    replicated = spec["Spec"]["Mode"].get("Replicated")
    expected = replicated["Replicas"] if replicated else max(len(wanted), 1)
    update = (spec.get("UpdateStatus") or {}).get("State", "")
    done = len(running) == len(wanted) == expected and update not in (
        "updating",
        "rollback_started",
    )
    states = ", ".join(sorted(t["Status"]["State"] for t in wanted)) or "no tasks"
    return done, f"{len(running)}/{expected} running ({states}) {last_error(found)}".strip()


def wait_converged(settings: Settings, names: Sequence[str], timeout: float) -> None:
    started = time.monotonic()
    pending = list(names)
    while pending:
        status = {name: converged(settings, name) for name in pending}
        pending = [name for name, (done, _) in status.items() if not done]
        if pending and deadline_passed(started, timeout):
            detail = "; ".join(f"{name}: {status[name][1]}" for name in pending)
            raise SwarmError(f"not running after {timeout:.0f}s: {detail}")
        if pending:
            time.sleep(POLL_SECONDS)


def job_run(settings: Settings) -> tuple[str, dict[str, Any] | None]:
    """The state of the migrate job's current run, and its task."""
    spec = service_spec(settings, MIGRATE)
    assert spec is not None
    iteration = spec.get("JobStatus", {}).get("JobIteration", {}).get("Index", 0)
    current = [t for t in tasks(settings, MIGRATE)
               if t.get("JobIteration", {}).get("Index", 0) == iteration]  # fmt: skip
    for task in current:
        if task["Status"]["State"] == "complete":
            return "complete", task
    for task in current:
        if task["Status"]["State"] in FAILED_TASK_STATES | {"shutdown"}:
            return "failed", task
    return "running", current[0] if current else None


def migration_error(settings: Settings, task: Mapping[str, Any]) -> str:
    """The line berth/migrations.py printed, or else Swarm's reason."""
    logs = docker(settings, "service", "logs", "--raw", "--no-trunc", task["ID"], check=False)
    lines = (logs.stdout + logs.stderr).splitlines()
    for marker in ("berth: migration failed:", "berth: configuration error:"):
        for line in reversed(lines):
            if marker in line:
                return line[line.index(marker) + len("berth: ") :]
    status = task["Status"]
    tail = lines[-1] if lines else ""
    return f"{status.get('Err') or status['State']}{': ' + tail if tail else ''}"


def wait_migration(settings: Settings, tag: str, timeout: float) -> None:
    started = time.monotonic()
    while True:
        state, task = job_run(settings)
        if state == "complete":
            return
        if state == "failed" and task is not None:
            raise SwarmError(
                f"{migration_error(settings, task)} (image tag {tag}); the app was not "
                "changed and keeps serving on the unchanged schema"
            )
        if deadline_passed(started, timeout):
            raise SwarmError(f"the migration job did not finish within {timeout:.0f}s")
        time.sleep(POLL_SECONDS)


def image_of(spec: Mapping[str, Any]) -> str:
    image: str = spec["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
    return image.split("@", 1)[0]


def serving_tag(settings: Settings, spec: Mapping[str, Any] | None) -> str:
    """The tag of APP_IMAGE the app runs ("" if none, or another repository)."""
    if spec is None:
        return ""
    repository, _, tag = image_of(spec).rpartition(":")
    return tag if repository == settings.image and "/" not in tag else ""


def previous_tag(spec: Mapping[str, Any] | None) -> str:
    labels = (spec or {}).get("Spec", {}).get("Labels", {})
    return str(labels.get("berth.previous-tag", ""))


def update_marker(settings: Settings) -> str:
    """When the app's last update started, as Swarm recorded it: a new value means a new
    update (compared as given, so the clocks of this machine and the manager never meet)."""
    spec = service_spec(settings, APP)
    return str(((spec or {}).get("UpdateStatus") or {}).get("StartedAt", ""))


def wait_rollout(settings: Settings, before: str, timeout: float) -> None:
    """Until the app's update completes (or there was nothing to update), or Swarm rolled
    it back: then this raises, with the failing task's error."""
    started = time.monotonic()
    while True:
        spec = service_spec(settings, APP)
        assert spec is not None
        update = spec.get("UpdateStatus") or {}
        state = update.get("State", "") if update.get("StartedAt", "") != before else ""
        if state in ("rollback_completed", "rollback_paused", "paused"):
            failing = last_error(tasks(settings, APP)) or update.get("Message", "")
            outcome = "rolled the app back to" if state == "rollback_completed" else "paused on"
            raise SwarmError(
                f"the new version failed ({failing}); Swarm {outcome} {image_of(spec)}"
            )
        if state not in ("updating", "rollback_started") and converged(settings, APP)[0]:
            return
        if deadline_passed(started, timeout):
            raise SwarmError(
                f"the app's update did not finish within {timeout:.0f}s "
                f"({state or 'no update'}: {converged(settings, APP)[1]})"
            )
        time.sleep(POLL_SECONDS)


def remove_old_configs(settings: Settings, version: str) -> None:
    """Configs of earlier deploys that no task uses any more (Swarm refuses the rest)."""
    names = docker(settings, "config", "ls", "--filter",
                   f"label=com.docker.stack.namespace={settings.stack}",
                   "--format", "{{.Name}}").stdout.split()  # fmt: skip
    for name in names:
        if not name.endswith(f"_{version}"):
            docker(settings, "config", "rm", name, check=False)


# -- the commands ------------------------------------------------------------------------
@contextlib.contextmanager
def deploy_lock(settings: Settings) -> Iterator[None]:
    """One deploy at a time from this checkout: a second one fails at once."""
    directory = Path(settings.get("BERTH_STATE_DIR", str(ROOT / ".berth")))
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f"swarm-{settings.stack}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SwarmError(f"another scripts/swarm is deploying {settings.stack}") from None
        yield


def prepare(settings: Settings, tag: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The checks every change starts with; the stack file, and the app as it runs now."""
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", tag):
        raise SwarmError(f"{tag!r} is not an image tag")
    check_manager(settings)
    check_connection_budget(settings)
    document = load_stack_file()
    if settings.external_db:
        say(f"POSTGRES_HOST={settings.get('POSTGRES_HOST')}: an external Postgres; no db service")
    else:
        say(f"Postgres runs on {check_db_node(settings)} (label {DB_LABEL}=true)")
    ensure_password_secret(settings)
    current = service_spec(settings, APP)
    serving = serving_tag(settings, current)
    # Redeploying the serving tag keeps the recorded previous release.
    previous = previous_tag(current) if serving == tag else serving
    version = config_version(document)
    settings.environment.update(stack_variables(settings, tag, version, previous))
    return document, current


def roll_app(
    settings: Settings, document: Mapping[str, Any], current: Mapping[str, Any] | None,
    timeout: float,
) -> None:  # fmt: skip
    target = f"{settings.image}:{settings.environment['APP_TAG']}"
    say(f"rolling the app to {target}" + (f" from {image_of(current)}" if current else ""))
    before = update_marker(settings)
    stack_deploy(settings, document, [APP])
    wait_rollout(settings, before, timeout)
    remove_old_configs(settings, settings.environment["BERTH_CONFIG_VERSION"])
    placed = {t["NodeID"] for t in tasks(settings, APP) if t["Status"]["State"] == "running"}
    say(f"done: {target} serves on {len(placed)} node(s)")


def deploy(settings: Settings, tag: str, timeout: float) -> None:
    document, current = prepare(settings, tag)
    services = infrastructure(document, settings)
    say(f"1/3 deploying {', '.join(services)}")
    stack_deploy(settings, document, services)
    wait_converged(settings, services, timeout)

    say(f"2/3 migrating with {settings.image}:{tag}")
    stack_deploy(settings, document, [MIGRATE])
    wait_migration(settings, tag, timeout)

    say("3/3 the app")
    roll_app(settings, document, current, timeout)


def rollback(settings: Settings, timeout: float) -> None:
    check_manager(settings)
    current = service_spec(settings, APP)
    tag = previous_tag(current)
    if not tag:
        raise SwarmError(f"{settings.service(APP)} has no previous release recorded")
    say(f"rolling back to {tag}: the app only, the schema stays as it is")
    document, current = prepare(settings, tag)
    roll_app(settings, document, current, timeout)


def status(settings: Settings) -> None:
    check_manager(settings)
    table = "table {{.Name}}\t{{.Image}}\t{{.Node}}\t{{.CurrentState}}"
    result = docker(
        settings, "stack", "ps", settings.stack, "--filter", "desired-state=running",
        "--format", table,
    )  # fmt: skip
    print(result.stdout, end="")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/swarm", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--stack", default=os.environ.get("BERTH_STACK", "berth"),
                        help="stack name (default: BERTH_STACK or berth)")  # fmt: skip
    parser.add_argument("--env-file", type=Path, help="settings file (default: .env if present)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per step (600)")
    commands = parser.add_subparsers(dest="command", required=True)
    deploying = commands.add_parser("deploy", help="migrate, then roll the app to APP_IMAGE:TAG")
    deploying.add_argument("tag")
    commands.add_parser("rollback", help="return the app to its previous version")
    commands.add_parser("status", help="the stack's running tasks and their nodes")
    arguments = parser.parse_args(argv)
    try:
        settings = load_settings(arguments.env_file, arguments.stack)
        if arguments.command == "status":
            status(settings)
            return 0
        with deploy_lock(settings):
            if arguments.command == "deploy":
                deploy(settings, arguments.tag, arguments.timeout)
            else:
                rollback(settings, arguments.timeout)
    except SwarmError as exc:
        print(f"swarm: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        say("interrupted: a Swarm update already started carries on; see `scripts/swarm status`")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
