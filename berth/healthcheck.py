"""The container healthcheck: `python -m berth.healthcheck`.

Fails while the container is draining (scripts/deploy creates DRAIN_FLAG), so Traefik takes
it out of routing before it is stopped: Traefik keeps sending new requests to a container
until it dies, and only a failing healthcheck removes it earlier.

Docker runs it every few seconds, so it is as cheap as a probe can be: it imports nothing
from the app, and speaks HTTP/1.0 over a bare socket (importing urllib alone took 24 ms of
CPU, and on a small, busy server those periodic bursts showed up in the latency tail).
"""

from __future__ import annotations

import os
import socket
import sys

ADDRESS = ("127.0.0.1", 8000)
REQUEST = b"GET /health/live HTTP/1.0\r\nHost: localhost\r\n\r\n"
TIMEOUT_SECONDS = 2
DRAIN_FLAG = "/tmp/berth-draining"  # noqa: S108 - the container's own private /tmp


def main() -> int:
    if os.path.exists(DRAIN_FLAG):
        print("healthcheck: draining for a deploy", file=sys.stderr)
        return 1
    try:
        with socket.create_connection(ADDRESS, timeout=TIMEOUT_SECONDS) as connection:
            connection.sendall(REQUEST)
            status_line = connection.recv(64).split(b"\r\n", 1)[0]
    except OSError as exc:
        print(f"healthcheck: {ADDRESS}: {exc}", file=sys.stderr)
        return 1
    if status_line.split(b" ")[1:2] == [b"200"]:
        return 0
    print(f"healthcheck: /health/live answered {status_line.decode(errors='replace')}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
