"""Shared by every test: a clean environment, so nothing in a developer's shell (a DOMAIN,
a COMPOSE_FILE, a password) leaks into the app under test or the stacks the tests start."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from berth.settings import Settings

# The *_IMAGE variables stay: they are how the sandbox swaps in local images.
LEAKY_PREFIXES = ("COMPOSE_", "ACME_", "TRAEFIK_", "EDGE_", "DEPLOY_", "BACKUP_")
LEAKY_NAMES = {
    "APP_IMAGE",
    "APP_TAG",
    "DB_IMAGE",
    "DB_TAG",
    "HTTP_PORT",
    "HTTPS_PORT",
    "PUBLISH_ADDRESS",
    "PROXY_SUBNET",
    "BERTH_STATE_DIR",
    *(name.upper() for name in Settings.model_fields),
    *(f"{name.upper()}_FILE" for name in Settings.model_fields),
}


@pytest.fixture(scope="session", autouse=True)
def clean_environment() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            leaky = name in LEAKY_NAMES or name.startswith(LEAKY_PREFIXES)
            if leaky and not name.endswith("_IMAGE"):
                patch.delenv(name)
        yield
