"""Per-client abuse limits at the edge (traefik/dynamic/limits.yml), with two real clients.

Traefik keys the limits on its TCP peer. The flooding client is this test process: it
reaches Traefik through the port published on 127.0.0.1, so Docker's userland proxy is its
peer, at the proxy network's gateway address. The second client is a container on the proxy
network, with an address of its own, which is what an outside client is after Docker's
DNAT. Both addresses are checked in the app's access log, so the test shows the two are
told apart by address and nothing else.
"""

from __future__ import annotations

import ipaddress
import json
import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import docker
import httpx
import pytest
from docker.models.containers import Container

from tests.stack.harness import Stack, wait_for
from tests.stack.service import READ_PARAMS, READ_PATH, example_only

PYTHON_IMAGE = os.environ.get("PYTHON_IMAGE", "python:3.13-slim")
AVERAGE = 20  # requests a second, per client
BURST = 20
IN_FLIGHT = 4
READS = str(httpx.URL(READ_PATH, params=READ_PARAMS))  # the service's reads
# How long the in-flight test may hold requests (the database allows it: see `stack`).
LOCK_SECONDS = 45


@pytest.fixture(scope="module")
def stack(stack_factory: Callable[..., Stack]) -> Stack:
    stack = stack_factory(
        EDGE_RATE_LIMIT_AVERAGE=str(AVERAGE),
        EDGE_RATE_LIMIT_BURST=str(BURST),
        EDGE_INFLIGHT_LIMIT=str(IN_FLIGHT),
        # PATCHes held on a row lock must outlast a slow machine, not time out first.
        DB_STATEMENT_TIMEOUT_MS=str((LOCK_SECONDS + 15) * 1000),
        REQUEST_TIMEOUT_SECONDS=str(LOCK_SECONDS + 20),
    )
    stack.up()
    return stack


# A client of its own: from a container on the proxy network, `threads` connections to
# Traefik, each sending up to `rate` requests a second for `seconds`. Prints one JSON list of
# every request: start time (the host's clock: same kernel), status, Retry-After, duration.
CLIENT = """
import http.client, json, ssl, sys, threading, time
method, path, body, threads, rate, seconds = json.loads(sys.argv[1])
context = ssl._create_unverified_context()
headers = {"Host": "localhost", "Content-Type": "application/json"}
results, lock = [], threading.Lock()
deadline = time.time() + seconds

def run():
    connection, next_at = None, time.time()
    while next_at < deadline:
        time.sleep(max(0.0, next_at - time.time()))
        started = time.time()
        try:
            if connection is None:
                connection = http.client.HTTPSConnection(
                    "traefik", 443, context=context, timeout=10
                )
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            result = {"status": response.status, "retry_after": response.getheader("Retry-After")}
        except Exception as exc:
            connection = None
            result = {"error": type(exc).__name__}
        result.update(started=started, seconds=time.time() - started)
        with lock:
            results.append(result)
        next_at = max(next_at + 1 / rate, time.time())  # late: carry on, never catch up

workers = [threading.Thread(target=run) for _ in range(threads)]
for worker in workers:
    worker.start()
for worker in workers:
    worker.join()
print(json.dumps(results))
"""


@dataclass
class Client:
    """A container on the stack's proxy network, with an address of its own, that sends
    requests when asked (`docker exec`, quicker than starting a container each time)."""

    stack: Stack
    container: Container
    address: str

    def send(
        self, method: str, path: str, *, threads: int = 1, rate: float = 10,
        seconds: float = 1, body: str | None = None,
    ) -> list[dict[str, Any]]:  # fmt: skip
        arguments = json.dumps([method, path, body, threads, rate, seconds])
        # Its own connection to the engine: two clients send from two threads at once.
        container = docker.from_env().containers.get(self.container.id)
        result = container.exec_run(["python", "-c", CLIENT, arguments], demux=True)
        stdout, stderr = result.output
        assert result.exit_code == 0, (stderr or b"").decode()
        samples: list[dict[str, Any]] = json.loads(stdout)
        return samples


