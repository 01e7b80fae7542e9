"""Validate the configuration before anything else starts: `python -m berth.preflight`.

The `preflight` service runs this once per `docker compose up`; the database, the proxy and
through them everything else wait for it, so a bad `.env` stops the stack before Postgres
initialises a volume with the wrong password or Traefik asks for a certificate.
"""

from __future__ import annotations

import os
import sys

from berth.settings import ConfigError, load_settings

# sysexits.h EX_CONFIG: lets scripts tell a configuration error from a crash.
EX_CONFIG = 78


def main() -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"berth: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    mode = f"production (DOMAIN={settings.domain})" if settings.production else "local"
    print(f"berth: configuration ok, {mode} mode", file=sys.stderr)
    if settings.development_defaults:
        print(
            "berth: warning: using development-only defaults (no POSTGRES_PASSWORD set); "
            "fine on a laptop, refused in production",
            file=sys.stderr,
        )
    if settings.production and os.environ.get("POSTGRES_PASSWORD"):
        print(
            "berth: warning: POSTGRES_PASSWORD is in the environment, where `docker inspect` "
            "shows it; use `make secrets` and compose.secrets.yaml (README, Security)",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
