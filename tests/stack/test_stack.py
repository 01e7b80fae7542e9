"""The default stack, as `docker compose up` starts it on a laptop with no .env."""

from __future__ import annotations

import re
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest

from tests.stack.harness import ROOT, Stack, parse_docker_time, wait_for
from tests.stack.service import READ_PATH, example_only


@dataclass
class Startup:
    """`up` from nothing, watched over HTTPS from its first moment."""

    began: float
    first_success: float
    # (when the answer arrived, its status) for every answer until the first success
    answers: list[tuple[float, int]]
    db_healthy: float
    app_healthy: float


@pytest.fixture(scope="module")
def started(stack_factory: Callable[..., Stack]) -> tuple[Stack, Startup]:
    """Start the stack from nothing while polling it over HTTPS from the first moment."""
    # Unreachable on purpose: a local stack must never ask an ACME server for anything.
    stack = stack_factory(ACME_CA_SERVER="https://acme.invalid/directory")
    answers: list[tuple[float, int]] = []
    stop = threading.Event()

    def poll() -> None:
        with stack.client(timeout=2) as client:
            deadline = time.monotonic() + 180
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    status = client.get(READ_PATH).status_code
                except httpx.TransportError:
                    status = 0  # nothing listening yet: not an answer
                if status:
                    answers.append((time.time(), status))
                if status == 200:
                    return
                time.sleep(0.05)

    poller = threading.Thread(target=poll)
    with stack.watch_health() as health:
        began = time.time()
        poller.start()
        try:
            stack.up(wait=False)
            poller.join(timeout=120)
        finally:
            stop.set()
            poller.join()
        successes = [when for when, status in answers if status == 200]
        assert successes, "no request through Traefik succeeded within 120 s"
        db_healthy = health.wait("db", "healthy")
        app_healthy = health.wait("app", "healthy")
    return stack, Startup(began, successes[0], answers, db_healthy, app_healthy)


def test_startup_order(started: tuple[Stack, Startup]) -> None:
    stack, startup = started
    migrate = stack.state("migrate")
    app = stack.state("app")

    assert migrate["ExitCode"] == 0
    assert startup.db_healthy < parse_docker_time(migrate["StartedAt"])
    assert parse_docker_time(migrate["FinishedAt"]) < parse_docker_time(app["StartedAt"])
    assert startup.app_healthy < startup.first_success


def test_traefik_answers_404_until_the_app_is_healthy(started: tuple[Stack, Startup]) -> None:
    """Traefik has no route to an app that is not healthy yet: 404, never a 502 from a
    half-started app, and never the app's own answer."""
    _, startup = started
    before = [status for when, status in startup.answers if when < startup.app_healthy]
    assert before, "Traefik gave no answer before the app was healthy"
    assert set(before) == {404}, before
    assert all(status in (200, 404) for _, status in startup.answers), startup.answers


@example_only
def test_items_round_trip_over_https(started: tuple[Stack, Startup]) -> None:
    stack, _ = started
    with stack.client() as client:
        created = client.post("/api/items", json={"name": "Round trip", "price": "3.20"})
        assert created.status_code == 201
        item_id = created.json()["id"]
        assert client.get(f"/api/items/{item_id}").json()["price"] == "3.20"
        patched = client.patch(f"/api/items/{item_id}", json={"price": "4.00"})
        assert patched.json()["price"] == "4.00"
        assert client.delete(f"/api/items/{item_id}").status_code == 204
        assert client.get(f"/api/items/{item_id}").status_code == 404


def test_http_redirects_to_https(started: tuple[Stack, Startup]) -> None:
    stack, _ = started
    response = httpx.get(
        f"http://127.0.0.1:{stack.http_port}/api/items?limit=1", headers={"Host": "localhost"}
    )
    assert response.status_code in (301, 308)
    assert response.headers["location"] == "https://localhost/api/items?limit=1"


