"""The container healthcheck: `python -m app.healthcheck`.

Deliberately imports nothing from the app, so a probe costs a bare interpreter start.
"""

from __future__ import annotations

import sys
import urllib.request

URL = "http://127.0.0.1:8000/health/live"
TIMEOUT_SECONDS = 2


def main() -> int:
    try:
        with urllib.request.urlopen(URL, timeout=TIMEOUT_SECONDS) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"healthcheck: {URL}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