def start_client(stack: Stack) -> Client:
    container = docker.from_env().containers.run(
        PYTHON_IMAGE, ["python", "-c", "import time; time.sleep(900)"],
        name=f"berth-security-client-{uuid.uuid4().hex[:8]}", detach=True,
        network=f"{stack.project}_proxy", cap_drop=["ALL"], read_only=True,
        security_opt=["no-new-privileges:true"], mem_limit="128m", pids_limit=64,
    )  # fmt: skip
    container.reload()
    address = container.attrs["NetworkSettings"]["Networks"][f"{stack.project}_proxy"]
    return Client(stack, container, address["IPAddress"])


@pytest.fixture(scope="module")
def clients(stack: Stack) -> Iterator[list[Client]]:
    """Two clients, each with its own address."""
    made: list[Client] = []
    try:
        made += [start_client(stack), start_client(stack)]
        yield made
    finally:
        for client in made:
            client.container.remove(force=True)


def gateway(stack: Stack) -> str:
    """The proxy network's gateway: as set, or Docker's pick, the subnet's first address."""
    config = stack.docker.networks.get(f"{stack.project}_proxy").attrs["IPAM"]["Config"][0]
    return str(config.get("Gateway") or next(ipaddress.ip_network(config["Subnet"]).hosts()))


def client_addresses(stack: Stack, since: float, method: str = "GET") -> dict[str, int]:
    """Client address -> requests of `method` to the service's reads, from the app's access log
    since `since` (the app's own healthchecks come from 127.0.0.1, to other paths)."""
    counts: dict[str, int] = {}
    result = stack.run("logs", "--no-log-prefix", "--since", str(int(since) - 1), "app")
    for line in result.stdout.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict) or entry.get("method") != method:
            continue
        if str(entry.get("path", "")).startswith(READ_PATH):
            counts[entry["client"]] = counts.get(entry["client"], 0) + 1
    return counts


def test_a_flooding_client_gets_429s_while_another_is_served_at_normal_latency(
    stack: Stack, clients: list[Client]
) -> None:
    flooder, second = clients
    began = time.time()
    # The second client: 10 requests a second (half the limit) for 16 s. The flood starts
    # 5 s in and lasts 7 s: 16 connections at the limit's rate each, so that even answers
    # slowed by a busy machine cannot hold it under the limit.
    steady: list[dict[str, Any]] = []
    sender = threading.Thread(
        target=lambda: steady.extend(second.send("GET", READS, rate=10, seconds=16))
    )
    sender.start()
    time.sleep(5)
    flood = flooder.send("GET", READS, threads=16, rate=AVERAGE, seconds=7)
    sender.join(timeout=60)
    assert not sender.is_alive(), "the second client hung"

    # The flooder: far over the limit, held to it, and told when to come back.
    errors = [sample for sample in flood if "error" in sample]
    served = [sample for sample in flood if sample.get("status") == 200]
    refused = [sample for sample in flood if sample.get("status") == 429]
    flood_started = min(sample["started"] for sample in flood)
    flood_ended = max(sample["started"] + sample["seconds"] for sample in flood)
    allowed = BURST + AVERAGE * (flood_ended - flood_started)
    assert not errors, errors[:5]
    assert len(served) + len(refused) == len(flood), {sample["status"] for sample in flood}
    latency = {
        status: statistics.median(s["seconds"] for s in flood if s.get("status") == status)
        for status in {s.get("status") for s in flood}
    }
    print(f"flood: {len(served)} served, {len(refused)} refused; median seconds {latency}")
    assert len(flood) >= 2 * allowed, f"{len(flood)} requests: not far over the limit"
    assert len(served) <= allowed * 1.1, (len(served), allowed)
    assert refused
    assert all(int(sample["retry_after"]) >= 1 for sample in refused), refused[:5]

    # The second client: every request served, as fast during the flood as before it.
    assert len(steady) >= 40, len(steady)
    assert {sample.get("status") for sample in steady} == {200}, steady
    before = [s["seconds"] for s in steady if s["started"] < flood_started]
    during = [s["seconds"] for s in steady if flood_started + 0.5 < s["started"] < flood_ended]
    assert len(before) >= 10, len(before)
    assert len(during) >= 10, len(during)
    normal, flooded = statistics.median(before), statistics.median(during)
    print(f"second client: median {normal * 1000:.0f} ms before, {flooded * 1000:.0f} ms during")
    # Generous on purpose: both clients and TLS share this machine's CPUs; a starved client
    # waits seconds, not tens of milliseconds.
    assert flooded <= max(3 * normal, normal + 0.1), (before, during)

    # Two clients, told apart by their own addresses; only what Traefik let through
    # reached the app.
    seen = client_addresses(stack, began)
    assert seen == {flooder.address: len(served), second.address: len(steady)}


