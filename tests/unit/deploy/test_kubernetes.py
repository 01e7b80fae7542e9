"""deploy/kubernetes, checked offline (no cluster): the base and every overlay render, every
object validates against the Kubernetes API schemas in strict mode, checkov finds nothing,
and the manifests agree with compose.yaml, the Dockerfile and the app's settings as they
are when the test runs."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from app.main import create_app
from berth.settings import ConfigError, Settings, load_settings
from tests.unit.deploy.manifests import (
    CHECKOV,
    KUBERNETES,
    ROOT,
    Object,
    app_deployment,
    check_command,
    check_database,
    check_environment,
    check_evaluation_labels,
    check_forwarded_ips,
    check_grace,
    check_image,
    check_ingress,
    check_network_policies,
    check_probes,
    check_references,
    check_rollout,
    check_security,
    check_site_overrides,
    check_user,
    check_workers,
    checkov_skips,
    compose_config,
    config_data,
    container,
    environment,
    kustomize,
    overlay_names,
    parse,
    pod_spec,
    prepare_tree,
)

# The oldest Kubernetes these manifests claim to work on (the preStop `sleep` action needs
# 1.30 or newer), and the newest whose schemas kubernetes-validate bundles. The README's
# "On Kubernetes" names both.
KUBERNETES_VERSIONS = ("1.33", "1.37")
OVERLAYS = overlay_names()
CHECKOV_CONFIG = KUBERNETES / ".checkov.yaml"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tree = prepare_tree(tmp_path_factory.mktemp("render"))
    outputs = {"base": kustomize(tree / "base")}
    for overlay in OVERLAYS:
        outputs[overlay] = kustomize(tree / "overlays" / overlay)
    return outputs


@pytest.fixture(scope="module")
def renders(rendered: dict[str, str]) -> dict[str, list[Object]]:
    return {name: parse(output) for name, output in rendered.items()}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return compose_config()


@pytest.fixture(scope="module")
def app_paths() -> set[str]:
    """The paths the app answers GET on, from its OpenAPI schema (building the app opens
    no connection)."""
    app = create_app(Settings(postgres_password="unused"))
    return {path for path, methods in app.openapi()["paths"].items() if "get" in methods}


# ---- render, validate, scan ------------------------------------------------------------


def test_the_base_and_every_overlay_render(renders: dict[str, list[Object]]) -> None:
    assert {"production", "evaluation"} <= set(OVERLAYS)
    for name, objects in renders.items():
        kinds = {item["kind"] for item in objects}
        assert {
            "Deployment",
            "Service",
            "Ingress",
            "PodDisruptionBudget",
            "HorizontalPodAutoscaler",
            "NetworkPolicy",
            "ConfigMap",
        } <= kinds, name
        assert {
            item["metadata"].get("namespace") for item in objects if item["kind"] != "Namespace"
        } == {"berth"}
    for overlay in OVERLAYS:
        assert "Secret" in {item["kind"] for item in renders[overlay]}, overlay


def validation_problems(objects: list[Object], version: str) -> list[str]:
    problems = []
    for item in objects:
        where = f"{item['kind']} {item['metadata']['name']}"
        try:
            kubernetes_validate.validate(item, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            problems.append(f"{where}: {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            problems.append(f"{where}: {error.message}")
    return problems


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_validates_strictly(renders: dict[str, list[Object]], version: str) -> None:
    for name, objects in renders.items():
        assert validation_problems(objects, version) == [], name


def test_strict_validation_catches_a_misspelt_field(renders: dict[str, list[Object]]) -> None:
    """The check above can fail: an unknown field is an error, not a silent no-op."""
    deployment = copy.deepcopy(app_deployment(renders["production"]))
    pod_spec(deployment)["terminationGracePeriod"] = 45
    problems = validation_problems([deployment], KUBERNETES_VERSIONS[0])
    assert len(problems) == 1
    assert "terminationGracePeriod" in problems[0]


def test_checkov_finds_nothing(
    renders: dict[str, list[Object]], rendered: dict[str, str], tmp_path: Path
) -> None:
    """One checkov run over every overlay (what gets applied; the base alone has no image
    tag and no Secret), plus a privileged copy of the app that must fail, which shows the
    run really scanned the files with the checks on."""
    for overlay in OVERLAYS:
        (tmp_path / f"{overlay}.yaml").write_text(rendered[overlay])
    canary = copy.deepcopy(app_deployment(renders["production"]))
    canary["metadata"]["name"] = "canary"
    container(pod_spec(canary), "app")["securityContext"] = {"privileged": True}
    (tmp_path / "canary.yaml").write_text(yaml.safe_dump(canary))
    env = {**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true", "BC_SKIP_MAPPING": "TRUE"}
    result = subprocess.run(
        [str(CHECKOV), "--config-file", str(CHECKOV_CONFIG), "-d", str(tmp_path), "-o", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    report = json.loads(result.stdout)
    assert report["check_type"] == "kubernetes"
    assert report["summary"]["parsing_errors"] == 0
    objects = sum(len(renders[overlay]) for overlay in OVERLAYS)
    assert report["summary"]["resource_count"] >= objects
    assert report["summary"]["passed"] >= 200
    failures: dict[str, list[str]] = {}
    for failure in report["results"]["failed_checks"]:
        where = Path(failure["file_path"]).stem
        failures.setdefault(where, []).append(
            f"{failure['check_id']} {failure['check_name']} ({failure['resource']})"
        )
    canary_failures = failures.pop("canary", [])
    assert failures == {}
    assert any(line.startswith("CKV_K8S_16 ") for line in canary_failures), canary_failures


def test_every_checkov_skip_says_why(renders: dict[str, list[Object]]) -> None:
    config = yaml.safe_load(CHECKOV_CONFIG.read_text())
    skips = dict(checkov_skips(CHECKOV_CONFIG.read_text()))
    assert sorted(skips) == sorted(config.get("skip-check", []))
    for check, reason in skips.items():
        assert len(reason) >= 60, f"{check}: give the reason in the comment above it"
    annotations = [
        (item["metadata"]["name"], value)
        for objects in renders.values()
        for item in objects
        for key, value in item["metadata"].get("annotations", {}).items()
        if key.startswith("checkov.io/skip")
    ]
    for name, value in annotations:
        assert re.fullmatch(r"CKV2?_\w+=.{40,}", value.strip()), f"{name}: {value!r}"


def test_a_skip_without_a_reason_is_refused() -> None:
    text = "skip-check:\n  # a reason\n  - CKV_K8S_1\n  - CKV_K8S_2\n"
    assert dict(checkov_skips(text)) == {"CKV_K8S_1": "a reason", "CKV_K8S_2": ""}


# ---- agreement with Compose, the Dockerfile and the app --------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_manifests_agree_with_compose(
    overlay: str,
    renders: dict[str, list[Object]],
    compose: dict[str, Any],
    app_paths: set[str],
    tmp_path: Path,
) -> None:
    objects = renders[overlay]
    assert check_image(objects, compose, overlay) == []
    assert check_environment(objects, compose, tmp_path) == []
    assert check_command(objects, compose) == []
    assert check_probes(objects, compose, app_paths) == []
    assert check_grace(objects, compose) == []
    assert check_user(objects) == []
    assert check_database(objects, compose, tmp_path) == []


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_the_manifests_hold_together(name: str, renders: dict[str, list[Object]]) -> None:
    objects = renders[name]
    assert check_workers(objects) == []
    assert check_forwarded_ips(objects) == []
    assert check_security(objects) == []
    assert check_rollout(objects) == []
    assert check_references(objects, name) == []
    assert check_ingress(objects, name) == []
    assert check_network_policies(objects) == []


def test_overlays_change_only_the_site(renders: dict[str, list[Object]]) -> None:
    assert check_site_overrides(renders) == []
    assert check_evaluation_labels(renders) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_app_accepts_the_configuration(
    overlay: str, renders: dict[str, list[Object]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The app's own validation (pool budget, memory budget, production rules) passes with
    the environment each container gets, Secret file included."""
    objects = renders[overlay]
    pod = pod_spec(app_deployment(objects))
    for name in ("preflight", "migrate", "app"):
        with monkeypatch.context() as patch:
            for variable, value in environment(
                objects, pod, container(pod, name), tmp_path
            ).items():
                patch.setenv(variable, value)
            settings = load_settings()
        assert settings.production == (config_data(objects)["DOMAIN"] != "localhost")
        assert settings.web_concurrency == 1


