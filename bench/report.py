"""Turns a benchmark run into bench/results/<stamp>.json, <stamp>.md and PNG plots."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.overload import OVERLOAD_FACTOR, saturation

ENDPOINTS = {
    "live": "GET /health/live",
    "read": "GET /api/items?limit=20",
    "write": "POST /api/items",
}
TUNING_LOG = Path(__file__).parent / "tuning.md"
RESULTS = Path(__file__).parent / "results"
PLOTS = ("throughput", "latency", "scaling", "overload")


def find(runs: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    return next((r for r in runs if all(r[k] == v for k, v in match.items())), None)


def throughput_row(
    target: str, measured: dict[str, Any], baseline: dict[str, Any], floor: float
) -> tuple[str, str, bool]:
    """A target of the form "measured runs at least `floor` times the baseline's req/s"."""
    if not baseline["rps"]:
        return target, f"the baseline answered nothing ({baseline['errors']} errors)", False
    ratio = measured["rps"] / baseline["rps"]
    return (
        target,
        f"{ratio:.2f}x ({measured['rps']:.0f} vs {baseline['rps']:.0f} req/s)",
        ratio >= floor,
    )


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for each target of the benchmark issue."""
    runs = results["runs"]
    rows = []
    for workers in results["workers"]:
        proxied = find(runs, target="traefik", endpoint="read", workers=workers, concurrency=64)
        direct = find(runs, target="direct", endpoint="read", workers=workers, concurrency=64)
        if proxied and direct:
            rows.append(
                throughput_row(
                    f"DB read, c64, {workers} worker(s): Traefik+TLS >= 0.75x direct",
                    proxied, direct, floor=0.75,
                )
            )  # fmt: skip
        live = find(runs, target="traefik", endpoint="live", workers=workers, concurrency=64)
        raw = find(runs, target="raw", endpoint="live", workers=workers, concurrency=64)
        raw_proxied = find(runs, target="raw-traefik", endpoint="live", workers=workers,
                           concurrency=64)  # fmt: skip
        if raw and raw_proxied:
            rows.append((f"(context) Traefik+TLS in front of the raw app, {workers} worker(s): "
                         "the proxy's own ceiling", f"{raw_proxied['rps'] / raw['rps']:.2f}x "
                         f"({raw_proxied['rps']:.0f} req/s)", raw_proxied["rps"] > 0))  # fmt: skip
        if live and raw:
            rows.append(
                throughput_row(
                    f"/health/live, c64, {workers} worker(s): whole stack >= 0.5x raw ASGI",
                    live, raw, floor=0.5,
                )
            )  # fmt: skip
        rows += overhead_target(runs, workers)
        read16 = find(runs, target="traefik", endpoint="read", workers=workers, concurrency=16)
        if read16:
            ratio = read16["p99_ms"] / read16["p50_ms"]
            rows.append(
                (
                    f"DB read, c16, {workers} worker(s): p99 <= 3x p50",
                    f"{ratio:.2f}x ({read16['p99_ms']:.1f} / {read16['p50_ms']:.1f} ms)",
                    ratio <= 3,
                )
            )
    rows += overload_targets(results.get("overload", {}))
    rows += deploy_targets(results)
    errors = sum(r["errors"] for r in runs)
    rows.append(
        ("Zero errors in every load run", f"{errors} errors in {len(runs)} runs", errors == 0)
    )
    image = results.get("image", {})
    if image:
        rows.append(
            (
                "One-line code change rebuilds in <= 10 s",
                f"{image['rebuild_after_code_change_s']:.1f} s",
                image["rebuild_after_code_change_s"] <= 10,
            )
        )
        rows.append(
            (
                "App image adds <= 150 MB over $PYTHON_IMAGE",
                f"{image['added_over_python_image_mb']:.0f} MB",
                image["added_over_python_image_mb"] <= 150,
            )
        )
    idle = [
        mb
        for per_setting in results.get("memory", {}).values()
        for mb in per_setting["idle_rss_mb"]
    ]
    if idle:
        rows.append(("Idle RSS per worker <= 90 MB", f"{max(idle):.1f} MB (max)", max(idle) <= 90))
    return rows


def overhead_rounds(runs: list[dict[str, Any]], workers: int) -> list[tuple[float, float]]:
    """(Berth, bare FastAPI) req/s of each interleaved round (bench/__main__.py overhead)."""
    berth = [r["rps"] for r in runs if r["target"] == "overhead-berth" and r["workers"] == workers]
    bare = [r["rps"] for r in runs if r["target"] == "overhead-fastapi" and r["workers"] == workers]
    return list(zip(berth, bare, strict=False))


