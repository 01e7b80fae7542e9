"""Ask Traefik which containers answer: `python -m berth.probe MODE SECONDS INSTANCE...`.

scripts/deploy runs this inside a new app container, which is on Traefik's network and has
Python, so the host needs nothing but Docker. Each request is GET /api/version through
Traefik, whose answer names the container that served it (berth/version.py); INSTANCE...
are the containers in question, named the same way. MODE is one of:
  routed     one answer from one of them
  exclusive  CONSECUTIVE answers in a row, all from them
  elsewhere  one answer from a container that is not one of them
  excluded   CONSECUTIVE answers in a row, none from them
Answers that are not a 200 count for nothing and break a streak. It exits 0 when the mode
holds, or 1 after SECONDS with one line saying what it saw.

Requests go over one kept-alive connection: Traefik balances each request, not each
connection, so this sees what clients see without a TLS handshake per request.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import sys
import time
from collections import Counter

# 20 answers in a row, 25 ms apart: over half a second, so a change Traefik was about to
# apply (it applies one at most every 0.2 s, traefik.yml) shows within the streak.
CONSECUTIVE = 20
PAUSE_SECONDS = 0.025
MODES = ("routed", "exclusive", "elsewhere", "excluded")


class Traefik:
    """The route clients take: Traefik's HTTPS port inside the proxy network, with the
    public Host. The certificate is not the point here."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.context = ssl._create_unverified_context()  # noqa: S323
        self.connection: http.client.HTTPSConnection | None = None

    def answer(self) -> tuple[str | None, str]:
        """(the instance that answered, or None if none did; a short description)."""
        if self.connection is None:
            self.connection = http.client.HTTPSConnection(
                "traefik", 443, timeout=5, context=self.context
            )
        try:
            self.connection.request("GET", "/api/version", headers={"Host": self.host})
            response = self.connection.getresponse()
            body = response.read()
            if response.status != 200:
                return None, f"HTTP {response.status}"
            answer = json.loads(body)
            # A release from before the instance field answers without one.
            instance = str(answer.get("instance", "unnamed"))
            return instance, f"{answer['version']}@{instance}"
        except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
            self.close()
            return None, type(exc).__name__
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def holds(mode: str, instances: set[str], answered: str | None) -> bool:
    """Whether this one answer counts towards `mode`."""
    if answered is None:
        return False
    inside = answered in instances
    return inside if mode in ("routed", "exclusive") else not inside


def main(mode: str, timeout: float, instances: set[str]) -> int:
    traefik = Traefik(os.environ.get("DOMAIN", "localhost"))
    needed = CONSECUTIVE if mode in ("exclusive", "excluded") else 1
    deadline = time.monotonic() + timeout
    seen: Counter[str] = Counter()
    streak = 0
    try:
        while time.monotonic() < deadline:
            answered, description = traefik.answer()
            seen[description] += 1
            streak = streak + 1 if holds(mode, instances, answered) else 0
            if streak >= needed:
                return 0
            time.sleep(PAUSE_SECONDS)
    finally:
        traefik.close()
    answers = ", ".join(f"{answer} x{count}" for answer, count in seen.most_common(4))
    wanted = " ".join(sorted(instances))
    print(f"probe: not {mode} ({wanted}) within {timeout:g}s; saw {answers}", file=sys.stderr)
    return 1


def parse(arguments: list[str]) -> tuple[str, float, set[str]]:
    if len(arguments) < 3 or arguments[0] not in MODES:
        raise ValueError
    timeout = float(arguments[1])
    if not timeout > 0:
        raise ValueError
    return arguments[0], timeout, set(arguments[2:])


if __name__ == "__main__":
    try:
        mode, timeout, instances = parse(sys.argv[1:])
    except ValueError:
        sys.exit(f"usage: python -m berth.probe {'|'.join(MODES)} SECONDS INSTANCE...")
    sys.exit(main(mode, timeout, instances))
