"""The benchmark report judges each target from the runs, and writes its files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import report


def run(target: str, endpoint: str, concurrency: int, rps: float, **extra: Any) -> dict[str, Any]:
    return {"target": target, "endpoint": endpoint, "workers": 2, "concurrency": concurrency,
            "rps": rps, "p50_ms": 10.0, "p90_ms": 20.0, "p99_ms": 25.0, "max_ms": 30.0,
            "errors": 0, "requests": 1000, "seconds": 6.0, "command": f"wrk {target}",
            **extra}  # fmt: skip


def results(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "meta": {"cpus": 2, "memory_gb": 4, "docker": "x", "commit": "abc", "seconds": 6},
        "workers": [2],
        "concurrency": [16, 64],
        "runs": runs,
        "memory": {
            "2": {
                "idle_rss_mb": [80.0, 95.0],
                "after_load_rss_mb": [90.0, 99.0],
                "connections_peak": {"open": 20, "active": 5},
            }
        },
        "image": {"rebuild_after_code_change_s": 3.0, "added_over_python_image_mb": 90.0},
        "stop": {"stop_seconds": 1.0, "failed": 0, "requests": 10, "statuses": {"200": 10}},
    }


def test_targets_are_judged_from_the_runs(tmp_path: Path) -> None:
    runs = [
        run("traefik", "read", 64, 700), run("direct", "read", 64, 1000),  # 0.70x: missed
        run("traefik", "live", 64, 3000), run("raw", "live", 64, 5000),  # 0.60x: met
        run("traefik", "read", 16, 500, p50_ms=10.0, p99_ms=31.0),  # 3.1x: missed
        run("direct", "read", 16, 600, errors=2),
    ]  # fmt: skip
    verdicts = {target: met for target, _, met in report.targets(results(runs))}
    assert verdicts["DB read, c64, 2 worker(s): Traefik+TLS >= 0.75x direct"] is False
    assert verdicts["/health/live, c64, 2 worker(s): whole stack >= 0.5x raw ASGI"] is True
    assert verdicts["DB read, c16, 2 worker(s): p99 <= 3x p50"] is False
    assert verdicts["Zero errors in every load run"] is False
    assert verdicts["Idle RSS per worker <= 90 MB"] is False
    assert verdicts["One-line code change rebuilds in <= 10 s"] is True

    summary = report.write(results(runs), tmp_path, "stamp")
    text = summary.read_text()
    assert "| DB read, c64, 2 worker(s): Traefik+TLS >= 0.75x direct | 0.70x" in text
    assert "wrk traefik" in text
    for plot in report.PLOTS:
        assert (tmp_path / f"stamp-{plot}.png").stat().st_size > 1000
    assert (tmp_path / "stamp.json").exists()
