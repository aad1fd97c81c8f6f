"""The lab's outputs: results.json (every run), results.md (tables with the spread over repeats)
and one PNG per load level (p99, throttled time and throughput per configuration and quota)."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

Obj = dict[str, Any]
Key = tuple[str, str, float, str, str]  # server, config, quota, endpoint, level

CONFIG_ORDER = ("injected", "trap-host", "trap-64core", "gthread-1x8", "gthread-2x4")
SERVER_ORDER = ("gunicorn", "uvicorn")


def _key(run: Obj) -> Key:
    return (run["server"], run["config"], run["quota"], run["endpoint"], run["level"])


def _sort_key(key: Key) -> tuple[float, int, int]:
    server, config, quota, _, _ = key
    return (quota, SERVER_ORDER.index(server), CONFIG_ORDER.index(config))


def group(runs: Iterable[Obj]) -> dict[Key, list[Obj]]:
    """Runs by (server, config, quota, endpoint, level), failed ones left out."""
    out: dict[Key, list[Obj]] = {}
    for run in runs:
        if not run.get("failed"):
            out.setdefault(_key(run), []).append(run)
    return dict(sorted(out.items(), key=lambda item: _sort_key(item[0])))


def values(runs: list[Obj], field: str) -> list[float]:
    return [float(r[field]) for r in runs if r.get(field) is not None]


def spread(runs: list[Obj], field: str, spec: str = ".0f") -> str:
    """`median [min-max]` over the repeats (just the value when they agree at that precision)."""
    got = values(runs, field)
    if not got:
        return "-"
    mid, low, high = statistics.median(got), min(got), max(got)
    if f"{low:{spec}}" == f"{high:{spec}}":
        return f"{mid:{spec}}"
    return f"{mid:{spec}} [{low:{spec}}-{high:{spec}}]"


def median(runs: list[Obj], field: str) -> float | None:
    got = values(runs, field)
    return statistics.median(got) if got else None


def _throttled_share(runs: list[Obj]) -> str:
    shares = [r["nr_throttled"] / r["nr_periods"] for r in runs if r["nr_periods"]]
    if not shares:
        return "-"
    return f"{statistics.median(shares):.0%}"


def table(groups: dict[Key, list[Obj]], endpoint: str, level: str) -> list[str]:
    lines = [
        "| quota | server | configuration | workers | req/s | p50 ms | p99 ms | max ms "
        "| throttled s/s | periods throttled | CPU used | PSS MiB | errors | other CPU | load 1m |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (server, config, quota, ep, lv), runs in groups.items():
        if ep != endpoint or lv != level:
            continue
        cpu = median(runs, "cpu_used_cores")
        load = values(runs, "loadavg_before")
        errors = sum(int(r["errors"]) for r in runs)
        restarted = sum(int(r["restarted_workers"]) for r in runs)
        note = f" ({restarted} restarts)" if restarted else ""
        lines.append(
            f"| {quota:g} | {server} | {config} | {runs[0]['shape']} | {spread(runs, 'rps')} "
            f"| {spread(runs, 'p50_ms', '.1f')} | {spread(runs, 'p99_ms')} "
            f"| {spread(runs, 'max_ms')} | {spread(runs, 'throttled_s_per_s', '.2f')} "
            f"| {_throttled_share(runs)} | {'-' if cpu is None else f'{cpu:.2f}'} "
            f"| {spread(runs, 'pss_mib')} | {errors}{note} "
            f"| {spread(runs, 'other_cpu_cores', '.2f')} "
            f"| {min(load):.1f}-{max(load):.1f} |")
    return lines


def headline(groups: dict[Key, list[Obj]], quota: float) -> list[str]:
    """One row per configuration at `quota`: the figures the README quotes."""
    lines = [
        "| server | configuration | workers | /cpu saturated: req/s | p99 ms | throttled s/s "
        "| periods throttled | /cpu light: p99 ms | /mixed saturated: req/s | p99 ms | PSS MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    seen = sorted({(k[0], k[1]) for k in groups if k[2] == quota},
                  key=lambda s: (SERVER_ORDER.index(s[0]), CONFIG_ORDER.index(s[1])))
    for server, config in seen:
        def cell(endpoint: str, level: str, field: str, spec: str = ".0f",
                 server: str = server, config: str = config) -> str:
            return spread(groups.get((server, config, quota, endpoint, level), []), field, spec)

        runs = groups.get((server, config, quota, "cpu", "saturated"), [])
        shape = next((r["shape"] for k, rs in groups.items() for r in rs
                      if k[:3] == (server, config, quota)), "?")
        lines.append(
            f"| {server} | {config} | {shape} | {cell('cpu', 'saturated', 'rps')} "
            f"| {cell('cpu', 'saturated', 'p99_ms')} "
            f"| {cell('cpu', 'saturated', 'throttled_s_per_s', '.2f')} "
            f"| {_throttled_share(runs)} | {cell('cpu', 'light', 'p99_ms')} "
            f"| {cell('mixed', 'saturated', 'rps')} | {cell('mixed', 'saturated', 'p99_ms')} "
            f"| {cell('cpu', 'saturated', 'pss_mib')} |")
    return lines


def markdown(results: Obj) -> str:
    meta = results["meta"]
    groups = group(results["runs"])
    failed = [r for r in results["runs"] if r.get("failed")]
    out = [
        "# Throttle lab results",
        "",
        f"Mode `{meta['mode']}` at `{meta.get('commit', '?')}`, {meta['started']} to "
        f"{meta['finished']} ({meta['wall_s']} s); "
        f"{meta['host_cpus']} host CPUs, kernel {meta['kernel']}, cgroup {meta['cgroup']}, "
        f"CFS period {meta['period_ms']} ms; {meta['duration_s']} s per run, "
        f"{meta['repeats']} repeats (interleaved: every configuration once per repeat), "
        f"{meta['warmup_s']} s warm-up per endpoint. Versions: "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".",
        "",
        f"Host load average (/proc/loadavg) at the start: `{meta['loadavg_start']}`, at the end: "
        f"`{meta['loadavg_end']}`; the `load 1m` column is the 1-minute load average before each "
        "run (min-max over the repeats): the machine is shared, and a load above its 2 cores "
        "means other work competed with the lab.",
        "",
        "`other CPU` is the host's busy CPU time (/proc/stat) less what the server and the load "
        "generator used, per second: other work that competed with the run; the lab's groups "
        "have 100 times the default CPU weight, so the quota, not that work, should be the limit. "
        "The load average counts the lab's own processes too (129 workers raise it).",
        "",
        "Cells are `median [min-max]` over the repeats. `throttled s/s`: throttled time from the "
        "cgroup's cpu.stat per second of wall time, summed over the CPUs that were stalled (up "
        "to the host's CPU count). `periods throttled`: nr_throttled / nr_periods. `CPU used`: "
        "CPU seconds per second. `PSS MiB`: proportional set size summed over the server's "
        "processes after the run.",
    ]
    if 1.0 in meta["quotas"]:
        out += ["", "## At 1 CPU, side by side", "", *headline(groups, 1.0)]
    for level in meta["levels"]:
        lv = meta["levels"][level]
        how = (f"{lv['connections']} connections back to back" if not lv["think_ms_at_1cpu"]
               else f"{lv['connections']} connections, each pausing a random think time of mean "
                    f"{lv['think_ms_at_1cpu']:g} ms / quota between requests")
        for endpoint in meta["endpoints"]:
            out += ["", f"## /{endpoint}, {level} ({how})", ""]
            out += table(groups, endpoint, level)
    if failed:
        out += ["", "## Failed", ""]
        out += [f"- {r['server']} {r['config']} at {r['quota']:g} CPU, /{r['endpoint']} "
                f"{r['level']}, repeat {r['repeat']}: {r['failed']}" for r in failed]
    return "\n".join(out) + "\n"


def plot(results: Obj, level: str, path: Path) -> None:
    """Three rows (p99, throttled s/s, req/s) by endpoint columns; bars per configuration in
    groups per quota, with whiskers from the lowest to the highest repeat."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")

    meta = results["meta"]
    groups = group(results["runs"])
    endpoints = meta["endpoints"]
    quotas = meta["quotas"]
    series = sorted({(k[0], k[1]) for k in groups if k[4] == level},
                    key=lambda s: (SERVER_ORDER.index(s[0]), CONFIG_ORDER.index(s[1])))
    rows = (("p99_ms", "p99 latency (ms, log)"),
            ("throttled_s_per_s", "throttled s per s"),
            ("rps", "requests/s"))
    fig, axes = plt.subplots(len(rows), len(endpoints), figsize=(6.5 * len(endpoints), 10),
                             squeeze=False)
    width = 0.8 / max(1, len(series))
    colors = [plt.get_cmap("tab10")(i) for i in range(10)]
    for col, endpoint in enumerate(endpoints):
        for row, (field, title) in enumerate(rows):
            ax = axes[row][col]
            for i, (server, config) in enumerate(series):
                xs, mids, lows, highs = [], [], [], []
                for q_index, quota in enumerate(quotas):
                    got = values(groups.get((server, config, quota, endpoint, level), []), field)
                    if not got:
                        continue
                    mid = statistics.median(got)
                    xs.append(q_index + (i - (len(series) - 1) / 2) * width)
                    mids.append(mid)
                    lows.append(mid - min(got))
                    highs.append(max(got) - mid)
                ax.bar(xs, mids, width, yerr=[lows, highs], capsize=2,
                       color=colors[CONFIG_ORDER.index(config)],
                       hatch="//" if server == "uvicorn" else None, edgecolor="black",
                       linewidth=0.4, label=f"{server} {config}")
            ax.set_xticks(range(len(quotas)), [f"{q:g} CPU" for q in quotas])
            if field == "p99_ms":
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(plain)
                ax.yaxis.set_minor_formatter(plain)
                ax.tick_params(axis="y", which="minor", labelsize=7)
            ax.set_title(f"/{endpoint}: {title}", fontsize=10)
            ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
    lv = meta["levels"][level]
    fig.suptitle(f"Throttle lab, {level} load ({lv['connections']} connections); "
                 f"{meta['host_cpus']}-CPU host, {meta['repeats']} repeats, whiskers min-max")
    fig.tight_layout(rect=(0, 0.07, 1, 0.97))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write(results: Obj, out: Path, *, plots: bool = True) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "results.md").write_text(markdown(results))
    if plots:
        for level in results["meta"]["levels"]:
            plot(results, level, out / f"{level}.png")
