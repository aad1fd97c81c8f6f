"""The bench's outputs: results.json, results.md (tables, ratios to the floor, targets) and
latency.png (p50 and p99 against concurrency, one line per server, one panel per body)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

Obj = dict[str, Any]

FLOOR = "floor"
WEBHOOK = "webhook"
# The targets of the benchmark issue, checked on the webhook (informational: never an exit code).
THROUGHPUT_TARGETS = {"target-4k": 0.70, "target-16k": 0.60, "target-4k distinct": 0.70,
                      "target-16k distinct": 0.60}
TARGET_CONCURRENCY = 16
P99_MAX_RATIO = 2.0
KOPF_MIN_RATIO = 3.0
RSS_MAX_MB = 80.0
COLD_START_MAX_S = 2.0


def _index(runs: list[Obj]) -> dict[tuple[str, str, int], Obj]:
    return {(r["server"], r["body"], r["concurrency"]): r for r in runs}


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or not base:
        return None
    return value / base


def _fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def evaluate_targets(results: Obj) -> list[Obj]:
    """Each target: what it asks, what was measured, met or not (None: not measured)."""
    runs = _index(results["runs"])
    out: list[Obj] = []

    def add(name: str, measured: str, met: bool | None) -> None:
        out.append({"target": name, "measured": measured, "met": met})

    def rps(server: str, body: str, conc: int = TARGET_CONCURRENCY) -> float | None:
        run = runs.get((server, body, conc))
        return run["rps"] if run and not run.get("failed") else None

    for body, minimum in THROUGHPUT_TARGETS.items():
        ratio = _ratio(rps(WEBHOOK, body), rps(FLOOR, body))
        add(f"{body} at c={TARGET_CONCURRENCY}: >= {minimum:.0%} of floor throughput",
            _fmt(ratio, ".2f", "x floor"), None if ratio is None else ratio >= minimum)
    worst: tuple[float, str] | None = None
    for (server, body, conc), run in runs.items():
        floor = runs.get((FLOOR, body, conc))
        if server != WEBHOOK or not floor or run.get("failed") or floor.get("failed"):
            continue
        ratio = run["p99_ms"] / floor["p99_ms"]
        if worst is None or ratio > worst[0]:
            worst = (ratio, f"{body} c={conc}")
    add(f"p99 <= {P99_MAX_RATIO:g}x floor p99 at every level",
        "-" if worst is None else f"worst {worst[0]:.2f}x ({worst[1]})",
        None if worst is None else worst[0] <= P99_MAX_RATIO)
    for body in ("target-4k", "target-4k distinct"):
        kopf = _ratio(rps(WEBHOOK, body), rps("kopf", body))
        add(f"{body} c={TARGET_CONCURRENCY}: >= {KOPF_MIN_RATIO:g}x kopf throughput",
            _fmt(kopf, ".2f", "x kopf"), None if kopf is None else kopf >= KOPF_MIN_RATIO)
        flask = _ratio(rps(WEBHOOK, body), rps("flask", body))
        add(f"{body} c={TARGET_CONCURRENCY}: ahead of Flask/gunicorn",
            _fmt(flask, ".2f", "x flask"), None if flask is None else flask > 1)
    long_run = results.get("long_run", {}).get(WEBHOOK)
    worker = long_run["rss_worker_mb"] if long_run and not long_run.get("failed") else None
    reviews = results["meta"]["long_run_reviews"]
    add(f"RSS per worker <= {RSS_MAX_MB:g} MB after {reviews:,} reviews",
        _fmt(worker, ".1f", " MB"), None if worker is None else worker <= RSS_MAX_MB)
    cold = results.get("cold_start", {}).get(WEBHOOK, {}).get("median_s")
    add(f"cold start < {COLD_START_MAX_S:g} s", _fmt(cold, ".2f", " s"),
        None if cold is None else cold < COLD_START_MAX_S)
    return out


def markdown(results: Obj) -> str:
    meta = results["meta"]
    runs = _index(results["runs"])
    lines = [
        "# Admission path benchmark",
        "",
        f"{meta['date']}, {meta['mode']} mode, `{meta['command'].strip()}`, "
        f"{meta.get('elapsed_s', 0) / 60:.1f} minutes.",
        f"Machine: {meta['cpu']}, {meta['cpus']} CPUs; Python {meta['python']}; "
        f"{meta['versions']}.",
        f"Each server: one worker over TLS on CPU 0; wrk ({meta['wrk']}) on CPU 1, one thread, "
        f"HTTP/1.1 keep-alive, `POST /mutate?timeout=10s`. Each cell: {meta['repeats']} "
        f"run(s) of {meta['duration_s']} s, interleaved across the servers, and the table "
        f"shows their medians (max: the worst){'; a warm-up per body' if meta['warmup_s'] else ''}"
        ". All servers stay up for the whole run (idle ones cost nothing). Before each run one "
        "CA-verified "
        "request (Python ssl, test CA, hostname checked) checks the certificate and the answer; "
        "**wrk itself does not verify the certificate chain**.",
        "",
        "Loads: " + ", ".join(f"`{name}` {size:,} B" for name, size in results["bodies"].items())
        + "; *distinct*: every request's pod differs (an annotation counts up), so no decision "
        "can be remembered from one review to the next. Errors = non-2xx + socket errors + "
        "timeouts. RSS is the whole process tree after the "
        "run (MiB); CPU is utime+stime of the tree over the run, per request.",
        "",
        "| server | body | conc | req/s | x floor | p50 ms | p90 ms | p99 ms | p99 x floor "
        "| max ms | errors | RSS MB | CPU µs/req |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for run in results["runs"]:
        if run.get("failed"):
            lines.append(f"| {run['server']} | {run['body']} | {run['concurrency']} "
                         f"| failed: {run['failed']} |||||||||||")
            continue
        floor = runs.get((FLOOR, run["body"], run["concurrency"]))
        floor_ok = floor is not None and not floor.get("failed")
        rps_ratio = _ratio(run["rps"], floor["rps"]) if floor_ok and floor else None
        p99_ratio = _ratio(run["p99_ms"], floor["p99_ms"]) if floor_ok and floor else None
        lines.append(
            f"| {run['server']} | {run['body']} | {run['concurrency']} | {run['rps']:,.0f} "
            f"| {_fmt(rps_ratio)} | {run['p50_ms']:.2f} | {run['p90_ms']:.2f} "
            f"| {run['p99_ms']:.2f} | {_fmt(p99_ratio)} | {run['max_ms']:.1f} "
            f"| {run['errors']} | {run['rss_mb']:.1f} | {run['cpu_us_per_request']:.0f} |")
    lines += ["", "## Cold start and memory", "",
              "| server | cold start (median) | runs | RSS per worker after "
              f"{meta['long_run_reviews']:,} reviews |",
              "|---|--:|---|--:|"]
    for server, cold in results.get("cold_start", {}).items():
        long_run = results.get("long_run", {}).get(server)
        rss = (f"{long_run['rss_worker_mb']:.1f} MB (from {long_run['rss_start_mb']:.1f})"
               if long_run and not long_run.get("failed") else "-")
        runs_s = ", ".join(f"{s:.2f}" for s in cold.get("runs_s", []))
        lines.append(f"| {server} | {_fmt(cold.get('median_s'), '.2f', ' s')} | {runs_s} | {rss} |")
    lines += ["", "## Targets (webhook)", "", "| target | measured | met |", "|---|---|---|"]
    for target in results["targets"]:
        met = {True: "yes", False: "**no**", None: "not measured"}[target["met"]]
        lines.append(f"| {target['target']} | {target['measured']} | {met} |")
    lines += ["", "## Notes", ""] + [f"- {note}" for note in meta["notes"]]
    if results.get("profile"):
        lines += ["", "## Profile", "", "```", results["profile"].rstrip(), "```"]
    lines += ["", "![latency](latency.png)", ""]
    return "\n".join(lines)


def plot(results: Obj, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bodies = results.get("plotted") or list(results["bodies"])
    servers = list(dict.fromkeys(r["server"] for r in results["runs"]))
    columns = min(2, len(bodies))
    rows = -(-len(bodies) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6 * columns, 4 * rows), squeeze=False,
                             sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    levels = sorted({r["concurrency"] for r in results["runs"]})
    for ax in axes.flat[len(bodies):]:
        ax.set_visible(False)
    for ax, body in zip(axes.flat, bodies, strict=False):
        for i, server in enumerate(servers):
            points = sorted((r["concurrency"], r["p50_ms"], r["p99_ms"])
                            for r in results["runs"]
                            if r["server"] == server and r["body"] == body and not r.get("failed"))
            if not points:
                continue
            conc = [p[0] for p in points]
            color = colors[i % len(colors)]
            # wrk cannot see Flask's wait for accept (no keep-alive): its latency is understated.
            name = f"{server} (understated)" if server == "flask" else server
            ax.plot(conc, [p[2] for p in points], "-o", color=color, label=f"{name} p99")
            ax.plot(conc, [p[1] for p in points], "--", color=color, label=f"{name} p50")
        ax.set_title(f"{body} ({results['bodies'][body]:,} B)")
        ax.set_xscale("log")
        ax.set_xticks(levels, [str(level) for level in levels])
        ax.minorticks_off()
        ax.set_yscale("log")
        ax.set_xlabel("concurrent connections")
        ax.set_ylabel("latency, ms (log)")
        ax.grid(True, which="both", alpha=0.3)
    axes.flat[0].legend(fontsize=7, loc="upper left", ncol=2)
    fig.suptitle("Admission review latency: p99 (solid) and p50 (dashed), one worker, TLS")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(results: Obj, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    results["targets"] = evaluate_targets(results)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "results.md").write_text(markdown(results))
    plot(results, out_dir / "latency.png")