def test_security_headers_without_hsts_on_localhost(
    started: tuple[Stack, Startup],
) -> None:
    stack, _ = started
    with stack.client() as client:
        headers = client.get("/health/live").headers
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert "strict-transport-security" not in headers  # only for a real DOMAIN


def tls_handshake(port: int, version: ssl.TLSVersion) -> str:
    """Handshake with exactly one TLS version; returns the version agreed on."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers("ALL:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = context.maximum_version = version
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return str(tls.version())


def test_tls_1_2_is_the_minimum(started: tuple[Stack, Startup]) -> None:
    stack, _ = started
    assert tls_handshake(stack.https_port, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    assert tls_handshake(stack.https_port, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    with pytest.raises(ssl.SSLError, match=r"(?i)alert protocol version"):
        tls_handshake(stack.https_port, ssl.TLSVersion.TLSv1_1)


# traefik/dynamic/tls.yml's suites (Go's names), with OpenSSL's names for the same suites.
CONFIGURED_SUITES = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
}


def tls12_suites() -> list[str]:
    """Every TLS 1.2 suite this machine's OpenSSL can offer, weak ones included."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.set_ciphers("ALL:@SECLEVEL=0")
    return [suite["name"] for suite in context.get_ciphers() if suite["protocol"] != "TLSv1.3"]


def accepts_tls12_suite(port: int, suite: str) -> bool:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(f"{suite}:@SECLEVEL=0")
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            agreed = tls.cipher()
    except ssl.SSLError:
        return False
    assert agreed is not None
    assert agreed[0] == suite
    return True


def forward_secret_aead(suite: str) -> bool:
    """An ephemeral key exchange (forward secrecy) and an AEAD cipher (no CBC + MAC)."""
    key_exchange_ok = suite.startswith(("ECDHE-", "DHE-")) and "-PSK-" not in suite
    return key_exchange_ok and any(aead in suite for aead in ("-GCM-", "CHACHA20-POLY1305"))


def test_tls_1_2_accepts_only_the_configured_forward_secret_aead_suites(
    started: tuple[Stack, Startup],
) -> None:
    stack, _ = started
    tls_yml = (ROOT / "traefik" / "dynamic" / "tls.yml").read_text()
    suites_section = tls_yml.split("cipherSuites:")[1].split("curvePreferences:")[0]
    assert re.findall(r"- (TLS_\w+)", suites_section) == list(CONFIGURED_SUITES)
    offered = tls12_suites()
    accepted = {suite for suite in offered if accepts_tls12_suite(stack.https_port, suite)}
    assert len(offered) > 100  # the weak suites were really tried
    # A suite names the certificate's key type (RSA or ECDSA): every configured suite for
    # the certificate served is accepted, and nothing else.
    key_types = {"ECDSA" if "-ECDSA-" in suite else "RSA" for suite in accepted}
    assert len(key_types) == 1, sorted(accepted)
    key_type = key_types.pop()
    usable = {name for name in CONFIGURED_SUITES.values() if f"-{key_type}-" in name}
    assert accepted == usable, sorted(accepted)
    assert all(forward_secret_aead(suite) for suite in accepted)
    # Named refusals, for the record: CBC with ECDHE, and RSA key exchange with GCM.
    assert {"ECDHE-RSA-AES128-SHA", "ECDHE-RSA-AES128-SHA256", "AES128-GCM-SHA256"} <= (
        set(offered) - accepted
    )


def test_app_sees_https_scheme_behind_the_proxy(started: tuple[Stack, Startup]) -> None:
    stack, _ = started
    with stack.client() as client:
        # The trailing-slash redirect is built from the request's own URL.
        response = client.get(f"{READ_PATH}/", follow_redirects=False)
    assert response.status_code == 307
    assert response.headers["location"] == f"https://localhost{READ_PATH}"


