"""Benchmark of the admission path: the webhook against a floor and two peers, side by side.

Each server runs alone, one worker, over TLS, pinned to CPU 0; wrk drives it from CPU 1 the way
kube-apiserver does (HTTP/1.1 keep-alive, `POST /mutate?timeout=10s`, a fixed number of
connections for a fixed time). Before each load run one CA-verified request checks the server's
certificate and its answer. Outputs go to results/ (see report.py). Run it with hack/bench/run.sh.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import bodies
import checks
import procs
import report

from webhook.certificates.authority import build_ca, build_leaf

Obj = dict[str, Any]
T = TypeVar("T")

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent.parent
SERVER_CPU = 0
LOAD_CPU = 1
SERVERS = ("webhook", "webhook-registry", "floor", "kopf", "flask")
# The webhook as installed by default: registry lookups on, here against a local registry.
REGISTRY_SERVER = "webhook-registry"
# The webhook of another checkout (BENCH_BASELINE=DIR, e.g. `git archive` of an older commit),
# run beside this one so that before and after share the same window of a noisy machine.
BASELINE_SERVER = "webhook-before"
KNOWN_SERVERS = (*SERVERS, BASELINE_SERVER)
START_TIMEOUT_SECONDS = 60.0
POLL_SECONDS = 0.02
WRK_GRACE_SECONDS = 60.0
LONG_RUN_REVIEWS = 100_000
LONG_RUN_MAX_SECONDS = 45
LONG_RUN_SERVERS = ("webhook", "floor")
LONG_RUN_CONCURRENCY = 16
PROFILE_BODY = "target-4k"
# The webhook on the same pod (what a scale-up sends) and on distinct pods (no two alike), and
# the floor, whose profile shows which costs are the stack's own.
PROFILED = (("webhook", False), ("webhook", True), ("floor", False))
PROFILE_CONCURRENCY = 16
PROFILE_TOP = 15
PROFILE_RATE = 100
PROFILE_SECONDS = 6


@dataclass(frozen=True)
class Load:
    """One kind of traffic: a body, sent as is or as distinct pods, at some concurrency levels.

    The same pod over and over is what a Deployment's scale-up sends, and what a server that
    remembers decisions answers from memory; distinct pods (post.lua rewrites an annotation per
    request) make every review a new one, as reviews from many workloads are.
    """

    body: str
    distinct: bool
    concurrency: tuple[int, ...]

    @property
    def label(self) -> str:
        return f"{self.body} distinct" if self.distinct else self.body


# The default path: registry lookups on, a pod without `command` whose image the registry
# knows (CMD runs gunicorn) or does not have; both answered from the registry cache after the
# first review. With `command`, the registry is never asked.
REGISTRY_LOADS = (Load("nocmd-hit-4k", distinct=False, concurrency=(16,)),
                  Load("nocmd-miss-4k", distinct=False, concurrency=(16,)),
                  Load("nocmd-hit-4k", distinct=True, concurrency=(16,)))


@dataclass(frozen=True)
class Plan:
    """What one invocation measures."""

    mode: str
    servers: tuple[str, ...]
    loads: tuple[Load, ...]
    duration_s: int
    repeats: int
    warmup_s: int
    cold_starts: int
    long_run: bool
    profile: str  # "never", "auto" (when a webhook target is missed) or "always"
    out: Path


@dataclass
class Workspace:
    """Certificates, body files and logs for one invocation."""

    root: Path
    logs: Path
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    body_bytes: dict[str, bytes] = field(default_factory=dict)
    body_files: dict[str, Path] = field(default_factory=dict)
    body_uids: dict[str, str] = field(default_factory=dict)
    registry_host: str = ""


class ServerFailed(Exception):
    """A server did not start, died, or answered wrongly."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_registry(workspace: Workspace, cleanup: contextlib.ExitStack) -> bool:
    """A local `docker-registry` with the hit image pushed; False when it is not installed."""
    from tests.registry_server import Pusher, RegistryServer, registry_binary

    binary = registry_binary()
    if binary is None:
        return False
    store = workspace.root / "registry"
    store.mkdir()
    registry = RegistryServer(store, binary)
    registry.start()
    cleanup.callback(registry.stop)
    pusher = Pusher(registry.url)
    pusher.image(bodies.HIT_IMAGE.split(":")[0], bodies.HIT_IMAGE.split(":")[1],
                 config={"Cmd": bodies.HIT_CMD, "Labels": {}})
    pusher.close()
    workspace.registry_host = registry.host
    return True


