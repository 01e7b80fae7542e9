"""/api/version names the release and, opaquely, the container answering (berth/probe.py
and scripts/deploy rely on both)."""

from __future__ import annotations

import hashlib
import socket
import subprocess

import httpx

from berth.version import INSTANCE, instance_of


async def test_version_names_the_release_and_the_container(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/version")
    assert response.status_code == 200
    assert response.json() == {"version": "dev", "instance": INSTANCE}  # APP_VERSION unset
    assert instance_of(socket.gethostname()) == INSTANCE


def test_the_instance_is_the_hostname_hashed_as_scripts_deploy_hashes_it() -> None:
    """scripts/deploy names containers with `printf %s HOSTNAME | sha256sum`."""
    hostname = "0123456789ab"
    shell = subprocess.run(
        ["bash", "-c", 'printf %s "$1" | sha256sum', "-", hostname],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert instance_of(hostname) == shell.stdout[:12]
    assert instance_of(hostname) == hashlib.sha256(hostname.encode()).hexdigest()[:12]
    assert hostname not in instance_of(hostname)