def overhead_target(runs: list[dict[str, Any]], workers: int) -> list[tuple[str, str, bool]]:
    """Issue 15, target 1: the median of the rounds' ratios."""
    rounds = overhead_rounds(runs, workers)
    if not rounds:
        return []
    name = f"/health/live direct, c64, {workers} worker(s): Berth >= 0.8x bare FastAPI"
    if not all(bare for _, bare in rounds):
        return [(name, "the bare FastAPI app answered nothing in a round", False)]
    ratios = [berth / bare for berth, bare in rounds]
    median = statistics.median(ratios)
    each = ", ".join(f"{berth:.0f} vs {bare:.0f}" for berth, bare in rounds)
    return [(name, f"{median:.2f}x, median of {len(rounds)} interleaved rounds ({each} req/s)",
             median >= 0.8)]  # fmt: skip


def overload_targets(curves: dict[str, list[dict[str, Any]]]) -> list[tuple[str, str, bool]]:
    """Issue 15, target 2, for each curve: at OVERLOAD_FACTOR x the saturating concurrency,
    admitted requests keep their tail, the excess is refused fast with 503 and Retry-After,
    throughput holds, and no connection fails."""
    rows = []
    for endpoint, levels in curves.items():
        name = ENDPOINTS[endpoint]
        if not levels or max(item["admitted_rps"] for item in levels) == 0:
            rows.append((f"Overload, {name}", "no request was admitted at any level", False))
            continue
        saturated = saturation(levels)
        overloaded = OVERLOAD_FACTOR * saturated["concurrency"]
        over = next((item for item in levels if item["concurrency"] == overloaded), None)
        if over is None:
            rows.append((f"Overload, {name}", "no level at 4x saturation was measured", False))
            continue
        at = f"{over['concurrency']} clients vs saturation at {saturated['concurrency']}"
        tail = over["admitted_p99_ms"] / max(saturated["admitted_p99_ms"], 0.001)
        rows.append((
            f"Overload, {name}: admitted p99 <= 2x its p99 at saturation",
            f"{tail:.2f}x "
            f"({over['admitted_p99_ms']:.1f} vs {saturated['admitted_p99_ms']:.1f} ms; {at})",
            over["admitted"] > 0 and tail <= 2,
        ))  # fmt: skip
        wrong = over["refused_without_retry_after"] + over["other_status"]
        rows.append((
            f"Overload, {name}: excess refused within 50 ms (p99) with 503 + Retry-After",
            f"{over['refused']} refused, p99 {over['refused_p99_ms']:.1f} ms, max "
            f"{over['refused_max_ms']:.1f} ms; {wrong} other answers or 503s without Retry-After",
            over["refused_p99_ms"] <= 50 and wrong == 0,
        ))  # fmt: skip
        peak = max(item["admitted_rps"] for item in levels)
        rows.append((
            f"Overload, {name}: admitted throughput >= 0.9x peak",
            f"{over['admitted_rps'] / peak:.2f}x ({over['admitted_rps']:.0f} vs "
            f"{peak:.0f} req/s)",
            over["admitted_rps"] >= 0.9 * peak,
        ))  # fmt: skip
        failed = sum(item["connection_errors"] for item in levels)
        rows.append((f"Overload, {name}: no connection errors at any level",
                     f"{failed} in {len(levels)} levels", failed == 0))  # fmt: skip
    return rows


def deploy_targets(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """Issue 15's deploy targets, from bench.deploy's latest results and the start-up
    figures of this run."""
    rows = []
    deploys = sorted(RESULTS.glob("deploy-*.json"))
    if deploys:
        rounds = json.loads(deploys[-1].read_text()).get("scripts/deploy", [])
        if rounds:
            seconds = statistics.median(item["seconds"] for item in rounds)
            failed = sum(item["failed"] for item in rounds)
            requests = sum(item["requests"] for item in rounds)
            rows.append((
                "scripts/deploy under load: median <= 10 s with 0 failed requests",
                f"median {seconds:.1f} s, {failed} failed of {requests} "
                f"({len(rounds)} rounds, {deploys[-1].name})",
                seconds <= 10 and failed == 0 and requests > 0,
            ))  # fmt: skip
    cold = results.get("startup", {}).get("up_to_first_https_200_empty_volume_s")
    if cold is not None:
        rows.append(("Cold start, empty volume to the first HTTPS 200 <= 6 s",
                     f"{cold:.1f} s", cold <= 6))  # fmt: skip
    return rows


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(str(cell) for cell in row) + " |" for row in rows
    ]