def prepare(workspace: Workspace) -> None:
    """A throwaway CA and a serving certificate for localhost/127.0.0.1, and the body files."""
    ca = build_ca("concurrency-injector-bench-ca")
    leaf = build_leaf(ca, ["localhost", "127.0.0.1"])
    for attr, data in (("ca_file", ca.cert_pem), ("cert_file", leaf.cert_pem),
                       ("key_file", leaf.key_pem)):
        path = workspace.root / f"{attr.removesuffix('_file')}.pem"
        path.write_bytes(data)
        setattr(workspace, attr, str(path))
    reviews = bodies.all_bodies()
    if workspace.registry_host:
        reviews |= bodies.registry_bodies(workspace.registry_host)
    for name, review in reviews.items():
        data = bodies.encode(review)
        path = workspace.root / f"{name}.json"
        path.write_bytes(data)
        workspace.body_bytes[name] = data
        workspace.body_files[name] = path
        workspace.body_uids[name] = review["request"]["uid"]


def webhook_argv() -> list[str]:
    script = shutil.which("concurrency-injector")
    return [script] if script else [sys.executable, "-m", "webhook"]


def server_group(name: str, workspace: Workspace, port: int) -> procs.Group:
    """The command line of each server, all with the same certificate and key."""
    cert, key = workspace.cert_file, workspace.key_file
    argv: list[str]
    if name in ("webhook", REGISTRY_SERVER):
        registry = (["--insecure-registry", workspace.registry_host] if name == REGISTRY_SERVER
                    else ["--no-registry"])
        argv = [*webhook_argv(), "serve", "--cert-file", cert, "--key-file", key,
                "--host", "127.0.0.1", "--port", str(port), *registry]
    elif name == "floor":
        argv = [sys.executable, str(BENCH / "floor.py"), "--cert-file", cert, "--key-file", key,
                "--port", str(port)]
    elif name == "kopf":
        argv = [sys.executable, str(BENCH / "kopf_peer.py"), "--cert-file", cert,
                "--key-file", key, "--port", str(port)]
    elif name == "flask":
        argv = [sys.executable, "-m", "gunicorn", "--workers", "1", "--worker-class", "sync",
                "--certfile", cert, "--keyfile", key, "--bind", f"127.0.0.1:{port}",
                "--log-level", "warning", "--chdir", str(BENCH), "flask_peer:app"]
    elif name == BASELINE_SERVER:
        argv = [sys.executable, "-m", "webhook", "serve", "--cert-file", cert, "--key-file", key,
                "--host", "127.0.0.1", "--port", str(port), "--no-registry"]
    else:
        raise ValueError(f"unknown server {name!r}")
    tree = os.environ["BENCH_BASELINE"] if name == BASELINE_SERVER else str(REPO)
    pythonpath = os.pathsep.join(p for p in (tree, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "WEB_CONCURRENCY": "1", "PYTHONPATH": pythonpath}
    # `python -m` puts the working directory first on sys.path: the tree's own package.
    return procs.Group(argv, cpu=SERVER_CPU, log=workspace.logs / f"{name}.log", env=env,
                       cwd=Path(tree))


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def expect_patch(server: str, body: str) -> bool | None:
    if server == "floor":
        return None
    if body == "nocmd-hit-4k":  # only a server that reads the registry sees gunicorn
        return server == REGISTRY_SERVER
    return bodies.is_target(body)


def verified_review(server: str, body: str, *, port: int, workspace: Workspace) -> str:
    """One CA-verified review of `body`, checked; returns a summary or raises ServerFailed."""
    context = checks.client_context(workspace.ca_file)
    try:
        answer = checks.post_review(context, port=port, server_name="localhost",
                                    body=workspace.body_bytes[body])
        return checks.check_answer(answer, uid=workspace.body_uids[body],
                                   expect_patch=expect_patch(server, body))
    except (OSError, ValueError, checks.CheckError) as exc:
        raise ServerFailed(f"{server}: CA-verified check of {body} failed: {exc}") from exc


def start_and_wait(name: str, workspace: Workspace) -> tuple[procs.Group, int, float]:
    """Start a server; return it, its port, and the seconds to its first answered review.

    The caller owns the returned group and must stop it; on failure it is stopped here.
    """
    port = free_port()
    group = server_group(name, workspace, port).start()
    context = checks.client_context(workspace.ca_file)
    body = "target-4k"
    deadline = group.started_at + START_TIMEOUT_SECONDS
    try:
        while time.monotonic() < deadline:
            if group.exit_code() is not None:
                raise ServerFailed(f"{name} exited with {group.exit_code()}:\n"
                                   f"{log_tail(group.log)}")
            try:
                answer = checks.post_review(context, port=port, server_name="localhost",
                                            body=workspace.body_bytes[body])
            except (ConnectionError, TimeoutError, checks.CheckError):
                time.sleep(POLL_SECONDS)
                continue
            elapsed = time.monotonic() - group.started_at
            try:
                checks.check_answer(answer, uid=workspace.body_uids[body],
                                    expect_patch=expect_patch(name, body))
            except checks.CheckError as exc:
                raise ServerFailed(f"{name}: wrong first answer: {exc}") from exc
            return group, port, elapsed
        raise ServerFailed(f"{name} did not answer within {START_TIMEOUT_SECONDS:.0f} s:\n"
                           f"{log_tail(group.log)}")
    except BaseException:
        group.stop()
        raise


def run_wrk(*, port: int, body_file: Path, concurrency: int, duration_s: int, log: Path,
            distinct: bool = False, stop_after: int = 0) -> Obj:
    """One wrk run (one thread, pinned to the load CPU); the parsed BENCH_JSON line.

    With `stop_after`, the run ends after that many responses (or `duration_s`, whichever is
    first): the script marks it with a file, and SIGINT makes wrk stop and report.
    """
    done_file = log.with_suffix(".done")
    done_file.unlink(missing_ok=True)
    argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{duration_s}s", "--timeout", "10s",
            "--latency", "-s", str(BENCH / "post.lua"), f"https://127.0.0.1:{port}/mutate",
            "--", str(body_file), "distinct" if distinct else "same"]
    if stop_after:
        argv += [str(stop_after), str(done_file)]
    log.unlink(missing_ok=True)
    with procs.Group(argv, cpu=LOAD_CPU, log=log) as wrk:
        assert wrk.proc is not None
        deadline = time.monotonic() + duration_s + WRK_GRACE_SECONDS
        while wrk.proc.poll() is None and time.monotonic() < deadline:
            if done_file.exists():
                wrk.proc.send_signal(signal.SIGINT)
                break
            time.sleep(0.1)
        wrk.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    done_file.unlink(missing_ok=True)
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("BENCH_JSON "):
            parsed: Obj = json.loads(line.removeprefix("BENCH_JSON "))
            return parsed
    raise ServerFailed(f"wrk printed no result:\n{log_tail(log)}")


