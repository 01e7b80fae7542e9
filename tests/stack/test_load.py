"""The load generator itself (no containers): a "0 failed" from it must mean what it says."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, cast

import httpx
import pytest

from tests.stack import service
from tests.stack.faults import ClientThreadDied, Load
from tests.stack.harness import Stack


class FakeStack:
    """Just enough of a Stack for Load: clients that answer from `handler`."""

    def __init__(self, handler: Callable[[httpx.Request], httpx.Response]) -> None:
        self.handler = handler

    def client(self, *, timeout: float = 10, **_: Any) -> httpx.Client:
        transport = httpx.MockTransport(self.handler)
        return httpx.Client(base_url="https://test", transport=transport, timeout=timeout)


def load(handler: Callable[[httpx.Request], httpx.Response], **options: Any) -> Load:
    return Load(cast(Stack, FakeStack(handler)), request=service.read, **options)


def ok(_: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"items": []})


def test_a_clean_load_passes() -> None:
    with load(ok, clients=3, max_requests=20) as running:
        running.join()
    running.assert_no_failures(min_requests=60)


def test_too_few_requests_fail_the_claim() -> None:
    with load(ok, clients=2, max_requests=5) as running:
        running.join()
    with pytest.raises(AssertionError, match="only 10 requests sent, fewer than 11"):
        running.assert_no_failures(min_requests=11)


def test_one_failed_request_fails_the_claim() -> None:
    sent: list[httpx.Request] = []

    def tenth_is_a_502(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(502) if len(sent) == 10 else ok(request)

    with load(tenth_is_a_502, clients=1, max_requests=30) as running:
        running.join()
    with pytest.raises(AssertionError, match="1 of 30 requests failed"):
        running.assert_no_failures(min_requests=1)


def test_a_client_thread_that_dies_fails_the_test() -> None:
    """An exception that is not an HTTP error (a bug in a request function, a bad JSON
    body) ends its thread; leaving the block says so instead of a warning."""

    called = threading.Event()

    def broken(request: httpx.Request) -> httpx.Response:
        called.set()
        raise ValueError("not an HTTP error")

    running = load(broken, clients=2, max_requests=5)
    with pytest.raises(ClientThreadDied, match="not an HTTP error") as raised, running:
        assert called.wait(timeout=10)
    assert isinstance(raised.value.__cause__, ValueError)


def test_an_exception_in_the_test_is_not_hidden_by_a_dead_client() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        raise ValueError("client side")

    with pytest.raises(KeyError, match="the test's own"), load(broken, clients=1):
        raise KeyError("the test's own")


def test_stop_and_join_report_a_dead_client() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("boom")

    running = load(broken, clients=1, max_requests=3)
    running.__enter__()
    with pytest.raises(ClientThreadDied, match="boom"):
        running.join()
    with pytest.raises(ClientThreadDied, match="boom"):
        running.stop()
