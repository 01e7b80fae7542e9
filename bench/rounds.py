"""The command line shared by the benchmarks that repeat a scenario `--rounds` times and
keep each run: its JSON in bench/results/, and a Markdown summary beside it."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def repeat_and_save(
    description: str,
    run: Callable[[int], dict[str, Any]],
    markdown: Callable[[dict[str, Any], str], str],
    *,
    name: str,
    summary_name: str | None = None,
) -> None:
    """Run `rounds` rounds; write results/<name>-<time>.json and the summary (at
    results/<summary_name>, or results/<name>-<time>.md), and print the summary."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds
    when = time.strftime("%Y-%m-%dT%H-%M-%S")
    results = run(rounds)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}-{when}.json").write_text(json.dumps(results, indent=2) + "\n")
    summary = markdown(results, when)
    (RESULTS / (summary_name or f"{name}-{when}.md")).write_text(summary)
    print(summary)
