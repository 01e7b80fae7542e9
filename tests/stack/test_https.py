"""Production mode: a real DOMAIN gets a certificate over ACME (Pebble standing in for
Let's Encrypt), HSTS, and the HTTP->HTTPS redirect."""

from __future__ import annotations

import ssl
from collections.abc import Callable

import httpx
import pytest

from tests.stack.harness import Stack, wait_for
from tests.stack.service import example_only

DOMAIN = "berth.test"


@pytest.fixture(scope="module")
def production(
    stack_factory: Callable[..., Stack], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Stack, ssl.SSLContext]:
    ca_file = tmp_path_factory.mktemp("pebble") / "minica.pem"
    ca_file.touch()
    stack = stack_factory(
        "pebble.yaml",
        DOMAIN=DOMAIN,
        ACME_EMAIL="ops@berth.test",
        POSTGRES_PASSWORD="a-production-strength-password",
        PEBBLE_CA_FILE=str(ca_file),
    )
    # Pebble's API certificate is made when its image is built: read it from the image.
    stack.up("pebble", wait=False)
    stack.run("cp", "pebble:/test/certs/pebble.minica.pem", str(ca_file))
    stack.up()
    return stack, trust_pebble_roots(stack)


def trust_pebble_roots(stack: Stack) -> ssl.SSLContext:
    """Pebble signs certificates with a root it generates at start; fetch it."""
    port = stack.run("port", "pebble", "15000").stdout.strip().rsplit(":", 1)[1]
    root = httpx.get(f"https://127.0.0.1:{port}/roots/0", verify=False, timeout=10).text
    return ssl.create_default_context(cadata=root)


def get_verified(stack: Stack, context: ssl.SSLContext, path: str) -> httpx.Response | None:
    try:
        with stack.client(verify=context) as client:
            return client.get(path, extensions={"sni_hostname": DOMAIN})
    except httpx.ConnectError:  # Traefik's default certificate until ACME finishes
        return None


def test_certificate_issued_by_the_acme_ca(production: tuple[Stack, ssl.SSLContext]) -> None:
    stack, context = production
    response = wait_for(
        lambda: get_verified(stack, context, "/health/ready"),
        timeout=90,
        interval=1,
        what="a certificate from Pebble",
    )
    assert response.status_code == 200
    assert response.json()["status"] == "ready"


def test_hsts_and_security_headers(production: tuple[Stack, ssl.SSLContext]) -> None:
    stack, context = production
    response = wait_for(lambda: get_verified(stack, context, "/health/live"), timeout=90)
    assert response.headers["strict-transport-security"] == "max-age=63072000; includeSubDomains"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_http_redirects_to_https(production: tuple[Stack, ssl.SSLContext]) -> None:
    stack, _ = production
    response = httpx.get(f"http://127.0.0.1:{stack.http_port}/api/items", headers={"Host": DOMAIN})
    assert response.status_code in (301, 308)
    assert response.headers["location"] == f"https://{DOMAIN}/api/items"


@example_only
def test_items_round_trip_over_verified_https(production: tuple[Stack, ssl.SSLContext]) -> None:
    stack, context = production
    wait_for(lambda: get_verified(stack, context, "/health/live"), timeout=90)
    sni = {"sni_hostname": DOMAIN}
    with stack.client(verify=context) as client:
        created = client.post(
            "/api/items", json={"name": "Certified", "price": "8.00"}, extensions=sni
        )
        assert created.status_code == 201
        fetched = client.get(f"/api/items/{created.json()['id']}", extensions=sni)
        assert fetched.json()["name"] == "Certified"