def markdown(results: dict[str, Any], stamp: str) -> str:
    runs, meta = results["runs"], results["meta"]
    lines = [
        f"# Berth benchmark, {stamp}",
        "",
        f"{meta['cpus']} CPUs, {meta['memory_gb']} GB, Docker {meta['docker']}, "
        f"commit {meta['commit']}. Each load run: {meta['seconds']} s of wrk after a warm-up; "
        "load generator and stack share the machine, so read the ratios more than the "
        "absolute numbers. `uv run python -m bench` reproduces it.",
        "",
        "## Targets",
        "",
        *table(
            ["target", "measured", "met"],
            [[t, m, "yes" if ok else "**no**"] for t, m, ok in targets(results)],
        ),
        "",
        "## Throughput and latency",
        "",
        "Through Traefik over HTTPS with keep-alive, and straight to the app's port "
        "(published on 127.0.0.1 like Traefik's, so both cross Docker's port proxy; no "
        "Traefik, no TLS). Ratio = through Traefik / direct. These runs lift the admission "
        "limit (MAX_IN_FLIGHT_PER_WORKER=10000) so that every request is served and timed; "
        "the Overload section measures the default limit.",
        "",
    ]
    rows = []
    for workers in results["workers"]:
        for endpoint in ENDPOINTS:
            for concurrency in results["concurrency"]:
                proxied = find(
                    runs,
                    target="traefik",
                    endpoint=endpoint,
                    workers=workers,
                    concurrency=concurrency,
                )
                direct = find(
                    runs,
                    target="direct",
                    endpoint=endpoint,
                    workers=workers,
                    concurrency=concurrency,
                )
                if not (proxied and direct):
                    continue
                rows.append(
                    [
                        workers,
                        ENDPOINTS[endpoint],
                        concurrency,
                        f"{proxied['rps']:.0f}",
                        f"{proxied['p50_ms']:.1f}",
                        f"{proxied['p99_ms']:.1f}",
                        f"{direct['rps']:.0f}",
                        f"{direct['p50_ms']:.1f}",
                        f"{direct['p99_ms']:.1f}",
                        f"{proxied['rps'] / direct['rps']:.2f}",
                        proxied["errors"] + direct["errors"],
                    ]
                )
    lines += table(
        [
            "workers",
            "request",
            "clients",
            "Traefik req/s",
            "p50 ms",
            "p99 ms",
            "direct req/s",
            "p50 ms",
            "p99 ms",
            "ratio",
            "errors",
        ],
        rows,
    )
    lines += [
        "",
        "Baselines under the same uvicorn, workers and container limits: the raw ASGI app "
        "(bench/rawapp.py) straight (`raw`) and through the same Traefik with TLS "
        "(`raw-traefik`), and a bare FastAPI app with one `async def` route "
        "(bench/fastapiapp.py) straight (`fastapi`):",
        "",
    ]
    lines += table(
        ["path", "workers", "clients", "req/s", "p50 ms", "p99 ms", "errors"],
        [
            [
                r["target"],
                r["workers"],
                r["concurrency"],
                f"{r['rps']:.0f}",
                f"{r['p50_ms']:.1f}",
                f"{r['p99_ms']:.1f}",
                r["errors"],
            ]
            for r in runs
            if r["target"].startswith("raw") or r["target"] == "fastapi"
        ],
    )
    lines += ["", *overhead_section(results)]
    lines += ["", *overload_section(results.get("overload", {}))]
    lines += ["", *(f"![{plot}]({stamp}-{plot}.png)" for plot in PLOTS), ""]
    for title, key in (("Start-up", "startup"), ("Image", "image")):
        if results.get(key):
            lines += [f"## {title}", ""]
            lines += table(["measure", "value"], [[k, v] for k, v in results[key].items()])
            lines += [""]
    lines += ["", "## Memory and connections", ""]
    lines += table(
        [
            "workers",
            "idle RSS per worker, MB",
            "RSS after load, MB",
            "Postgres connections open (peak)",
            "active (peak)",
        ],
        [
            [
                w,
                ", ".join(str(mb) for mb in m["idle_rss_mb"]),
                ", ".join(str(mb) for mb in m["after_load_rss_mb"]),
                m["connections_peak"]["open"],
                m["connections_peak"]["active"],
            ]
            for w, m in results["memory"].items()
        ],
    )
    stop = results.get("stop") or {
        "stop_seconds": "-",
        "failed": "-",
        "requests": "-",
        "statuses": {},
    }
    statuses = ", ".join(f"{k}: {v}" for k, v in stop["statuses"].items())
    lines += [
        "",
        "## Stop under load",
        "",
        f"`docker compose stop app` with 4 clients through Traefik: {stop['stop_seconds']} s,"
        f" {stop['failed']} of {stop['requests']} requests failed ({statuses}). Traefik keeps"
        " routing to a stopping container, which is why `scripts/deploy` drains first.",
        "",
        "## Commands",
        "",
        "```",
        *sorted({r["command"] for r in runs}),
        "```",
        "",
    ]
    if TUNING_LOG.exists():
        lines += ["## Tuning log", "", TUNING_LOG.read_text().strip(), ""]
    return "\n".join(lines)