def measured_run(server: str, load: Load, concurrency: int, *, group: procs.Group, port: int,
                 plan: Plan, workspace: Workspace) -> Obj:
    """Check, load, measure: one repeat of one cell of the table."""
    check = verified_review(server, load.body, port=port, workspace=workspace)
    cpu_before = procs.cpu_seconds(group.pid)
    wrk = run_wrk(port=port, body_file=workspace.body_files[load.body], concurrency=concurrency,
                  duration_s=plan.duration_s, distinct=load.distinct,
                  log=workspace.logs / f"wrk-{server}-{load.label.replace(' ', '-')}"
                                       f"-c{concurrency}.txt")
    cpu = procs.cpu_seconds(group.pid) - cpu_before
    rss_total, rss_worker = procs.tree_rss_mb(group.pid)
    errors = {key: wrk[key] for key in ("non2xx", "connect", "read", "write", "timeout")}
    return {
        "requests": wrk["requests"], "rps": wrk["requests"] / (wrk["duration_us"] / 1e6),
        "p50_ms": wrk["p50_us"] / 1000, "p90_ms": wrk["p90_us"] / 1000,
        "p99_ms": wrk["p99_us"] / 1000, "max_ms": wrk["max_us"] / 1000,
        "errors": errors, "cpu_s": cpu, "rss_mb": rss_total, "rss_worker_mb": rss_worker,
        "check": check,
    }


