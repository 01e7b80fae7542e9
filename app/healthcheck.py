"""The container healthcheck: `python -m app.healthcheck`.

Fails while the container is draining (scripts/deploy creates DRAIN_FLAG), so Traefik takes
it out of routing before it is stopped: Traefik keeps sending new requests to a container
until it dies, and only a failing healthcheck removes it earlier.

Deliberately imports nothing from the app, so a probe costs a bare interpreter start.
"""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path

URL = "http://127.0.0.1:8000/health/live"
TIMEOUT_SECONDS = 2
DRAIN_FLAG = Path("/tmp/berth-draining")  # noqa: S108 - the container's own private /tmp


def main() -> int:
    if DRAIN_FLAG.exists():
        print("healthcheck: draining for a deploy", file=sys.stderr)
        return 1
    try:
        with urllib.request.urlopen(URL, timeout=TIMEOUT_SECONDS) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"healthcheck: {URL}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