def overhead_section(results: dict[str, Any]) -> list[str]:
    rows = [
        [workers, number + 1, f"{berth:.0f}", f"{bare:.0f}", f"{berth / bare:.2f}x"]
        for workers in results["workers"]
        for number, (berth, bare) in enumerate(overhead_rounds(results["runs"], workers))
        if bare
    ]
    if not rows:
        return []
    return [
        "## Berth's runtime against bare FastAPI",
        "",
        "`GET /health/live` straight to each app's port at 64 clients, the same workers and "
        "container limits, Berth then the bare app in each round (admission lifted): the "
        "target is judged on the median of the rounds' ratios.",
        "",
        *table(["workers", "round", "Berth req/s", "bare FastAPI req/s", "ratio"], rows),
        "",
    ]


def overload_section(curves: dict[str, list[dict[str, Any]]]) -> list[str]:
    if not curves:
        return []
    lines = [
        "## Overload",
        "",
        "Through Traefik over HTTPS, 2 workers, closed-loop clients that send again as soon as "
        "they have an answer (a refused client ignores Retry-After: the worst case). Admitted "
        "= 2xx, refused = 503; each answer is timed by its X-Request-ID "
        "(bench/wrk/overload.lua).",
        "",
    ]
    rows = [
        [ENDPOINTS[endpoint], item["concurrency"], f"{item['admitted_rps']:.0f}",
         f"{item['admitted_p50_ms']:.1f}", f"{item['admitted_p99_ms']:.1f}", item["refused"],
         f"{item['refused_p99_ms']:.1f}", item["other_status"], item["connection_errors"]]
        for endpoint, levels in curves.items()
        for item in levels
    ]  # fmt: skip
    header = ["request", "clients", "admitted req/s", "p50 ms", "p99 ms", "refused",
              "refused p99 ms", "other", "connection errors"]  # fmt: skip
    return [*lines, *table(header, rows), "", *overload_cpu_section(curves)]