def combine(server: str, body: str, concurrency: int, repeats: list[Obj]) -> Obj:
    """One row of the table from a cell's repeats: medians of the rates and percentiles, the
    worst max, all errors, CPU over all requests, and RSS after the last repeat."""
    requests = sum(r["requests"] for r in repeats)
    errors = Counter[str]()
    for r in repeats:
        errors.update(r["errors"])
    row = {
        "server": server, "body": body, "concurrency": concurrency,
        "requests": requests, "repeats": len(repeats),
        **{key: statistics.median(r[key] for r in repeats)
           for key in ("rps", "p50_ms", "p90_ms", "p99_ms")},
        "max_ms": max(r["max_ms"] for r in repeats),
        "errors": sum(errors.values()), "error_detail": dict(errors),
        "rss_mb": repeats[-1]["rss_mb"], "rss_worker_mb": repeats[-1]["rss_worker_mb"],
        "cpu_us_per_request": sum(r["cpu_s"] for r in repeats) / requests * 1e6
        if requests else 0.0,
        "each": [{k: r[k] for k in ("rps", "p50_ms", "p99_ms", "max_ms")} for r in repeats],
        "check": repeats[-1]["check"],
    }
    print(f"  {server:8} {body:14} c={concurrency:<3} {row['rps']:9,.0f} req/s  "
          f"p50 {row['p50_ms']:7.2f}  p99 {row['p99_ms']:7.2f} ms  errors {row['errors']}  "
          f"RSS {row['rss_mb']:6.1f} MB  CPU {row['cpu_us_per_request']:6.0f} µs/req", flush=True)
    return row


@dataclass
class Running:
    """A started server the load runs go to."""

    group: procs.Group
    port: int


def start_server(name: str, plan: Plan, workspace: Workspace, results: Obj) -> Running:
    """Cold starts (the last process is kept), then the certificate and all four answers checked.

    The caller owns the returned server's process group.
    """
    cold: list[float] = []
    for attempt in range(plan.cold_starts):
        group, port, elapsed = start_and_wait(name, workspace)
        cold.append(elapsed)
        if attempt < plan.cold_starts - 1:
            group.stop()
    results["cold_start"][name] = {"median_s": statistics.median(cold), "runs_s": cold}
    print(f"{name}: cold start {statistics.median(cold):.2f} s "
          f"({', '.join(f'{c:.2f}' for c in cold)})", flush=True)
    try:
        checks.check_wrong_name_rejected(checks.client_context(workspace.ca_file), port=port,
                                         body=workspace.body_bytes["target-4k"])
        for body in workspace.body_bytes:  # every answer is checked, even where not loaded
            verified_review(name, body, port=port, workspace=workspace)
    except BaseException:
        group.stop()
        raise
    return Running(group, port)


