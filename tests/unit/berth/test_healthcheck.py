"""The container healthcheck's timing: answer as soon as the app is up, pause between later
checks, and fail at once when a deploy drains the container (berth/healthcheck.py)."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from berth import healthcheck


class Answer(socketserver.BaseRequestHandler):
    status = b"200 OK"

    def handle(self) -> None:
        self.request.recv(1024)
        self.request.sendall(b"HTTP/1.0 " + self.status + b"\r\n\r\n{}")


def serve(port: int, status: bytes = b"200 OK") -> Callable[[], None]:
    """An app stand-in on 127.0.0.1:port; returns how to stop it."""
    handler = type("Handler", (Answer,), {"status": status})
    server = socketserver.TCPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return stop


@pytest.fixture
def port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Files:
    drain_flag: Path
    passed: Path


@pytest.fixture
def paths(tmp_path: Path) -> Files:
    return Files(drain_flag=tmp_path / "draining", passed=tmp_path / "passed")


def probe(port: int, paths: Files, startup_wait: float = 5, pause: float = 5) -> str | None:
    return healthcheck.run(
        ("127.0.0.1", port), str(paths.drain_flag), str(paths.passed), startup_wait, pause
    )


@pytest.fixture
def app(port: int) -> Iterator[int]:
    stop = serve(port)
    yield port
    stop()


def timed(action: Callable[[], str | None]) -> tuple[str | None, float]:
    started = time.monotonic()
    result = action()
    return result, time.monotonic() - started


def test_the_first_run_waits_for_the_app_and_passes_as_soon_as_it_answers(
    port: int, paths: Files
) -> None:
    stops: list[Callable[[], None]] = []
    starting = threading.Timer(0.5, lambda: stops.append(serve(port)))
    starting.start()
    try:
        problem, seconds = timed(lambda: probe(port, paths))
    finally:
        starting.join()
        for stop in stops:
            stop()
    assert problem is None
    assert 0.5 <= seconds < 1.5
    assert paths.passed.exists()


def test_until_the_first_pass_every_run_waits_for_the_app(port: int, paths: Files) -> None:
    problem, seconds = timed(lambda: probe(port, paths, startup_wait=0.5))

    assert problem is not None
    assert "refused" in problem.lower()
    assert seconds >= 0.4  # it kept trying until the wait ran out
    assert not paths.passed.exists()  # so the next run waits again


def test_after_the_first_pass_a_run_pauses_then_checks_once(app: int, paths: Files) -> None:
    paths.passed.touch()

    problem, seconds = timed(lambda: probe(app, paths, pause=1))

    assert problem is None
    assert 1 <= seconds < 1.5


def test_after_the_first_pass_a_failure_is_not_waited_out(port: int, paths: Files) -> None:
    paths.passed.touch()

    problem, seconds = timed(lambda: probe(port, paths, startup_wait=10, pause=0.2))

    assert problem is not None
    assert "refused" in problem.lower()
    assert seconds < 0.5


def test_a_drain_ends_a_pause_at_once(app: int, paths: Files) -> None:
    paths.passed.touch()
    flag = threading.Timer(0.3, paths.drain_flag.touch)
    flag.start()

    problem, seconds = timed(lambda: probe(app, paths, pause=10))

    flag.join()
    assert problem == "draining for a deploy"
    assert seconds < 0.6


@pytest.mark.parametrize("passed_before", [True, False])
def test_a_draining_container_fails_every_run_at_once(
    app: int, paths: Files, passed_before: bool
) -> None:
    if passed_before:
        paths.passed.touch()
    paths.drain_flag.touch()
    for _ in range(3):
        problem, seconds = timed(lambda: probe(app, paths, pause=10))
        assert problem == "draining for a deploy"
        assert seconds < 0.2


def test_an_answer_other_than_200_fails(port: int, paths: Files) -> None:
    stop = serve(port, b"503 Service Unavailable")
    try:
        problem = probe(port, paths, startup_wait=0.3)
    finally:
        stop()
    assert problem == "/health/live answered 'HTTP/1.0 503 Service Unavailable'"
    assert not paths.passed.exists()
