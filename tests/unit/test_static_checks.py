"""What the two checkov checks skipped in .checkov.yaml are about, checked the way that fits
this project; and Traefik's entrypoint refusing edge limits it could not use."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_checkov_skips_exactly_the_two_justified_checks() -> None:
    config = (ROOT / ".checkov.yaml").read_text()
    assert re.findall(r"^\s*- (CKV_\w+)", config, re.MULTILINE) == ["CKV_DOCKER_2", "CKV_DOCKER_7"]


def test_base_images_default_to_pinned_tags() -> None:
    """CKV_DOCKER_7's point: every base image defaults to an explicit tag, never latest."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    defaults = dict(re.findall(r"^ARG (\w+_IMAGE)=(\S+)$", dockerfile, re.MULTILINE))
    used = set(re.findall(r"^FROM \$\{(\w+)\}", dockerfile, re.MULTILINE))
    assert used
    assert used <= set(defaults), used - set(defaults)
    for name in used:
        image = defaults[name]
        repository, _, tag = image.rpartition(":")
        assert repository, f"{name}={image} has no tag"
        assert "/" not in tag, f"{name}={image} has no tag"
        assert tag != "latest", f"{name}={image}"


def test_the_app_service_has_its_healthcheck() -> None:
    """CKV_DOCKER_2's point: the server is probed, by compose, not by the image (which also
    runs the one-shots)."""
    result = subprocess.run(
        ["docker", "compose", "--env-file", os.devnull, "config", "--format", "json", "app"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    app = json.loads(result.stdout)["services"]["app"]
    assert app["healthcheck"]["test"] == ["CMD", "python", "-m", "berth.healthcheck"]
    assert "HEALTHCHECK" not in (ROOT / "Dockerfile").read_text()


@pytest.mark.parametrize("value", ["0", "", "ten", "-5", "1.5", "007"])
@pytest.mark.parametrize(
    "name", ["EDGE_RATE_LIMIT_AVERAGE", "EDGE_RATE_LIMIT_BURST", "EDGE_INFLIGHT_LIMIT"]
)
def test_traefik_refuses_an_edge_limit_it_could_not_use(name: str, value: str) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "BERTH_PROJECT": "berth",
        "EDGE_RATE_LIMIT_AVERAGE": "100",
        "EDGE_RATE_LIMIT_BURST": "200",
        "EDGE_INFLIGHT_LIMIT": "50",
        name: value,
    }
    result = subprocess.run(
        ["sh", str(ROOT / "traefik" / "entrypoint.sh")],
        env=env, capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    assert result.returncode == 78
    assert result.stderr == f"traefik: invalid {name}={value}: use a whole number of 1 or more\n"