HOLDING = f"SELECT pg_sleep({LOCK_SECONDS})"
LOCKER = f"FROM pg_stat_activity WHERE query LIKE '%{HOLDING}%' AND pid <> pg_backend_pid()"


@pytest.fixture
def locked_item(stack: Stack) -> Iterator[tuple[int, int]]:
    """Two new items, the first one's row locked until `release_lock`, so PATCHes to it
    stay in flight."""
    with stack.client() as client:
        ids = [
            client.post("/api/items", json={"name": f"edge-{n}", "price": "1.00"}).json()["id"]
            for n in range(2)
        ]
    locker = threading.Thread(
        target=stack.psql,
        args=(f"BEGIN; SELECT 1 FROM items WHERE id = {ids[0]} FOR UPDATE; {HOLDING}; COMMIT;",),
        kwargs={"check": False},
    )
    locker.start()
    wait_for(lambda: stack.psql(f"SELECT count(*) {LOCKER}") == "1", timeout=30, what="lock")
    try:
        yield ids[0], ids[1]
    finally:
        release_lock(stack)
        locker.join(timeout=30)


def release_lock(stack: Stack) -> None:
    stack.psql(f"SELECT pg_cancel_backend(pid) {LOCKER}")


def waiting_on_locks(stack: Stack) -> int:
    return int(stack.psql("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"))


@example_only  # in-flight requests: PATCHes waiting on an item's row lock
def test_a_client_at_its_in_flight_limit_gets_429_while_another_is_served(
    stack: Stack, clients: list[Client], locked_item: tuple[int, int]
) -> None:
    held_id, free_id = locked_item
    _, second = clients
    began = time.time()

    def patch(item_id: int) -> httpx.Response:
        with stack.client(timeout=LOCK_SECONDS) as client:
            return client.patch(f"/api/items/{item_id}", json={"price": "2.00"})

    # This process, one client (see gateway()): IN_FLIGHT PATCHes that wait on the lock.
    held: list[httpx.Response] = []
    holders = [
        threading.Thread(target=lambda: held.append(patch(held_id))) for _ in range(IN_FLIGHT)
    ]
    for holder in holders:
        holder.start()
    wait_for(lambda: waiting_on_locks(stack) == IN_FLIGHT, timeout=30, what="PATCHes held")

    # One more from the same client, to an item nobody locks: refused, with Retry-After.
    over = patch(free_id)
    assert over.status_code == 429, over.text
    assert int(over.headers["retry-after"]) >= 1

    # Another client's PATCH to that item is served, while the first client's stay held.
    body = json.dumps({"price": "3.00"})
    (answer,) = second.send("PATCH", f"/api/items/{free_id}", rate=1, seconds=0.5, body=body)
    assert answer.get("status") == 200, answer
    assert waiting_on_locks(stack) == IN_FLIGHT

    # The lock ends; the held PATCHes then finish.
    release_lock(stack)
    for holder in holders:
        holder.join(timeout=LOCK_SECONDS)
    assert [response.status_code for response in held] == [200] * IN_FLIGHT
    assert client_addresses(stack, began, "PATCH") == {gateway(stack): IN_FLIGHT, second.address: 1}
