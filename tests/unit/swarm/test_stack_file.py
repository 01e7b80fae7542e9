"""The Swarm stack's files agree with each other and with the single-server stack, and
scripts/swarm refuses bad settings in one line, with no cluster needed.

The cluster itself is tested in tests/swarm (`uv run pytest -m swarm`).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.stack.hardening import Hardening, failures

ROOT = Path(__file__).resolve().parents[3]
STACK_FILE = ROOT / "compose.swarm.yaml"
# What traefik/swarm.yml may change from traefik.yml; everything else must be the same.
SWARM_ONLY = {("providers",), ("serversTransport", "forwardingTimeouts")}
PROVIDERS_THROTTLE_SECONDS = 2  # Traefik's default providersThrottleDuration
DRAIN_MARGIN_SECONDS = 2


def load_command() -> ModuleType:
    spec = importlib.util.spec_from_file_location("swarm_command", ROOT / "scripts" / "swarm.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


swarm = load_command()


def stack() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(STACK_FILE.read_text())
    return document


def traefik(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "traefik" / name).read_text())
    return document


def without(document: dict[str, Any], paths: set[tuple[str, ...]]) -> dict[str, Any]:
    copy = {**document}
    for path in paths:
        if len(path) == 1:
            copy.pop(path[0], None)
        else:
            copy[path[0]] = without(copy.get(path[0], {}), {path[1:]})
    return copy


def seconds(value: str) -> float:
    match = re.fullmatch(r"(?:(\d+)m)?(\d+(?:\.\d+)?)s", value)
    assert match, value
    return int(match[1] or 0) * 60 + float(match[2])


def app_command_option(name: str) -> float:
    command = stack()["services"]["app"]["command"]
    (value,) = [arg.split("=", 1)[1] for arg in command if arg.startswith(f"--{name}=")]
    return float(value)


def test_swarm_static_config_is_traefik_yml_but_for_the_provider_and_timeouts() -> None:
    single, swarm_config = traefik("traefik.yml"), traefik("swarm.yml")
    assert without(swarm_config, SWARM_ONLY) == without(single, SWARM_ONLY)
    assert set(swarm_config["providers"]) == {"swarm", "file"}
    assert swarm_config["providers"]["file"] == single["providers"]["file"]
    timeouts = swarm_config["serversTransport"]["forwardingTimeouts"]
    single_timeouts = single["serversTransport"]["forwardingTimeouts"]
    assert {k: v for k, v in timeouts.items() if k in single_timeouts} == single_timeouts


def test_a_stopped_task_serves_until_traefik_has_polled() -> None:
    provider = traefik("swarm.yml")["providers"]["swarm"]
    assert provider["endpoint"] == "tcp://socket-proxy:2375"
    poll = seconds(provider["refreshSeconds"])
    drain = app_command_option("seconds")
    assert drain >= poll + PROVIDERS_THROTTLE_SECONDS + DRAIN_MARGIN_SECONDS


def test_stop_grace_covers_the_drain_and_the_graceful_shutdown() -> None:
    app = stack()["services"]["app"]
    budget = app_command_option("seconds") + app_command_option("timeout-graceful-shutdown")
    assert seconds(app["stop_grace_period"]) >= budget + 2


def test_the_app_rolls_start_first_and_rolls_back_by_itself() -> None:
    deploy = stack()["services"]["app"]["deploy"]
    assert deploy["update_config"]["order"] == "start-first"
    assert deploy["update_config"]["failure_action"] == "rollback"
    assert seconds(deploy["update_config"]["monitor"]) > 0
    assert deploy["rollback_config"]["order"] == "start-first"
    assert deploy["endpoint_mode"] == "dnsrr"  # no service VIP: it needs IPVS
    assert "healthcheck" in stack()["services"]["app"]


def test_postgres_is_pinned_and_never_runs_twice() -> None:
    db = stack()["services"]["db"]
    assert db["deploy"]["placement"]["constraints"] == [f"node.labels.{swarm.DB_LABEL} == true"]
    assert db["deploy"]["update_config"]["order"] == "stop-first"
    assert db["deploy"]["replicas"] == 1


def test_traefik_publishes_in_host_mode_and_reads_the_engine_through_the_proxy() -> None:
    services = stack()["services"]
    assert {port["mode"] for port in services["traefik"]["ports"]} == {"host"}
    assert not any("docker.sock" in str(volume) for volume in services["traefik"]["volumes"])
    assert services["socket-proxy"]["volumes"][0] == "/var/run/docker.sock:/var/run/docker.sock:ro"
    assert all(volume["type"] == "tmpfs" for volume in services["socket-proxy"]["volumes"][1:])
    assert services["socket-proxy"]["environment"]["POST"] == "0"


def test_every_traefik_file_the_single_server_stack_reads_is_a_swarm_config() -> None:
    files = {config["file"] for config in stack()["configs"].values()}
    dynamic = {f"./traefik/dynamic/{path.name}" for path in (ROOT / "traefik/dynamic").glob("*")}
    assert files == {"./traefik/swarm.yml", "./traefik/entrypoint.sh"} | dynamic
    mounted = {c["target"] for c in stack()["services"]["traefik"]["configs"]}
    assert mounted == {f"/etc/traefik/dynamic/{Path(f).name}" for f in dynamic} | {
        "/etc/traefik/traefik.yml",
        "/etc/traefik/entrypoint.sh",
    }


def test_the_app_has_the_single_server_routers() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    single = {k for k in compose["services"]["app"]["labels"] if k != "traefik.docker.network"}
    labels = stack()["services"]["app"]["deploy"]["labels"]
    assert single <= set(labels)
    # The same middleware chains, in the same order (HSTS is switched by a variable in both).
    for router in ("app", "app-idempotent"):
        key = f"traefik.http.routers.{router}.middlewares"
        one_server = compose["services"]["app"]["labels"][key]
        assert labels[key].replace("${BERTH_HSTS:-}", "") == one_server.replace(
            "${DOMAIN:+hsts@file,}", ""
        )


def rendered(**settings: str) -> dict[str, Any]:
    """The whole stack file as the Docker CLI's stack loader reads it for a deploy."""
    configured = swarm.Settings(
        stack="berth", environment={"APP_IMAGE": "registry.example.com/berth-app", **settings}
    )
    env = {**os.environ, **configured.environment,
           **swarm.stack_variables(configured, "v1", "0123456789ab")}  # fmt: skip
    result = subprocess.run(
        ["docker", "stack", "config", "--compose-file", "-"],
        input=swarm.part(swarm.load_stack_file(), list(stack()["services"])),
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = yaml.safe_load(result.stdout)
    return document


def test_the_stack_file_is_what_the_docker_cli_accepts() -> None:
    local = rendered()
    assert local["services"]["app"]["image"] == "registry.example.com/berth-app:v1"
    assert local["services"]["migrate"]["deploy"]["mode"] == "replicated-job"
    assert local["networks"]["backend"]["internal"] is True
    labels = local["services"]["app"]["deploy"]["labels"]
    assert labels["traefik.http.routers.app.tls.certresolver"] == ""
    # Local mode: no HSTS (it would pin localhost to HTTPS), and nothing left unexpanded.
    assert labels["traefik.http.routers.app.middlewares"].startswith("security-headers@file,")
    assert "$" not in labels["traefik.http.routers.app.middlewares"]
    assert local["configs"]["traefik-static"]["name"] == "berth_traefik_static_0123456789ab"


def test_production_gets_certificates_and_hsts() -> None:
    labels = rendered(DOMAIN="api.example.com")["services"]["app"]["deploy"]["labels"]
    assert labels["traefik.http.routers.app.tls.certresolver"] == "letsencrypt"
    assert labels["traefik.http.routers.app.middlewares"].startswith("hsts@file,")
    assert labels["traefik.http.routers.app.rule"].startswith("Host(`api.example.com`)")


def test_an_external_postgres_is_reachable_from_the_backend_network() -> None:
    external = rendered(POSTGRES_HOST="pg.example.com")
    assert "internal" not in external["networks"]["backend"]
    assert external["services"]["migrate"]["environment"]["POSTGRES_HOST"] == "pg.example.com"


def test_the_deploy_steps_each_hold_only_their_services() -> None:
    document = swarm.load_stack_file()
    local = swarm.Settings(stack="berth", environment={"APP_IMAGE": "r/app"})
    external = swarm.Settings(
        stack="berth", environment={"APP_IMAGE": "r/app", "POSTGRES_HOST": "pg.example.com"}
    )
    assert swarm.infrastructure(document, local) == ["db", "traefik", "socket-proxy"]
    assert swarm.infrastructure(document, external) == ["traefik", "socket-proxy"]
    migrate_only = yaml.safe_load(swarm.part(document, ["migrate"]))
    assert list(migrate_only["services"]) == ["migrate"]
    assert migrate_only["networks"] == document["networks"]
    # Anchors are resolved; interpolation is left to the Docker CLI.
    assert migrate_only["services"]["migrate"]["image"].startswith("${APP_IMAGE:?")


def test_a_changed_traefik_file_gets_new_config_names(monkeypatch: pytest.MonkeyPatch) -> None:
    document = swarm.load_stack_file()
    before = swarm.config_version(document)
    real = Path.read_bytes

    def edited(path: Path) -> bytes:
        return real(path) + (b"# edited\n" if path.name == "tls.yml" else b"")

    monkeypatch.setattr(Path, "read_bytes", edited)
    assert swarm.config_version(document) != before


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        ({"APP_REPLICAS": "9"}, "exceeds POSTGRES_MAX_CONNECTIONS - 10 = 90"),
        ({"DB_POOL_SIZE": "lots"}, "DB_POOL_SIZE='lots' is not a whole number"),
    ],
)
def test_the_connection_budget_is_checked(environment: dict[str, str], message: str) -> None:
    settings = swarm.Settings(stack="berth", environment={"APP_IMAGE": "r/app", **environment})
    with pytest.raises(swarm.SwarmError, match=re.escape(message)):
        swarm.check_connection_budget(settings)


