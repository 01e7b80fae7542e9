"""Demo data: the demo's seed service runs this module (`make demo`, `make demo-reset`).

This service has no tables yet, so there is nothing to seed. When you add a resource, make
its demo rows here: the same rows every time, inserted so that running it again adds
nothing, with `--reset` emptying the tables first. Berth's example service seeds 3,000
items that way (`copier copy` it with keep_example=true to read it).
"""

from __future__ import annotations

import argparse
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description="Seed the demo data (idempotent).")
    parser.add_argument("--reset", action="store_true", help="empty the tables first")
    parser.parse_args()
    print("berth: nothing to seed: this service has no demo data yet", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