def load_settings_for(
    objects: list[Object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    pod = pod_spec(app_deployment(objects))
    with monkeypatch.context() as patch:
        for variable, value in environment(objects, pod, container(pod, "app"), tmp_path).items():
            patch.setenv(variable, value)
        return load_settings()


def test_a_memory_limit_below_the_budget_is_refused(
    renders: dict[str, list[Object]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The app container's limit reaches the settings check (the downward API)."""
    objects = copy.deepcopy(renders["production"])
    container(pod_spec(app_deployment(objects)), "app")["resources"]["limits"]["memory"] = "256Mi"
    with pytest.raises(ConfigError, match=r"APP_MEMORY_LIMIT_MB \(256\)"):
        load_settings_for(objects, tmp_path, monkeypatch)


# ---- each check can fail ---------------------------------------------------------------


def set_pod(field: str, value: Any) -> Callable[[list[Object]], None]:
    def change(objects: list[Object]) -> None:
        pod_spec(app_deployment(objects))[field] = value

    return change


def set_app(field: str, value: Any) -> Callable[[list[Object]], None]:
    def change(objects: list[Object]) -> None:
        container(pod_spec(app_deployment(objects)), "app")[field] = value

    return change


def set_config(variable: str, value: str) -> Callable[[list[Object]], None]:
    def change(objects: list[Object]) -> None:
        config_data(objects)[variable] = value

    return change


def add_workers(objects: list[Object]) -> None:
    container(pod_spec(app_deployment(objects)), "app")["command"] += ["--workers", "2"]


def writable_root(objects: list[Object]) -> None:
    context = container(pod_spec(app_deployment(objects)), "migrate")["securityContext"]
    context["readOnlyRootFilesystem"] = False


def surge_unavailable(objects: list[Object]) -> None:
    app_deployment(objects)["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] = 1


def open_database(objects: list[Object]) -> None:
    for item in objects:
        if item["kind"] == "NetworkPolicy" and item["metadata"]["name"] == "berth-postgres":
            item["spec"]["ingress"][0]["from"] = [{"namespaceSelector": {}}]


def drop_log_level(objects: list[Object]) -> None:
    del config_data(objects)["LOG_LEVEL"]


def small_database(objects: list[Object]) -> None:
    for item in objects:
        if item["kind"] == "StatefulSet":
            pod_spec(item)["containers"][0]["resources"]["limits"]["memory"] = "512Mi"


def wrong_secret(objects: list[Object]) -> None:
    for volume in pod_spec(app_deployment(objects))["volumes"]:
        if "secret" in volume:
            volume["secret"]["secretName"] = "berth-postgres"


BREAKAGES: dict[str, tuple[Callable[[list[Object]], None], str]] = {
    "short grace period": (set_pod("terminationGracePeriodSeconds", 30), "grace"),
    "no preStop pause": (set_app("lifecycle", {}), "grace"),
    "root user": (set_pod("securityContext", {"runAsUser": 1000, "runAsGroup": 1000}), "user"),
    "liveness on another path": (
        set_app("livenessProbe", {"httpGet": {"path": "/", "port": "http"}}),
        "probes",
    ),
    "uvicorn workers": (add_workers, "command"),
    "several workers by env": (set_config("WEB_CONCURRENCY", "2"), "workers"),
    "a pool too large for the database": (set_config("DB_POOL_SIZE", "20"), "rollout"),
    "a setting that differs from Compose": (
        set_config("DB_STATEMENT_TIMEOUT_MS", "0"),
        "environment",
    ),
    "a setting left out": (drop_log_level, "environment"),
    "multiprocess metrics": (set_config("PROMETHEUS_MULTIPROC_DIR", "/tmp/m"), "environment"),
    "unparsable trusted proxies": (
        set_config("FORWARDED_ALLOW_IPS", "10.0.0.0/8,ingress"),
        "forwarded",
    ),
    "writable root filesystem": (writable_root, "security"),
    "maxUnavailable above 0": (surge_unavailable, "rollout"),
    "database open to any namespace": (open_database, "network"),
    "a Secret name without the generator's hash": (wrong_secret, "references"),
    "Ingress host that is not DOMAIN": (set_config("DOMAIN", "other.example.com"), "ingress"),
    "a database smaller than Compose's": (small_database, "database"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_each_check_catches_a_broken_manifest(
    breakage: str,
    renders: dict[str, list[Object]],
    compose: dict[str, Any],
    app_paths: set[str],
    tmp_path: Path,
) -> None:
    change, check = BREAKAGES[breakage]
    objects = copy.deepcopy(renders["evaluation"])
    checks: dict[str, Callable[[list[Object]], list[str]]] = {
        "grace": lambda o: check_grace(o, compose),
        "user": check_user,
        "probes": lambda o: check_probes(o, compose, app_paths),
        "command": lambda o: check_command(o, compose),
        "workers": check_workers,
        "rollout": check_rollout,
        "environment": lambda o: check_environment(o, compose, tmp_path),
        "forwarded": check_forwarded_ips,
        "security": check_security,
        "network": check_network_policies,
        "references": lambda o: check_references(o, "evaluation"),
        "ingress": lambda o: check_ingress(o, "evaluation"),
        "database": lambda o: check_database(o, compose, tmp_path),
    }
    assert checks[check](objects) == []
    change(objects)
    assert checks[check](objects) != []


def test_overlay_checks_catch_a_broken_overlay(renders: dict[str, list[Object]]) -> None:
    changed = copy.deepcopy(renders)
    config_data(changed["evaluation"])["LOG_LEVEL"] = "debug"
    assert check_site_overrides(changed) != []
    unlabelled = copy.deepcopy(renders)
    service = next(
        item
        for item in unlabelled["evaluation"]
        if item["kind"] == "Service" and item["metadata"]["name"] == "berth-postgres"
    )
    del service["metadata"]["labels"]["evaluation-only"]
    assert check_evaluation_labels(unlabelled) != []


def test_a_changed_compose_is_noticed(
    renders: dict[str, list[Object]], compose: dict[str, Any], tmp_path: Path
) -> None:
    """The agreement is with compose.yaml as it is now: a new app variable there, or a new
    graceful timeout, fails here until the manifests follow."""
    changed = copy.deepcopy(compose)
    changed["services"]["app"]["environment"]["SOMETHING_NEW"] = "1"
    command = changed["services"]["app"]["command"]
    command[:] = [re.sub(r"^(--timeout-graceful-shutdown=)\d+", r"\g<1>25", arg) for arg in command]
    changed["services"]["db"]["build"]["args"]["POSTGRES_IMAGE"] = "postgres:18"
    objects = renders["evaluation"]
    assert any("SOMETHING_NEW" in line for line in check_environment(objects, changed, tmp_path))
    assert any("graceful" in line for line in check_grace(objects, changed))
    assert any("image" in line for line in check_image(objects, changed, "evaluation"))


# ---- documentation ---------------------------------------------------------------------


def readme_section() -> str:
    # Berth's manual: its README.md, which a project generated from Berth keeps as BERTH.md
    # (the project's README is its own).
    manual = next(path for path in (ROOT / "BERTH.md", ROOT / "README.md") if path.is_file())
    readme = manual.read_text()
    match = re.search(r"^## On Kubernetes\n(.*?)(?=^## )", readme, re.MULTILINE | re.DOTALL)
    assert match, f"{manual.name} has no '## On Kubernetes' section"
    return match.group(1)


def test_the_readme_says_what_was_and_was_not_checked(renders: dict[str, list[Object]]) -> None:
    section = readme_section()
    for version in KUBERNETES_VERSIONS:
        assert version in section
    assert "live cluster" in section
    documented = (ROOT / ".env.example").read_text() + section
    for overlay in OVERLAYS:
        for variable in config_data(renders[overlay]):
            assert re.search(rf"\b{variable}\b", documented), f"{variable} is documented nowhere"


def test_the_readme_figures_are_the_manifests(renders: dict[str, list[Object]]) -> None:
    section = " ".join(readme_section().split())
    objects = renders["production"]
    deployment = app_deployment(objects)
    pod = pod_spec(deployment)
    app = container(pod, "app")
    scaler = next(item for item in objects if item["kind"] == "HorizontalPodAutoscaler")["spec"]
    data = config_data(objects)
    pre_stop = app["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = pod["terminationGracePeriodSeconds"]
    keep_alive = next(a for a in app["command"] if a.startswith("--timeout-keep-alive="))
    surge = deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
    per_pod = int(data["DB_POOL_SIZE"]) + int(data["DB_MAX_OVERFLOW"])
    pods = scaler["maxReplicas"] + surge
    cpu = scaler["metrics"][0]["resource"]["target"]["averageUtilization"]
    for figure in (
        f"preStop pause {pre_stop} s",
        f"terminationGracePeriodSeconds: {grace}` = {pre_stop} +",
        f"{keep_alive.partition('=')[2]} s, above Traefik's default 90 s",
        f"{scaler['minReplicas']} to {scaler['maxReplicas']} replicas at {cpu} % CPU",
        f"(maxReplicas {scaler['maxReplicas']} + maxSurge {surge}) x {per_pod} = {pods * per_pod}",
        f"`POSTGRES_MAX_CONNECTIONS` ({data['POSTGRES_MAX_CONNECTIONS']})",
        f"a {app['resources']['limits']['memory']} limit",
        f"uid {pod['securityContext']['runAsUser']}",
    ):
        assert figure in section, figure