def bench_servers(plan: Plan, workspace: Workspace, results: Obj, failures: list[str]) -> None:
    """All servers up at once (idle ones cost nothing), the runs interleaved server by server.

    On a shared machine the load from elsewhere changes over minutes; taking each server's run
    right after the floor's, for the same body and concurrency, keeps the ratios honest.
    """
    running: dict[str, Running] = {}
    with contextlib.ExitStack() as cleanup:
        for name in plan.servers:
            server = guarded(f"{name} start", failures,
                             functools.partial(start_server, name, plan, workspace, results))
            if server is not None:
                running[name] = server
                cleanup.callback(server.group.stop)
        for load in plan.loads:
            for name, server in list(running.items()):
                if plan.warmup_s and guarded(
                        f"{name} warm-up {load.label}", failures, functools.partial(
                            run_wrk, port=server.port, body_file=workspace.body_files[load.body],
                            concurrency=16, duration_s=plan.warmup_s, distinct=load.distinct,
                            log=workspace.logs / f"wrk-{name}-warmup.txt")) is None:
                    del running[name]
            for concurrency in load.concurrency:
                cell: dict[str, list[Obj]] = {name: [] for name in running}
                for _ in range(plan.repeats):
                    for name, server in list(running.items()):
                        row = guarded(f"{name} {load.label} c={concurrency}", failures,
                                      functools.partial(
                                          measured_run, name, load, concurrency,
                                          group=server.group, port=server.port, plan=plan,
                                          workspace=workspace))
                        if row is None:
                            del running[name]  # one failure is enough: no cascade of them
                        else:
                            cell[name].append(row)
                for name, repeats in cell.items():
                    if name in running and repeats:
                        results["runs"].append(combine(name, load.label, concurrency, repeats))


def long_run(name: str, plan: Plan, workspace: Workspace) -> Obj:
    """RSS of a fresh worker before and after LONG_RUN_REVIEWS reviews, an equal share of each
    of the plan's loads (same and distinct pods), at c=LONG_RUN_CONCURRENCY; each share is also
    bounded in time, so a slow server may get fewer (the count is reported)."""
    group, port, _ = start_and_wait(name, workspace)
    reviews = 0
    with group:
        _, start_worker = procs.tree_rss_mb(group.pid)
        for load in plan.loads:
            wrk = run_wrk(port=port, body_file=workspace.body_files[load.body],
                          concurrency=LONG_RUN_CONCURRENCY, duration_s=LONG_RUN_MAX_SECONDS,
                          distinct=load.distinct,
                          stop_after=LONG_RUN_REVIEWS // len(plan.loads),
                          log=workspace.logs / f"wrk-{name}-long-{load.label.replace(' ', '-')}"
                                               ".txt")
            reviews += wrk["requests"]
            verified_review(name, load.body, port=port, workspace=workspace)
        total, worker = procs.tree_rss_mb(group.pid)
    print(f"{name}: {reviews:,} reviews: worker RSS {start_worker:.1f} -> {worker:.1f} MB",
          flush=True)
    return {"reviews": reviews, "concurrency": LONG_RUN_CONCURRENCY,
            "rss_start_mb": start_worker, "rss_worker_mb": worker, "rss_total_mb": total}


