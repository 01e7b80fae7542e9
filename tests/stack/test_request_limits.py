"""Request bodies over 1 MiB get 413 for every method that can carry one, whatever their
framing, and a slow upload that Traefik accepted before a stop completes: the limit lives in
the app's runtime (berth/runtime.py), so no proxy buffering holds bodies back from uvicorn.
Past the in-flight limit, requests get a fast 503 with Retry-After, never a connection error."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.stack import service
from tests.stack.faults import Load, wait_healthy, wait_workers
from tests.stack.harness import Stack, wait_for

# These tests use the items example (a service generated without it skips them):
# they send to the items example's routes.
pytestmark = service.example_only

LIMIT = 1024 * 1024
OVER = LIMIT + 1
BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")
SLOW_UPLOADS = 8


@pytest.fixture(scope="module")
def stack(stack_factory: Callable[..., Stack]) -> Stack:
    stack = stack_factory(WEB_CONCURRENCY="2")
    stack.up()
    wait_workers(stack, 2)
    return stack


def create(client: httpx.Client) -> int:
    response = client.post("/api/items", json={"name": f"keep-{uuid.uuid4().hex}", "price": "1"})
    assert response.status_code == 201, response.text
    item_id: int = response.json()["id"]
    return item_id


def path_for(method: str, item_id: int) -> str:
    return "/api/items" if method == "POST" else f"/api/items/{item_id}"


def oversized_json() -> bytes:
    """A valid item whose description alone passes the limit."""
    return json.dumps({"name": "big", "price": "1", "description": "x" * OVER}).encode()


def chunks(body: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    """With no Content-Length, httpx sends this as Transfer-Encoding: chunked."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


def assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 413, (response.status_code, response.text[:200])
    assert response.json() == {"detail": f"request body larger than {LIMIT} bytes"}
    assert len(response.headers["x-request-id"]) == 32  # the runtime answered, and logged it


@pytest.mark.parametrize("method", BODY_METHODS)
def test_a_declared_length_over_the_limit_is_413(stack: Stack, method: str) -> None:
    with stack.client() as client:
        item_id = create(client)
        before = stack.psql("SELECT count(*) FROM items")
        response = client.request(
            method,
            path_for(method, item_id),
            content=oversized_json(),
            headers={"content-type": "application/json"},
        )
        assert_refused(response)
        # Refused before the handler ran: a DELETE deleted nothing, a POST created nothing.
        assert stack.psql("SELECT count(*) FROM items") == before
        assert client.get(f"/api/items/{item_id}").status_code == 200


@pytest.mark.parametrize("method", BODY_METHODS)
def test_a_chunked_body_over_the_limit_is_413(stack: Stack, method: str) -> None:
    with stack.client() as client:
        item_id = create(client)
        before = stack.psql("SELECT count(*) FROM items")
        response = client.request(
            method,
            path_for(method, item_id),
            content=chunks(oversized_json()),
            headers={"content-type": "application/json"},
        )
        assert response.request.headers.get("transfer-encoding") == "chunked"
        assert_refused(response)
        assert stack.psql("SELECT count(*) FROM items") == before
        assert client.get(f"/api/items/{item_id}").status_code == 200


def test_a_body_at_the_limit_is_accepted(stack: Stack) -> None:
    """The limit is on the body, not on some rounder number below it."""
    name = f"at-limit-{uuid.uuid4().hex}"
    skeleton = json.dumps({"name": name, "price": "1", "description": ""}).encode()
    # The description may be at most 2000 characters: pad with JSON whitespace instead.
    body = skeleton[:-1] + b" " * (LIMIT - len(skeleton)) + b"}"
    assert len(body) == LIMIT
    with stack.client() as client:
        declared = client.post("/api/items", content=body,
                               headers={"content-type": "application/json"})  # fmt: skip
        assert declared.status_code == 201, declared.text[:200]
        body = body.replace(name.encode(), name.encode()[::-1])
        chunked = client.post("/api/items", content=chunks(body),
                              headers={"content-type": "application/json"})  # fmt: skip
        assert chunked.status_code == 201, chunked.text[:200]


