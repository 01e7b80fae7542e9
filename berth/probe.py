"""Ask Traefik which release answers: `python -m berth.probe routed|exclusive VERSION`.

scripts/deploy runs this inside an app container (it is on Traefik's network and has
Python), so the host needs nothing but Docker.
  routed VERSION     exit 0 once a request through Traefik is answered by VERSION
  exclusive VERSION  exit 0 once CONSECUTIVE requests in a row are all answered by VERSION
Either exits 1 after TIMEOUT_SECONDS.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import sys
import time

TIMEOUT_SECONDS = 60
CONSECUTIVE = 20


def answering_version(host: str) -> str | None:
    # Straight to Traefik's HTTPS port inside the proxy network, with the public Host:
    # this is the route clients take. The certificate is not the point here.
    context = ssl._create_unverified_context()  # noqa: S323
    connection = http.client.HTTPSConnection("traefik", 443, timeout=5, context=context)
    try:
        connection.request("GET", "/api/version", headers={"Host": host})
        response = connection.getresponse()
        if response.status != 200:
            return None
        return str(json.loads(response.read())["version"])
    except (OSError, ValueError, KeyError):
        return None
    finally:
        connection.close()


def main(mode: str, version: str) -> int:
    host = os.environ.get("DOMAIN", "localhost")
    deadline = time.monotonic() + TIMEOUT_SECONDS
    streak = 0
    needed = 1 if mode == "routed" else CONSECUTIVE
    while time.monotonic() < deadline:
        streak = streak + 1 if answering_version(host) == version else 0
        if streak >= needed:
            return 0
        time.sleep(0.1)
    print(f"probe: Traefik did not route {mode} to {version} within {TIMEOUT_SECONDS}s")
    return 1


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("routed", "exclusive"):
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