def run_command(*args: str, **environment: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("APP_IMAGE", "DOCKER_HOST")}
    return subprocess.run(
        [str(ROOT / "scripts" / "swarm"), "--env-file", os.devnull, *args],
        env={**env, **environment}, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "environment", "message"),
    [
        (("deploy", "v1"), {}, "swarm: error: APP_IMAGE is not set"),
        (("deploy", "v1"), {"APP_IMAGE": "r/app", "DOCKER_HOST": "tcp://127.0.0.1:9"},
         "swarm: error: cannot reach Docker"),
        (("--stack", "Bad Name", "deploy", "v1"), {"APP_IMAGE": "r/app"},
         "swarm: error: stack name 'Bad Name'"),
    ],
)  # fmt: skip
def test_the_command_fails_in_one_line(
    args: tuple[str, ...], environment: dict[str, str], message: str
) -> None:
    result = run_command(*args, **environment)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]


def test_the_command_pins_the_locked_library_versions() -> None:
    wrapper = (ROOT / "scripts" / "swarm").read_text()
    lock = (ROOT / "uv.lock").read_text()
    pins = re.findall(r"--with '([a-z-]+)==([\d.]+)'", wrapper)
    assert {name for name, _ in pins} == {"pyyaml", "python-dotenv"}
    for name, version in pins:
        assert f'name = "{name}"\nversion = "{version}"' in lock


