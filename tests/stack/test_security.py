"""Security, checked on real containers.

Two stacks: production (a fresh copy of the checkout, `make secrets`, compose.secrets.yaml,
a Pebble-issued certificate for a real DOMAIN), and the other overlays together (dev, demo
and bench, on their development defaults). On them:
- every container meets the CIS Docker Benchmark items in tests/stack/hardening.py, with
  the listed exceptions only; so does every service any compose file declares;
- the Docker socket lives only in socket-proxy, which answers reads and refuses writes, and
  which only Traefik can reach;
- the production password appears in no `docker inspect`, `docker compose config` or log;
- sslyze finds the TLS setup compliant with Mozilla's "intermediate" configuration.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import stat
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import docker
import httpx
import pytest
from docker.models.containers import Container
from sslyze.mozilla_tls_profile.tls_config_checker import (
    SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
    MozillaTlsConfiguration,
    ServerNotCompliantWithTlsConfiguration,
    TlsConfigurationEnum,
    check_server_against_tls_configuration,
)
from sslyze.plugins.certificate_info.implementation import CertificateInfoExtraArgument
from sslyze.scanner.models import (
    ScanCommandsExtraArguments,
    ServerScanRequest,
    ServerScanStatusEnum,
)
from sslyze.scanner.scanner import Scanner
from sslyze.server_setting import ServerNetworkLocation

from tests.stack.hardening import (
    EXCEPTIONS,
    ITEMS,
    OUTSIDE_THE_STACK,
    Hardening,
    live_process_violations,
    violations,
)
from tests.stack.harness import OVERRIDES, ROOT, Stack, copy_checkout, free_port, wait_for

DOMAIN = "berth.test"
PYTHON_IMAGE = os.environ.get("PYTHON_IMAGE", "python:3.13-slim")
# What the app image runs as (Dockerfile: USER 10001:10001).
APP_USER = "10001:10001"
# The development password of compose.yaml, which the overlays stack runs on.
DEV_PASSWORD = "berth-dev-only-password"


@dataclass
class Production:
    stack: Stack
    checkout: Path
    pebble_root: Path  # the CA that issued the stack's certificate, as a PEM file


@pytest.fixture(scope="module")
def production(
    stack_factory: Callable[..., Stack], tmp_path_factory: pytest.TempPathFactory
) -> Production:
    """A production stack as the README sets one up: a clone, `make secrets`, the secrets
    overlay and a real DOMAIN (Pebble standing in for Let's Encrypt)."""
    checkout = copy_checkout(tmp_path_factory.mktemp("production") / "berth")
    ca_file = tmp_path_factory.mktemp("pebble") / "minica.pem"
    ca_file.touch()
    stack = stack_factory(
        "pebble.yaml",
        files=("compose.yaml", "compose.secrets.yaml"),
        root=checkout,
        DOMAIN=DOMAIN,
        ACME_EMAIL="ops@berth.test",
        PEBBLE_CA_FILE=str(ca_file),
    )
    make_secrets(stack, checkout)
    stack.up("pebble", wait=False)
    stack.run("cp", "pebble:/test/certs/pebble.minica.pem", str(ca_file))
    stack.up()
    pebble_root = tmp_path_factory.mktemp("pebble-root") / "root.pem"
    port = stack.run("port", "pebble", "15000").stdout.strip().rsplit(":", 1)[1]
    pebble_root.write_text(
        httpx.get(f"https://127.0.0.1:{port}/roots/0", verify=False, timeout=10).text
    )
    context = ssl.create_default_context(cafile=str(pebble_root))
    wait_for(lambda: verified_get(stack, context), timeout=90, interval=1, what="a certificate")
    return Production(stack, checkout, pebble_root)


@pytest.fixture(scope="module")
def overlays(stack_factory: Callable[..., Stack]) -> Stack:
    """compose.yaml with every other overlay of the project, on development defaults."""
    stack = stack_factory(
        files=("compose.yaml", "compose.dev.yaml", "compose.demo.yaml", "compose.bench.yaml"),
        BENCH_APP_PORT=str(free_port()),
        DEV_DB_PORT=str(free_port()),
    )
    stack.up()
    return stack


def make_secrets(stack: Stack, checkout: Path) -> subprocess.CompletedProcess[str]:
    """`make secrets` in the checkout, as an operator runs it."""
    env = {**os.environ, "COMPOSE_PROJECT_NAME": stack.project}
    result = subprocess.run(
        ["make", "--no-print-directory", "secrets"],
        cwd=checkout, env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def verified_get(stack: Stack, context: ssl.SSLContext) -> bool:
    try:
        with stack.client(verify=context) as client:
            response = client.get("/health/ready", extensions={"sni_hostname": DOMAIN})
    except httpx.ConnectError:  # Traefik's default certificate until ACME finishes
        return False
    return response.status_code == 200


def project_containers(stack: Stack) -> list[Container]:
    found: list[Container] = stack.docker.containers.list(
        all=True, filters={"label": f"com.docker.compose.project={stack.project}"}
    )
    return found


def service_of(container: Container) -> str:
    return str(container.labels["com.docker.compose.service"])


def declared_services(stack: Stack) -> set[str]:
    result = stack.run("--profile", "*", "config", "--services")
    return set(result.stdout.split())


# -- CIS Docker Benchmark --------------------------------------------------------------------
def cis_report(stack: Stack) -> tuple[set[str], list[str]]:
    """(services seen, problems) over every container of the stack: the ones `up` started
    (running, or exited one-shots), plus the tool services `up` leaves out, created here
    just to be inspected."""
    containers = project_containers(stack)
    missing = declared_services(stack) - {service_of(c) for c in containers}
    if missing:
        stack.run("--profile", "*", "create", "--no-recreate", *sorted(missing))
    try:
        problems = []
        seen = set()
        for container in project_containers(stack):
            container.reload()
            service = service_of(container)
            seen.add(service)
            problems += violations(service, Hardening.from_inspect(container.attrs))
            if container.status == "running":
                status = Path(f"/proc/{container.attrs['State']['Pid']}/status").read_text()
                problems += live_process_violations(service, status)
        return seen, problems
    finally:
        if missing:
            stack.run("--profile", "*", "rm", "--force", "--stop", *sorted(missing), check=False)


def test_cis_every_container_of_the_production_stack(production: Production) -> None:
    seen, problems = cis_report(production.stack)
    assert seen == declared_services(production.stack)
    assert {"traefik", "socket-proxy", "db", "backup", "app", "secrets-owner", "pebble"} <= seen
    assert problems == []


def test_cis_every_container_with_the_dev_demo_and_bench_overlays(overlays: Stack) -> None:
    seen, problems = cis_report(overlays)
    assert seen == declared_services(overlays)
    assert "seed" in seen
    assert problems == []


SWARM_STACK = "compose.swarm.yaml"


def compose_files() -> list[tuple[str, ...]]:
    """compose.yaml alone, and with each overlay: the project's and the tests'. The Swarm
    stack file is a stack of its own, not an overlay: tests/unit/swarm checks it."""
    overlays = sorted(p.name for p in ROOT.glob("compose.*.yaml") if p.name != SWARM_STACK)
    test_overlays = sorted(str(path) for path in OVERRIDES.glob("*.yaml"))
    return [("compose.yaml",), *(("compose.yaml", name) for name in overlays + test_overlays)]


@pytest.mark.parametrize("files", compose_files(), ids=lambda files: Path(files[-1]).name)
def test_cis_every_service_every_compose_file_declares(files: tuple[str, ...]) -> None:
    """What the files declare, services no stack test starts included (a new overlay's
    service is checked the day it is added)."""
    # Values some overlays require; none of them changes a service's hardening.
    required = {
        "DOMAIN": DOMAIN, "PEBBLE_CA_FILE": "/tmp/pebble-ca.pem", "APP_IMAGE": "app",
        "S3_TLS_DIR": "/tmp/s3-tls", "S3_DATA_DIR": "/tmp/s3-data",
        "S3_ROOT_USER": "test", "S3_ROOT_PASSWORD": "test-password",
    }  # fmt: skip
    env = {**os.environ, **required}
    result = subprocess.run(
        ["docker", "compose", "--env-file", os.devnull, "--profile", "*",
         *(arg for name in files for arg in ("-f", name)), "config", "--format", "json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    services: dict[str, Any] = json.loads(result.stdout)["services"]
    problems = []
    for name, service in services.items():
        if name in OUTSIDE_THE_STACK:
            continue
        # compose leaves the user to the image: the app image's is known, others are root
        # unless the file says otherwise.
        image_user = APP_USER if service["image"].startswith("app:") else ""
        problems += violations(name, Hardening.from_config(service, image_user))
    assert problems == []


def test_every_exception_names_a_known_item_and_a_reason() -> None:
    for (service, item), reason in EXCEPTIONS.items():
        assert item in ITEMS, (service, item)
        assert len(reason) > 30, (service, item)


def test_the_checker_catches_a_default_container() -> None:
    """A container with Docker's defaults breaks every item the checks can see."""
    defaults = Hardening(
        user="", cap_drop=frozenset(), cap_add=frozenset(), privileged=True,
        binds=(("/var/run/docker.sock", False), ("/etc", True)), network_mode="host",
        pid_mode="host", ipc_mode="host", memory_bytes=0, pids_limit=0, read_only=False,
        no_new_privileges=False,
    )  # fmt: skip
    items = {problem.split()[0] for problem in violations("app", defaults)}
    assert items == set(ITEMS)
    # The socket proxy's exception holds for a read-only socket only.
    assert "5.31 socket-proxy" in " ".join(violations("socket-proxy", defaults))


# -- the Docker socket ----------------------------------------------------------------------
def test_traefik_has_no_docker_socket(production: Production) -> None:
    traefik = production.stack.container("traefik")
    sources = [mount["Source"] for mount in traefik.attrs["Mounts"]]
    assert not [source for source in sources if source.endswith("docker.sock")], sources
    probe = traefik.exec_run(["sh", "-c", "ls /var/run/docker.sock /run/docker.sock"])
    assert probe.exit_code != 0, probe.output
    proxy = production.stack.container("socket-proxy")
    assert [m["Source"] for m in proxy.attrs["Mounts"]] == ["/var/run/docker.sock"]
    assert proxy.attrs["Mounts"][0]["RW"] is False


# Runs in a throwaway container on the socket proxy's network: what a compromised Traefik
# could ask the Docker API. Prints {request: status}.
PROXY_PROBE = """
import http.client, json, sys
answers = {}
for method, path in json.loads(sys.argv[1]):
    connection = http.client.HTTPConnection("socket-proxy", 2375, timeout=10)
    body = "{}" if method == "POST" else None
    connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    data = response.read()
    answers[f"{method} {path}"] = [response.status, data.decode(errors="replace")]
print(json.dumps(answers))
"""


def ask_socket_proxy(stack: Stack, requests: list[tuple[str, str]]) -> dict[str, list[Any]]:
    client = docker.from_env()
    container = client.containers.run(
        PYTHON_IMAGE, ["python", "-c", PROXY_PROBE, json.dumps(requests)],
        name=f"berth-security-probe-{uuid.uuid4().hex[:8]}", detach=True,
        network=f"{stack.project}_docker-api", cap_drop=["ALL"], read_only=True,
        security_opt=["no-new-privileges:true"], mem_limit="64m", pids_limit=32,
    )  # fmt: skip
    try:
        outcome = container.wait(timeout=60)
        output = container.logs().decode()
        assert outcome["StatusCode"] == 0, output
        answers: dict[str, list[Any]] = json.loads(output)
        return answers
    finally:
        container.remove(force=True)


def test_socket_proxy_allows_reads_and_refuses_writes(production: Production) -> None:
    stack = production.stack
    app = stack.container("app").id
    created = f"berth-security-created-{uuid.uuid4().hex[:8]}"
    ours = quote(json.dumps({"label": [f"com.docker.compose.project={stack.project}"]}))
    answers = ask_socket_proxy(stack, [
        ("GET", f"/v1.41/containers/json?filters={ours}"),
        ("GET", f"/v1.41/containers/{app}/json"),
        ("GET", "/v1.41/version"),
        ("POST", f"/v1.41/containers/create?name={created}"),
        ("POST", f"/v1.41/containers/{app}/stop"),
        ("POST", f"/v1.41/containers/{app}/exec"),
        ("DELETE", f"/v1.41/containers/{app}"),
        ("GET", "/v1.41/images/json"),
        ("GET", "/v1.41/info"),
        ("GET", "/v1.41/secrets"),
        ("GET", "/v1.41/volumes"),
    ])  # fmt: skip
    statuses = {request: status for request, (status, _) in answers.items()}
    listed = json.loads(answers[f"GET /v1.41/containers/json?filters={ours}"][1])
    assert {c["Labels"]["com.docker.compose.service"] for c in listed} >= {"traefik", "app"}
    assert statuses == {
        f"GET /v1.41/containers/json?filters={ours}": 200,
        f"GET /v1.41/containers/{app}/json": 200,
        "GET /v1.41/version": 200,
        f"POST /v1.41/containers/create?name={created}": 403,
        f"POST /v1.41/containers/{app}/stop": 403,
        f"POST /v1.41/containers/{app}/exec": 403,
        f"DELETE /v1.41/containers/{app}": 403,
        "GET /v1.41/images/json": 403,
        "GET /v1.41/info": 403,
        "GET /v1.41/secrets": 403,
        "GET /v1.41/volumes": 403,
    }
    assert not docker.from_env().containers.list(all=True, filters={"name": created})
    assert stack.state("app")["Status"] == "running"


def test_app_cannot_reach_the_socket_proxy(production: Production) -> None:
    stack = production.stack
    networks = stack.container("socket-proxy").attrs["NetworkSettings"]["Networks"]
    assert list(networks) == [f"{stack.project}_docker-api"]
    address = next(iter(networks.values()))["IPAddress"]
    attempt = (
        "import socket\n"
        f"for target in ('socket-proxy', {address!r}):\n"
        "    try:\n"
        "        socket.create_connection((target, 2375), timeout=3).close()\n"
        "        print(target, 'reached')\n"
        "    except OSError as exc:\n"
        "        print(target, 'refused:', type(exc).__name__)\n"
    )
    result = stack.container("app").exec_run(["python", "-c", attempt])
    output = result.output.decode()
    assert result.exit_code == 0, output
    assert "reached" not in output
    assert output.count("refused") == 2, output


# -- secrets --------------------------------------------------------------------------------
def production_password(stack: Stack) -> str:
    result = stack.container("app").exec_run(["cat", "/run/secrets/postgres_password"])
    assert result.exit_code == 0, result.output
    password = str(result.output.decode())
    assert re.fullmatch(r"[0-9a-f]{64}", password), "make secrets writes 32 random bytes as hex"
    return password


def test_make_secrets_writes_private_files_each_owned_by_its_reader(
    production: Production,
) -> None:
    stack, directory = production.stack, production.checkout / "secrets"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    postgres = stack.container("db").exec_run(["id", "-u"]).output.decode().strip()
    owners = {"postgres_password": postgres, "pgpass": postgres, "app_postgres_password": "10001"}
    # The off-site backup secrets, created empty for the operator to fill in.
    offsite = {"backup_s3_secret_access_key": postgres, "backup_pitr_passphrase": postgres}
    for name, owner in (owners | offsite).items():
        info = (directory / name).stat()
        assert stat.S_IMODE(info.st_mode) == 0o600, name
        assert str(info.st_uid) == owner, name
    assert all((directory / name).stat().st_size == 0 for name in offsite)
    # db and backup read them (an empty one counts as not given).
    for service in ("db", "backup"):
        environment = stack.container(service).attrs["Config"]["Env"]
        assert "BACKUP_PITR_PASSPHRASE_FILE=/run/secrets/backup_pitr_passphrase" in environment
    git = subprocess.run(["git", "check-ignore", "-q", "secrets/postgres_password"], cwd=ROOT)
    assert git.returncode == 0, "secrets/ must be git-ignored"
    # Running it again keeps the password the database was created with, and leaves no
    # volume behind (its one-shot runs an image that declares one).
    before = production_password(stack)
    volumes = {volume.name for volume in stack.docker.volumes.list()}
    assert "keeping them" in make_secrets(stack, production.checkout).stderr
    assert production_password(stack) == before
    assert {volume.name for volume in stack.docker.volumes.list()} == volumes


def test_production_password_appears_in_no_inspect_config_or_log(production: Production) -> None:
    stack = production.stack
    password = production_password(stack)
    # It is in use: the app reaches the database, a backup authenticates with PGPASSFILE,
    # and a wrong password is refused (and that refusal is logged, without the password).
    with stack.client() as client:
        assert client.get("/health/ready", extensions={"sni_hostname": DOMAIN}).status_code == 200
    stack.run("exec", "-T", "backup", "backup", "now")
    wrong = stack.run(
        "exec", "-T", "-e", "PGPASSWORD=not-the-password", "backup",
        "psql", "-h", "db", "-U", "berth", "-d", "berth", "-c", "SELECT 1", check=False,
    )  # fmt: skip
    assert wrong.returncode != 0
    # Everything the stack shows, as an operator (or an attacker with the socket) sees it.
    inspected = json.dumps([container.attrs for container in project_containers(stack)])
    config = stack.run("config").stdout + stack.run("config", "--environment").stdout
    logs = stack.run("logs", "--no-color", "--timestamps").stdout
    assert "password authentication failed" in logs  # the logs searched are the real ones
    places = {"docker inspect": inspected, "compose config": config, "logs": logs}
    for place, text in places.items():
        assert password not in text, f"the production password appears in {place}"


def test_development_password_is_visible_without_secrets(overlays: Stack) -> None:
    """The same search finds a password passed the old way (and so can fail)."""
    inspected = json.dumps([container.attrs for container in project_containers(overlays)])
    assert DEV_PASSWORD in inspected


# -- TLS graded by sslyze ------------------------------------------------------------------
def mozilla_intermediate_issues(
    port: int, server_name: str, ca_file: Path | None
) -> dict[str, str]:
    """sslyze's check against Mozilla's "intermediate" configuration: {} when compliant,
    else {check: what failed}."""
    location = ServerNetworkLocation(hostname=server_name, port=port, ip_address="127.0.0.1")
    extra = ScanCommandsExtraArguments(
        certificate_info=CertificateInfoExtraArgument(custom_ca_file=ca_file) if ca_file else None
    )
    scanner = Scanner()
    scanner.queue_scans([
        ServerScanRequest(
            server_location=location,
            scan_commands=SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
            scan_commands_extra_arguments=extra,
        )
    ])  # fmt: skip
    (result,) = list(scanner.get_results())
    assert result.scan_status == ServerScanStatusEnum.COMPLETED, result.connectivity_error_trace
    intermediate = MozillaTlsConfiguration.get(TlsConfigurationEnum.MOZILLA_INTERMEDIATE)
    try:
        check_server_against_tls_configuration(result, intermediate)
    except ServerNotCompliantWithTlsConfiguration as failure:
        return dict(failure.issues)
    return {}


# sslyze's bundled trust stores hold an old root with a zero serial number.
IGNORE_OLD_ROOTS = pytest.mark.filterwarnings(
    "ignore:Parsed a serial number:cryptography.utils.CryptographyDeprecationWarning"
)


@IGNORE_OLD_ROOTS
def test_tls_is_compliant_with_mozilla_intermediate(production: Production) -> None:
    issues = mozilla_intermediate_issues(
        production.stack.https_port, DOMAIN, production.pebble_root
    )
    assert issues == {}


@IGNORE_OLD_ROOTS
def test_tls_of_localhost_fails_only_on_its_self_signed_certificate(overlays: Stack) -> None:
    """Protocols, ciphers and curves pass on localhost too; its certificate cannot."""
    issues = mozilla_intermediate_issues(overlays.https_port, "localhost", None)
    assert set(issues) == {"certificate_path_validation"}, issues
