"""One source of truth per setting, and every setting documented: each field of
berth/settings.py is in .env.example and reaches the app container, and every variable a
Compose file reads is in .env.example. A setting Compose drops would silently do nothing;
one nobody documented might as well not exist."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from berth.settings import Settings

ROOT = Path(__file__).resolve().parents[2]

# Settings the app container does not take from .env, and why.
NOT_FROM_ENV_FILE = {
    "APP_VERSION": "baked into the image at build time (Dockerfile ARG); the release's tag",
}
NOT_PASSED_BY_COMPOSE = {
    **NOT_FROM_ENV_FILE,
    "POSTGRES_PORT": "compose.yaml's own db listens on 5432; for an external Postgres "
    "(Swarm, Kubernetes), where it is passed",
}
# Variables Compose files read that are not the user's to set, and why.
INTERNAL_VARIABLES = {
    "COMPOSE_PROJECT_NAME": "Compose's own: the project's name",
    "BENCH_APP_PORT": "set by `python -m bench` for its direct-to-app runs",
    "BERTH_BACKEND_INTERNAL": "set by scripts/swarm from the cluster's shape",
    "BERTH_CERT_RESOLVER": "set by scripts/swarm from DOMAIN",
    "BERTH_CONFIG_VERSION": "set by scripts/swarm: a hash naming each config's content",
    "BERTH_HSTS": "set by scripts/swarm from DOMAIN",
    "BERTH_PREVIOUS_TAG": "set by scripts/swarm: the release a rollback returns to",
}


def documented() -> set[str]:
    """Names .env.example documents, set (NAME=value) or commented out (# NAME=value)."""
    text = (ROOT / ".env.example").read_text()
    return set(re.findall(r"^(?:# ?)?([A-Z][A-Z0-9_]+)=", text, re.MULTILINE))


def setting_names() -> set[str]:
    return {(field.alias or name).upper() for name, field in Settings.model_fields.items()}


def compose_variables(path: Path) -> set[str]:
    """Variables a Compose file interpolates (${NAME...}), outside comments; `$$` escapes
    a dollar for the container's shell."""
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    text = "\n".join(lines).replace("$$", "")
    return set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", text))


def compose_files() -> list[Path]:
    return sorted(ROOT.glob("compose*.yaml"))


def app_environment() -> dict[str, Any]:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    environment: dict[str, Any] = compose["services"]["app"]["environment"]
    return environment


def test_every_setting_is_documented() -> None:
    missing = setting_names() - set(NOT_FROM_ENV_FILE) - documented()
    assert not missing, f"settings missing from .env.example: {sorted(missing)}"


def test_every_setting_reaches_the_app_container() -> None:
    dropped = setting_names() - set(NOT_PASSED_BY_COMPOSE) - set(app_environment())
    assert not dropped, f"compose.yaml never passes these to the app: {sorted(dropped)}"


def test_every_variable_compose_reads_is_documented() -> None:
    known = documented() | set(INTERNAL_VARIABLES)
    undocumented = {
        f"{path.name}: {name}"
        for path in compose_files()
        for name in compose_variables(path)
        if name not in known
    }
    assert not undocumented, f"undocumented in .env.example: {sorted(undocumented)}"


def test_the_exceptions_are_still_needed() -> None:
    """A reason that no longer applies goes, so these tables never outlive the code."""
    read = set().union(*(compose_variables(path) for path in compose_files()))
    assert set(INTERNAL_VARIABLES) <= read - documented()
    assert set(NOT_PASSED_BY_COMPOSE) <= setting_names() - set(app_environment())


def test_a_missing_document_is_noticed(tmp_path: Path) -> None:
    """The checks can fail: a new variable in a Compose file shows up as undocumented."""
    changed = tmp_path / "compose.yaml"
    changed.write_text(
        "services:\n  app:\n    image: x:${SOMETHING_NEW:-1}\n    # ${IN_A_COMMENT}\n"
    )
    assert compose_variables(changed) == {"SOMETHING_NEW"}
    assert "SOMETHING_NEW" not in documented()
