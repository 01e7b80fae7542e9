"""The benchmark report judges each target from the runs, and writes its files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

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


def level(concurrency: int, rps: float, p99: float, **extra: Any) -> dict[str, Any]:
    return {"endpoint": "read", "concurrency": concurrency, "seconds": 6.0,
            "admitted": int(rps * 6), "admitted_rps": rps, "admitted_p50_ms": p99 / 2,
            "admitted_p99_ms": p99, "refused": 0, "refused_p99_ms": 0.0, "refused_max_ms": 0.0,
            "refused_without_retry_after": 0, "other_status": 0, "connection_errors": 0,
            "command": "wrk", **extra}  # fmt: skip


def test_overload_and_fastapi_targets_are_judged(tmp_path: Path) -> None:
    runs = [  # three interleaved rounds: 0.90x, 0.75x, 0.85x; the median 0.85x is met
        run("overhead-berth", "live", 64, 4500), run("overhead-fastapi", "live", 64, 5000),
        run("overhead-berth", "live", 64, 3000), run("overhead-fastapi", "live", 64, 4000),
        run("overhead-berth", "live", 64, 4250), run("overhead-fastapi", "live", 64, 5000),
    ]  # fmt: skip
    curves = {
        "read": [
            level(8, 500, 40), level(16, 700, 60),  # saturation: 16 (>= 0.9 x 760)
            level(32, 760, 80),
            level(64, 680, 110, refused=900, refused_p99_ms=12.0,  # 0.89x peak: missed
                  cpu={"services": {"app": 1.1, "db": 0.3, "traefik": 0.4},
                       "load_generator": 0.1, "docker_proxy": 0.3, "machine_busy": 2.0,
                       "machine_idle": 0.0},
                  in_app={"admitted": {"count": 9, "p50_ms": 20.0, "p99_ms": 70.0},
                          "refused": {"count": 9, "p50_ms": 31.0, "p99_ms": 45.0}}),
        ],
        "write": [
            level(16, 600, 50), level(64, 600, 90, refused=10, refused_p99_ms=70.0,
                                      connection_errors=1),
        ],
    }  # fmt: skip
    judged = report.targets({**results(runs), "overload": curves})
    verdicts = {target: met for target, _, met in judged}
    measured = {target: figures for target, figures, _ in judged}
    overhead = "/health/live direct, c64, 2 worker(s): Berth >= 0.8x bare FastAPI"
    assert verdicts[overhead] is True
    assert measured[overhead].startswith("0.85x, median of 3 interleaved rounds")
    name = "GET /api/items?limit=20"
    assert verdicts[f"Overload, {name}: admitted p99 <= 2x its p99 at saturation"] is True
    assert verdicts[f"Overload, {name}: admitted throughput >= 0.9x peak"] is False
    refused = "excess refused within 50 ms (p99) with 503 + Retry-After"
    assert verdicts[f"Overload, {name}: {refused}"] is True
    assert verdicts[f"Overload, {name}: no connection errors at any level"] is True
    assert verdicts[f"Overload, POST /api/items: {refused}"] is False
    assert verdicts["Overload, POST /api/items: no connection errors at any level"] is False

    summary = report.write({**results(runs), "overload": curves}, tmp_path, "stamp").read_text()
    assert "## Overload" in summary
    assert "| 2 | 2 | 3000 | 4000 | 0.75x |" in summary  # the second round, as measured
    where = "| GET /api/items?limit=20 | 64 | 70.0 | 31.0 | 45.0 | 2.00 | 1.10 | 0.30 | 0.40 | 0.40"
    assert where in summary


def test_deploy_and_cold_start_targets_are_judged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    rounds = [{"seconds": seconds, "failed": 0, "requests": 900} for seconds in (9.0, 12.0, 8.0)]
    (tmp_path / "deploy-2026-01-01T00-00-00.json").write_text('{"scripts/deploy": []}')
    (tmp_path / "deploy-2026-01-02T00-00-00.json").write_text(
        json.dumps({"scripts/deploy": rounds})
    )
    verdicts = {
        target: (measured, met)
        for target, measured, met in report.targets(
            {**results([]), "startup": {"up_to_first_https_200_empty_volume_s": 6.4}}
        )
    }
    measured, met = verdicts["scripts/deploy under load: median <= 10 s with 0 failed requests"]
    assert met is True
    assert measured.startswith("median 9.0 s, 0 failed of 2700")
    assert verdicts["Cold start, empty volume to the first HTTPS 200 <= 6 s"] == ("6.4 s", False)