def test_localhost_gets_a_self_signed_certificate_and_no_acme(
    started: tuple[Stack, Startup],
) -> None:
    stack, _ = started
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", stack.https_port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        certificate = tls.getpeercert(binary_form=True) or b""
    assert b"TRAEFIK DEFAULT CERT" in certificate
    traefik_log = stack.logs("traefik")
    assert "acme.invalid" in traefik_log  # the resolver is configured with it...
    assert "Unable to obtain ACME certificate" not in traefik_log  # ...and never used


def test_local_default_says_it_uses_development_values(
    started: tuple[Stack, Startup],
) -> None:
    stack, _ = started
    assert "development-only defaults" in stack.logs("preflight")
    assert "development-only defaults" in stack.logs("app")


def test_database_is_not_published(started: tuple[Stack, Startup]) -> None:
    stack, _ = started
    assert stack.container("db").attrs["NetworkSettings"]["Ports"] in ({}, {"5432/tcp": None})
    assert stack.container("db").attrs["HostConfig"]["PortBindings"] in ({}, None)


def test_no_service_gets_an_anonymous_volume(started: tuple[Stack, Startup]) -> None:
    """Anonymous volumes (an image's VOLUME with nothing mounted on it) have no name to
    back up or remove by, and outlive their containers on a failed `up`."""
    stack, _ = started
    containers = stack.docker.containers.list(
        all=True, filters={"label": f"com.docker.compose.project={stack.project}"}
    )
    assert {c.labels["com.docker.compose.service"] for c in containers} >= {"db", "backup"}
    anonymous = {
        (c.labels["com.docker.compose.service"], mount["Destination"])
        for c in containers
        for mount in c.attrs["Mounts"]
        if mount["Type"] == "volume" and not mount["Name"].startswith(f"{stack.project}_")
    }
    assert anonymous == set()


def test_app_runs_as_an_unprivileged_user(started: tuple[Stack, Startup]) -> None:
    stack, _ = started
    assert stack.run("exec", "-T", "app", "id", "-u").stdout.strip() == "10001"


@example_only  # in-flight requests: PATCHes waiting on an item's row lock
def test_graceful_shutdown_finishes_requests_in_flight(
    started: tuple[Stack, Startup],
) -> None:
    """Runs last in this module: it stops the app."""
    stack, _ = started
    with stack.client() as client:
        item = client.post("/api/items", json={"name": "contended", "price": "1.00"}).json()

    # Hold the item's row lock for 4 s, so PATCHes to it stay in flight that long.
    locker = threading.Thread(
        target=stack.psql,
        args=(f"BEGIN; SELECT 1 FROM items WHERE id = {item['id']} FOR UPDATE; "
              "SELECT pg_sleep(4); COMMIT;",),
    )  # fmt: skip
    locker.start()
    wait_for(
        lambda: stack.psql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(4)%'"
                           " AND pid <> pg_backend_pid()") == "1",
        timeout=10, what="the row lock",
    )  # fmt: skip

    in_flight = 8

    def patch(number: int) -> int:
        with stack.client(timeout=30) as client:
            response = client.patch(f"/api/items/{item['id']}", json={"price": f"{number}.00"})
            return response.status_code

    with ThreadPoolExecutor(max_workers=in_flight) as pool:
        results = [pool.submit(patch, number) for number in range(in_flight)]
        wait_for(
            lambda: int(stack.psql("SELECT count(*) FROM pg_stat_activity "
                                   "WHERE wait_event_type = 'Lock'")) == in_flight,
            timeout=10, what="all PATCHes to wait on the lock",
        )  # fmt: skip
        stopping = time.monotonic()
        stack.run("stop", "app", timeout=60)
        stop_seconds = time.monotonic() - stopping
        statuses = [result.result() for result in results]
    locker.join()

    assert statuses == [200] * in_flight
    state = stack.state("app")
    assert state["Status"] == "exited"
    assert state["ExitCode"] == 0
    assert stop_seconds < 30  # stop_grace_period: never needed SIGKILL
    logs = stack.logs("app")
    assert logs.count("lifespan shutdown complete") == 2  # one per worker
