"""The app container's healthcheck: `python -m berth.healthcheck`.

Docker runs it `interval` (0.25 s) after the container starts, then `interval` after each
run ends. This engine has no `start_interval` (API 1.41), so one setting has to serve needs that
pull apart; a marker on the container's tmpfs /tmp (empty at every start) tells them apart:

- **Start-up**, until the first pass: a run waits up to STARTUP_WAIT_SECONDS for the app, so
  the container turns healthy (and Traefik routes to it) as soon as the app answers, not at
  the next multiple of an interval.
- **After it**: a run first pauses PAUSE_SECONDS, then checks once, so a probe comes every
  3 s, the pace (and so the CPU) of the former `interval: 3s`, and with `retries: 3` a
  failing app turns unhealthy after as many failed checks, as far apart, as before. Each
  run costs a `docker exec`, about 40 ms of CPU in the container and as much in the daemon
  here (bench/tuning.md): on a small, busy server those bursts show in the latency tail.
- **Draining** (scripts/deploy creates DRAIN_FLAG): a run fails at once, also in the middle
  of a pause, and so do the runs after it: Docker reports the container unhealthy (3 failed
  runs, `retries: 3`) under a second after the flag appears, and Traefik, which routes only
  to healthy containers, stops sending it requests before scripts/deploy stops it. (Traefik
  keeps routing to a stopping container until it dies: only its health takes it out.)

It imports nothing from the app and speaks HTTP/1.0 over a bare socket: importing urllib
alone took 24 ms of CPU per run.
"""

from __future__ import annotations

import os
import socket
import sys
import time

ADDRESS = ("127.0.0.1", 8000)
REQUEST = b"GET /health/live HTTP/1.0\r\nHost: localhost\r\n\r\n"
CHECK_TIMEOUT_SECONDS = 2.0
STARTUP_WAIT_SECONDS = 6.0
PAUSE_SECONDS = 2.75  # + compose.yaml's interval (0.25 s): a check every 3 s
POLL_SECONDS = 0.05
# On the container's own private tmpfs /tmp (compose.yaml): emptied at every start.
DRAIN_FLAG = "/tmp/berth-draining"  # noqa: S108
PASSED = "/tmp/berth-health-passed"  # noqa: S108 - this container has passed once


class Draining(Exception):
    """scripts/deploy is taking this container out of routing."""


def check(address: tuple[str, int], timeout: float) -> str | None:
    """None when /health/live answers 200, else what went wrong."""
    try:
        with socket.create_connection(address, timeout=timeout) as connection:
            connection.sendall(REQUEST)
            status_line = connection.recv(64).split(b"\r\n", 1)[0]
    except OSError as exc:
        return f"{address[0]}:{address[1]}: {exc or type(exc).__name__}"
    if status_line.split(b" ")[1:2] == [b"200"]:
        return None
    return f"/health/live answered {status_line.decode(errors='replace')!r}"


def pause(seconds: float, drain_flag: str) -> None:
    """Sleep, but raise Draining as soon as the drain flag appears."""
    deadline = time.monotonic() + seconds
    while True:
        if os.path.exists(drain_flag):
            raise Draining
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        time.sleep(min(2 * POLL_SECONDS, remaining))


def wait_until_up(address: tuple[str, int], seconds: float, drain_flag: str) -> str | None:
    """Check until the app answers 200 or `seconds` pass; None when it did."""
    deadline = time.monotonic() + seconds
    while True:
        remaining = deadline - time.monotonic()
        problem = check(address, timeout=max(min(CHECK_TIMEOUT_SECONDS, remaining), POLL_SECONDS))
        if problem is None or deadline - time.monotonic() <= POLL_SECONDS:
            return problem
        pause(POLL_SECONDS, drain_flag)


def run(
    address: tuple[str, int] = ADDRESS,
    drain_flag: str = DRAIN_FLAG,
    passed: str = PASSED,
    startup_wait: float = STARTUP_WAIT_SECONDS,
    pause_seconds: float = PAUSE_SECONDS,
) -> str | None:
    """One probe: None when healthy, else the reason it is not."""
    try:
        if os.path.exists(passed):
            pause(pause_seconds, drain_flag)
            problem = check(address, timeout=CHECK_TIMEOUT_SECONDS)
        else:
            pause(0, drain_flag)
            problem = wait_until_up(address, startup_wait, drain_flag)
        pause(0, drain_flag)
    except Draining:
        return "draining for a deploy"
    if problem is None and not os.path.exists(passed):
        with open(passed, "w"):
            pass
    return problem


def main() -> int:
    problem = run()
    if problem is None:
        return 0
    print(f"healthcheck: {problem}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