def app_spec(image: str, previous: str = "") -> dict[str, Any]:
    labels = {"berth.previous-tag": previous} if previous else {}
    return {"Spec": {"Labels": labels, "TaskTemplate": {"ContainerSpec": {"Image": image}}}}


@pytest.mark.parametrize(
    ("image", "tag"),
    [
        ("registry:5000/team/app:v2@sha256:" + "0" * 64, "v2"),
        ("registry:5000/team/app:v2", "v2"),
        ("registry:5000/other/app:v2", ""),  # another repository: not a release of ours
        ("registry:5000/team/app", ""),  # no tag at all
    ],
)
def test_the_serving_tag_is_read_from_the_running_spec(image: str, tag: str) -> None:
    settings = swarm.Settings(stack="berth", environment={"APP_IMAGE": "registry:5000/team/app"})
    assert swarm.serving_tag(settings, app_spec(image)) == tag


def test_the_previous_release_is_a_label_of_the_app_service() -> None:
    assert swarm.previous_tag(app_spec("r/app:v2", previous="v1")) == "v1"
    assert swarm.previous_tag(None) == ""
    labels = rendered(BERTH_PREVIOUS_TAG="v1")["services"]["app"]["deploy"]["labels"]
    assert labels["berth.previous-tag"] == ""  # stack_variables sets it, not the environment
    settings = swarm.Settings(stack="berth", environment={"APP_IMAGE": "r/app"})
    assert swarm.stack_variables(settings, "v2", "abc", "v1")["BERTH_PREVIOUS_TAG"] == "v1"


def test_the_app_tasks_get_every_setting_the_single_server_app_gets() -> None:
    """A setting Compose passes to the app and the stack file forgets would silently keep
    its default on a cluster."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    single = set(compose["x-app-image"]["environment"])
    cluster = set(stack()["x-app-image"]["environment"])
    # The password arrives as a Swarm secret file instead of the variable.
    assert single - {"POSTGRES_PASSWORD"} <= cluster, single - cluster


# Where the Swarm stack cannot meet a CIS item, and why. Compared exactly: a new violation,
# or an exception that no longer holds, fails the test.
NO_NEW_PRIVILEGES = "Swarm services on Engine 20.10 cannot set no-new-privileges"
SWARM_EXCEPTIONS: dict[str, dict[str, str]] = {
    "app": {"5.25": NO_NEW_PRIVILEGES},
    "migrate": {"5.25": NO_NEW_PRIVILEGES},
    "db": {"5.25": NO_NEW_PRIVILEGES},
    "socket-proxy": {
        "4.1": "the socket is root:docker and the docker group differs per host",
        "5.25": NO_NEW_PRIVILEGES,
        "5.31": "the one holder of the Docker socket, read-only, for Traefik's GETs",
    },
    "traefik": {
        "4.1": "the certificate volume is root's: Swarm has no ordering for a chown one-shot",
        "5.3": "binds ports 80 and 443 as root, so it keeps NET_BIND_SERVICE",
        "5.25": NO_NEW_PRIVILEGES,
    },
}


def test_every_swarm_service_is_hardened_but_for_named_exceptions() -> None:
    """The CIS Docker Benchmark items of tests/stack/hardening.py, on the stack file as the
    Docker CLI renders it for a deploy."""
    users = {"app": "10001:10001", "migrate": "10001:10001"}  # the Dockerfile's USER
    found = {}
    for name, service in rendered()["services"].items():
        hardening = Hardening.from_config(service, users.get(name, ""))  # "" = root
        found[name] = set(failures(name, hardening))
    assert found == {name: set(items) for name, items in SWARM_EXCEPTIONS.items()}