def summarize_profile(raw: Path, *, us_per_request: float, top: int = PROFILE_TOP) -> str:
    """The hottest frames of a py-spy raw (collapsed) profile: self time by file and by frame,
    and inclusive time by frame, each as a share of samples and as CPU µs per request (the
    share times the CPU per request measured over the same run)."""
    self_time: Counter[str] = Counter()
    by_file: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        # --subprocesses puts the process first; it says nothing about where time goes.
        frames = [f for f in stack.split(";") if not f.startswith("process ")]
        if not frames:
            continue
        total += count
        self_time[frames[-1]] += count
        by_file[frames[-1].rpartition("(")[2].split(":")[0]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return "no samples"

    def table(counter: Counter[str], limit: int) -> list[str]:
        return [f"{count / total:6.1%} {count / total * us_per_request:6.1f} µs  {frame}"
                for frame, count in counter.most_common(limit)]

    return "\n".join([
        f"{total} samples of the busy thread (idle time not sampled); "
        f"{us_per_request:.0f} µs of CPU per request over the run",
        "", "self time by file:", *table(by_file, 12),
        "", "self time by frame:", *table(self_time, top),
        # Frames on every stack (the event loop's start-up chain) say nothing: left out.
        "", "inclusive time by frame (below the event loop):",
        *table(Counter({f: c for f, c in inclusive.items() if c < total}), top),
    ])


def profile(name: str, plan: Plan, workspace: Workspace, *, distinct: bool) -> str:
    """py-spy on a server under load (target-4k, same or distinct pods, c=16): the top of its
    profile."""
    py_spy = shutil.which("py-spy")
    if not py_spy:
        return "py-spy is not installed (hack/bench/install.sh installs it): no profile"
    group, port, _ = start_and_wait(name, workspace)
    label = Load(PROFILE_BODY, distinct=distinct, concurrency=(PROFILE_CONCURRENCY,)).label
    raw = workspace.logs / f"profile-{name}-{label.replace(' ', '-')}.txt"
    seconds = max(plan.duration_s, PROFILE_SECONDS if plan.mode == "full" else 3)
    with group:
        # Blocking sampling (py-spy pauses the process per sample): --nonblocking tears stacks.
        recorder = procs.Group([py_spy, "record", "--pid", str(group.pid), "--format", "raw",
                                "--rate", str(PROFILE_RATE), "--duration", str(seconds),
                                "--subprocesses", "--output", str(raw)],
                               cpu=LOAD_CPU, log=workspace.logs / "py-spy.log")
        with recorder:
            cpu_before = procs.cpu_seconds(group.pid)
            wrk = run_wrk(port=port, body_file=workspace.body_files[PROFILE_BODY],
                          concurrency=PROFILE_CONCURRENCY, duration_s=seconds, distinct=distinct,
                          log=workspace.logs / f"wrk-{name}-profile.txt")
            cpu = procs.cpu_seconds(group.pid) - cpu_before
            assert recorder.proc is not None
            recorder.proc.wait(timeout=seconds + WRK_GRACE_SECONDS)
    if not raw.exists():
        return f"py-spy wrote no profile:\n{log_tail(workspace.logs / 'py-spy.log')}"
    us_per_request = cpu / max(wrk["requests"], 1) * 1e6
    return (f"py-spy record of {name}, {label} at c={PROFILE_CONCURRENCY}, {seconds} s "
            f"({wrk['requests'] / seconds:,.0f} req/s while sampled)\n"
            + summarize_profile(raw, us_per_request=us_per_request))


def versions() -> str:
    names = ("uvicorn", "fastapi", "starlette", "orjson", "uvloop", "httptools", "kopf",
             "aiohttp", "flask", "gunicorn")
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def wrk_version() -> str:
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10, check=False)
    return (out.stdout or out.stderr).splitlines()[0].split(" [")[0] if out.stdout else "wrk"


def notes(plan: Plan) -> list[str]:
    return [
        "wrk does not verify the server's certificate chain; the CA-verified Python request "
        "before every run does (test CA only, hostname `localhost` checked, and a wrong name "
        "must fail).",
        "floor: raw ASGI app on the same uvicorn (uvloop, httptools, TLS), orjson parse, fixed "
        "allowing response with the request's uid; it mutates nothing.",
        "kopf: kopf.WebhookServer (kopf's own aiohttp server, stdlib json), an async handler "
        "running the same admission handler; start-up discovery comes from a FAKE local API "
        "endpoint in the peer's process, used by that peer only.",
        "flask: Flask on gunicorn, one sync worker, `request.get_json()` + `jsonify`. Gunicorn's "
        "sync worker does not keep connections alive, so every request also pays a TLS "
        "handshake, as it would for kube-apiserver; with c>1 the other connections queue. wrk "
        "times a request from when it is written, after its connection's TCP and TLS handshake, "
        "so the wait for the single worker to accept is missing: Flask's latencies are "
        "understated (its throughput is not).",
        f"Long run: a fresh process per server, {LONG_RUN_REVIEWS:,} reviews, an equal share of "
        f"each load (same and distinct pods), at c={LONG_RUN_CONCURRENCY}; only for "
        f"{', '.join(LONG_RUN_SERVERS)}. The "
        "RSS column of the table is the process after all runs so far (more reviews, 64 "
        "connections, 16 KB bodies), so it grows down the table, the floor's too."
        if plan.long_run else "No long run (smoke mode).",
        "Absolute numbers on a shared 2-core machine move from run to run; the ratios to the "
        "floor, measured in the same run, are what the targets are about.",
    ]