def overload_cpu_section(curves: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Where the time and the cores went at each level (bench/cpu.py, and the app's own
    access lines): what shows whether a miss is the stack's or the machine's."""
    measured = [
        (endpoint, item)
        for endpoint, levels in curves.items()
        for item in levels
        if item.get("cpu") and item.get("in_app")
    ]
    if not measured:
        return []
    rows = []
    for endpoint, item in measured:
        cpu, in_app, services = item["cpu"], item["in_app"], item["cpu"]["services"]
        clients_side = cpu["load_generator"] + cpu.get("docker_proxy", 0.0)
        rows.append([
            ENDPOINTS[endpoint], item["concurrency"],
            f"{in_app['admitted']['p99_ms']:.1f}", f"{in_app['refused']['p50_ms']:.1f}",
            f"{in_app['refused']['p99_ms']:.1f}", f"{cpu['machine_busy']:.2f}",
            f"{services.get('app', 0):.2f}", f"{services.get('db', 0):.2f}",
            f"{services.get('traefik', 0):.2f}", f"{clients_side:.2f}",
        ])  # fmt: skip
    header = ["request", "clients", "in the app: admitted p99 ms", "refused p50 ms",
              "refused p99 ms", "cores busy (of the machine's)", "app", "db", "traefik",
              "clients' side (wrk + Docker's port proxy)"]  # fmt: skip
    return [
        "Where the time and the cores went, level by level: the app's own duration of each "
        "request (its access line, matched by request id), and the cores in use on average "
        "(each service's cgroup; the load generator and Docker's userland port proxy, which "
        "carries every connection to 127.0.0.1 and would not exist with remote clients; the "
        "whole machine from /proc/stat).",
        "",
        *table(header, rows),
        "",
    ]


def overload_plot(curves: dict[str, list[dict[str, Any]]], path: Path) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    throughput, latency = axes
    for endpoint, levels in curves.items():
        clients = [item["concurrency"] for item in levels]
        throughput.plot(clients, [item["admitted_rps"] for item in levels], marker="o",
                        label=f"{ENDPOINTS[endpoint]}, admitted")  # fmt: skip
        refused = [item["refused"] / item["seconds"] for item in levels]
        throughput.plot(clients, refused, marker="x", linestyle=":",
                        label=f"{ENDPOINTS[endpoint]}, refused")  # fmt: skip
        latency.plot(clients, [item["admitted_p99_ms"] for item in levels], marker="o",
                     label=f"{ENDPOINTS[endpoint]}, admitted p99")  # fmt: skip
        latency.plot(clients, [item["refused_p99_ms"] for item in levels], marker="x",
                     linestyle=":", label=f"{ENDPOINTS[endpoint]}, refused p99")  # fmt: skip
    throughput.set(title="Offered concurrency vs throughput (through Traefik)",
                   xlabel="concurrent clients", ylabel="req/s", xscale="log")  # fmt: skip
    latency.set(title="Offered concurrency vs p99", xlabel="concurrent clients",
                ylabel="p99, ms", xscale="log", yscale="log")  # fmt: skip
    for axis in axes:
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
        else:
            axis.text(0.5, 0.5, "not measured in this run", ha="center", transform=axis.transAxes)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def plots(results: dict[str, Any], directory: Path, stamp: str) -> None:
    runs, levels = results["runs"], results["concurrency"]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for axis, endpoint in zip(axes, ENDPOINTS, strict=True):
        for target in ("traefik", "direct", "raw", "raw-traefik"):
            for workers in results["workers"]:
                points = [
                    find(runs, target=target, endpoint=endpoint, workers=workers, concurrency=c)
                    for c in levels
                ]
                if all(points):
                    axis.plot(
                        levels,
                        [p["rps"] for p in points if p],
                        marker="o",
                        label=f"{target}, {workers} worker(s)",
                    )
        axis.set(
            title=ENDPOINTS[endpoint], xlabel="concurrent clients", ylabel="req/s", xscale="log"
        )
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(directory / f"{stamp}-throughput.png", dpi=100)

    figure, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    workers = max(results["workers"])
    for axis, endpoint in zip(axes, ENDPOINTS, strict=True):
        for target in ("traefik", "direct"):
            points = [
                find(runs, target=target, endpoint=endpoint, workers=workers, concurrency=c)
                for c in levels
            ]
            if all(points):
                axis.plot(
                    levels, [p["p50_ms"] for p in points if p], marker="o", label=f"{target} p50"
                )
                axis.plot(
                    levels,
                    [p["p99_ms"] for p in points if p],
                    marker="x",
                    linestyle="--",
                    label=f"{target} p99",
                )
        axis.set(
            title=f"{ENDPOINTS[endpoint]}, {workers} workers",
            xlabel="concurrent clients",
            ylabel="latency, ms",
            xscale="log",
            yscale="log",
        )
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(directory / f"{stamp}-latency.png", dpi=100)

    figure, axis = plt.subplots(figsize=(6, 4.5))
    top = max(levels)
    for endpoint in ENDPOINTS:
        for target in ("traefik", "direct"):
            points = [
                find(runs, target=target, endpoint=endpoint, workers=w, concurrency=top)
                for w in results["workers"]
            ]
            if all(points):
                axis.plot(
                    results["workers"],
                    [p["rps"] for p in points if p],
                    marker="o",
                    label=f"{ENDPOINTS[endpoint]}, {target}",
                )
    axis.set(
        title=f"Scaling with WEB_CONCURRENCY ({top} clients)",
        xlabel="uvicorn workers",
        ylabel="req/s",
        xticks=results["workers"],
    )
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(directory / f"{stamp}-scaling.png", dpi=100)
    overload_plot(results.get("overload", {}), directory / f"{stamp}-overload.png")
    plt.close("all")


def write(results: dict[str, Any], directory: Path, stamp: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")
    plots(results, directory, stamp)
    summary = directory / f"{stamp}.md"
    summary.write_text(markdown(results, stamp))
    return summary