class SlowUpload:
    """A POST that sends its headers and half its body, then waits for `go` to send the
    rest. `half_sent` is released once the first half has been written."""

    def __init__(self, stack: Stack, go: threading.Event, half_sent: threading.Semaphore):
        self.stack, self.go, self.half_sent = stack, go, half_sent
        self.name = f"slow-{uuid.uuid4().hex}"
        self.response: httpx.Response | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def body(self) -> Iterator[bytes]:
        payload = json.dumps({"name": self.name, "price": "2.50"}).encode()
        half = len(payload) // 2
        yield payload[:half]
        self.half_sent.release()  # httpx asks for the next part only after writing this one
        self.go.wait(timeout=30)
        yield payload[half:]

    def _run(self) -> None:
        try:
            with self.stack.client(timeout=30) as client:
                payload_length = len(json.dumps({"name": self.name, "price": "2.50"}))
                self.response = client.post(
                    "/api/items",
                    content=self.body(),
                    headers={"content-type": "application/json",
                             "content-length": str(payload_length)},
                )  # fmt: skip
        except BaseException as exc:  # reported by the test, never lost with the thread
            self.error = exc


def test_slow_uploads_in_flight_complete_across_a_stop(stack: Stack) -> None:
    go, half_sent = threading.Event(), threading.Semaphore(0)
    uploads = [SlowUpload(stack, go, half_sent) for _ in range(SLOW_UPLOADS)]
    try:
        for upload in uploads:
            upload.thread.start()
        for _ in uploads:
            assert half_sent.acquire(timeout=30), "an upload never sent its first half"
        time.sleep(0.5)  # the halves are through Traefik and at uvicorn
        stopping = threading.Thread(target=lambda: stack.run("stop", "app", timeout=120))
        stopping.start()
        time.sleep(1.5)
        go.set()
        for upload in uploads:
            upload.thread.join(timeout=60)
        stopping.join(timeout=120)
    finally:
        go.set()
        stack.run("start", "app")
        wait_healthy(stack, "app", timeout=60)
    assert [upload.error for upload in uploads] == [None] * SLOW_UPLOADS
    statuses = [upload.response.status_code for upload in uploads if upload.response]
    assert statuses == [201] * SLOW_UPLOADS
    names = ", ".join(f"'{upload.name}'" for upload in uploads)
    stack.wait_routed()
    count = wait_for(
        lambda: stack.psql(f"SELECT count(*) FROM items WHERE name IN ({names})"), timeout=10
    )
    assert count == str(SLOW_UPLOADS)


def test_past_the_in_flight_limit_requests_get_503_with_retry_after(
    stack_factory: Callable[..., Stack],
) -> None:
    """One request at a time per worker and no wait for a slot: concurrent clients find the
    slots taken, and are told so at once."""
    stack = stack_factory(WEB_CONCURRENCY="2", MAX_IN_FLIGHT_PER_WORKER="1", ADMISSION_WAIT_MS="0")
    stack.up()
    wait_workers(stack, 2)
    # Pages of 500 items keep a worker busy for a while, so concurrent clients collide.
    stack.psql(
        "INSERT INTO items (name, price) SELECT 'page-' || n, n FROM generate_series(1, 500) n"
    )
    refusals: list[httpx.Response] = []

    def read(client: httpx.Client, worker: int, number: int) -> tuple[httpx.Response, str]:
        response = client.get("/api/items", params={"limit": 500})
        if response.status_code == 503:
            refusals.append(response)
        return response, ""

    with Load(stack, request=read, clients=12, max_requests=40, max_seconds=120) as load:
        with stack.client() as client:
            for _ in range(40):
                assert client.get("/health/live").status_code == 200  # never limited
        load.join()
    assert len(load.outcomes) == 12 * 40
    statuses = {outcome.status for outcome in load.outcomes}
    assert statuses == {200, 503}, statuses  # no connection errors, no other status
    assert len(refusals) >= 1
    for refused in refusals:
        assert refused.headers["retry-after"] == "1"
        assert len(refused.headers["x-request-id"]) == 32
        assert refused.json() == {"detail": "the server is at capacity, try again shortly"}
    slowest = max(o.seconds for o in load.outcomes if o.status == 503)
    assert slowest < 5  # refused, not queued (the bench measures how fast: bench/overload.py)