def parse_args(argv: list[str] | None) -> Plan:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="a few seconds of load, c=1 and 16, one body; fails only on a "
                             "server that does not start or answers wrongly")
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help=f"comma-separated subset of {','.join(SERVERS)}, or "
                             f"{BASELINE_SERVER} (the checkout in BENCH_BASELINE=DIR)")
    parser.add_argument("--duration", type=int, help="seconds per load run (full: 2, smoke: 1)")
    parser.add_argument("--repeats", type=int,
                        help="load runs per cell, interleaved across servers; the table shows "
                             "their medians (full: 3; smoke: 1)")
    parser.add_argument("--profile", choices=("never", "auto", "always"), default="auto",
                        help="py-spy profiles of the webhook and the floor under load (auto: "
                             "when a webhook target is missed, full mode only)")
    parser.add_argument("--out", type=Path, help="results folder (full: hack/bench/results, "
                                                 "smoke: hack/bench/results/smoke)")
    parser.add_argument("--loads", help="comma-separated subset of the mode's loads, by label "
                                        "with '-' for spaces (e.g. target-4k,nocmd-hit-4k)")
    args = parser.parse_args(argv)
    servers = tuple(s.strip() for s in args.servers.split(",") if s.strip())
    unknown = set(servers) - set(KNOWN_SERVERS)
    if unknown or not servers:
        parser.error(f"--servers: unknown {sorted(unknown)}; choose from "
                     f"{','.join(KNOWN_SERVERS)}")
    if BASELINE_SERVER in servers and not os.environ.get("BENCH_BASELINE"):
        parser.error(f"--servers: {BASELINE_SERVER} runs the checkout in BENCH_BASELINE=DIR")
    if args.duration is not None and args.duration < 1:
        parser.error("--duration: at least 1 second")
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats: at least 1")
    if args.smoke:
        loads = (Load("target-4k", distinct=False, concurrency=(1, 16)),
                 Load("target-4k", distinct=True, concurrency=(16,)),
                 *REGISTRY_LOADS[:2])
        plan = Plan(mode="smoke", servers=servers, loads=loads, duration_s=args.duration or 1,
                    repeats=args.repeats or 1, warmup_s=0,
                    cold_starts=1, long_run=False,
                    profile="always" if args.profile == "always" else "never",
                    out=args.out or BENCH / "results" / "smoke")
    else:
        loads = (*(Load(body, distinct=False, concurrency=(1, 16, 64))
                   for body in bodies.all_bodies()),
                 *(Load(body, distinct=True, concurrency=(16,))
                   for body in bodies.all_bodies() if bodies.is_target(body)),
                 *REGISTRY_LOADS)
        plan = Plan(mode="full", servers=servers, loads=loads, duration_s=args.duration or 2,
                    repeats=args.repeats or 3, warmup_s=1,
                    cold_starts=3, long_run=True, profile=args.profile,
                    out=args.out or BENCH / "results")
    if args.loads:
        wanted = {label.strip() for label in args.loads.split(",") if label.strip()}
        known = {load.label.replace(" ", "-") for load in plan.loads}
        if wanted - known:
            parser.error(f"--loads: unknown {sorted(wanted - known)}; choose from "
                         f"{','.join(sorted(known))}")
        plan = dataclasses.replace(plan, loads=tuple(
            load for load in plan.loads if load.label.replace(" ", "-") in wanted))
    return plan


def with_registry(plan: Plan, workspace: Workspace, cleanup: contextlib.ExitStack) -> Plan:
    """Start the local registry the registry loads need, or leave them out without one."""
    needed = REGISTRY_SERVER in plan.servers or any(_uses_registry(load) for load in plan.loads)
    if not needed or start_registry(workspace, cleanup):
        return plan
    print("docker-registry is not installed (hack/install-registry.sh): no registry loads",
          flush=True)
    return dataclasses.replace(
        plan, servers=tuple(s for s in plan.servers if s != REGISTRY_SERVER),
        loads=tuple(load for load in plan.loads if not _uses_registry(load)))


def _uses_registry(load: Load) -> bool:
    return load.body.startswith("nocmd-")


def guarded(step: str, failures: list[str], fn: Callable[[], T]) -> T | None:
    """Run one step; a server failure is recorded (None) and the bench goes on."""
    try:
        return fn()
    except (ServerFailed, checks.CheckError, OSError, subprocess.SubprocessError) as exc:
        message = f"{step}: {exc}"
        failures.append(message)
        print(f"FAILED {message}", file=sys.stderr, flush=True)
        return None


def main(argv: list[str] | None = None) -> int:
    plan = parse_args(argv)
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="concurrency-injector-bench-"))
    workspace = Workspace(root=root, logs=plan.out / "logs")
    shutil.rmtree(workspace.logs, ignore_errors=True)  # this invocation's logs only
    workspace.logs.mkdir(parents=True, exist_ok=True)
    cleanup = contextlib.ExitStack()
    plan = with_registry(plan, workspace, cleanup)
    prepare(workspace)
    results: Obj = {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "mode": plan.mode,
            "command": "hack/bench/run.sh " + " ".join(sys.argv[1:] if argv is None else argv),
            "cpu": cpu_model(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "versions": versions(), "wrk": wrk_version(),
            "duration_s": plan.duration_s, "repeats": plan.repeats, "warmup_s": plan.warmup_s,
            "loads": [{"label": load.label, "body": load.body, "distinct": load.distinct,
                       "concurrency": list(load.concurrency)} for load in plan.loads],
            "servers": list(plan.servers),
            "long_run_reviews": LONG_RUN_REVIEWS, "notes": notes(plan),
        },
        "bodies": {load.label: len(workspace.body_bytes[load.body]) for load in plan.loads},
        "plotted": [load.label for load in plan.loads if len(load.concurrency) > 1],
        "body_sizes": {name: len(data) for name, data in workspace.body_bytes.items()},
        "cold_start": {}, "runs": [], "long_run": {}, "failures": [],
    }
    print("bodies: " + ", ".join(f"{n} {s:,} B" for n, s in results["body_sizes"].items()))
    failures: list[str] = results["failures"]
    try:
        bench_servers(plan, workspace, results, failures)
        for name in LONG_RUN_SERVERS if plan.long_run else ():
            if name in plan.servers:
                outcome = guarded(f"{name} long run", failures,
                                  functools.partial(long_run, name, plan, workspace))
                results["long_run"][name] = outcome or {"failed": True}
        missed = any(t["met"] is False for t in report.evaluate_targets(results))
        if "webhook" in plan.servers and (
                plan.profile == "always" or (plan.profile == "auto" and missed)):
            # The floor's profile next to the webhook's shows which costs are the stack's own.
            profiles = [guarded(f"{name} profile", failures,
                                functools.partial(profile, name, plan, workspace,
                                                  distinct=distinct))
                        for name, distinct in PROFILED if name in plan.servers]
            results["profile"] = "\n\n".join(p for p in profiles if p)
            print(results["profile"], flush=True)
    finally:
        cleanup.close()
        shutil.rmtree(root, ignore_errors=True)
    results["meta"]["elapsed_s"] = round(time.monotonic() - started)
    report.write_all(results, plan.out)
    print(f"results: {plan.out}/results.md, results.json, latency.png")
    for target in results["targets"]:
        print(f"  target {'met' if target['met'] else 'MISSED' if target['met'] is False else '-'}"
              f": {target['target']}: {target['measured']}")
    if failures:
        print(f"{len(failures)} failure(s):", *failures, sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
