"""The throttle lab: gunicorn and uvicorn in a CPU-quota cgroup, driven from outside it.

For each repeat, quota and configuration (interleaved in that order, so each repeat compares
every configuration within the same few minutes of a shared machine): start the server in the
cgroup without a quota, wait for all its workers, set the quota, warm up, then for each endpoint
and load level run loadgen.py from outside the cgroup and record throughput, latency, the cgroup's
cpu.stat difference, CPU used, the server's PSS and the host's load average. Run it with
hack/throttle-lab/run.sh; `--check` only says whether a cgroup can be made here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import configs
import report
from cgroup import Cgroup, CgroupError

from tests.servers import stop_group

Obj = dict[str, Any]

LAB = Path(__file__).resolve().parent
HOST = "127.0.0.1"
START_TIMEOUT_SECONDS = 240.0
STOP_GRACE_SECONDS = 15.0
LOAD_TIMEOUT_SECONDS = 10
LOAD_GRACE_SECONDS = 60.0
SETTLE_SECONDS = 0.3
ENDPOINTS = ("cpu", "mixed")
EXIT_NO_CGROUP = 3
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Level:
    """Closed-loop load: `connections` clients, each pausing a random think time (mean
    `think_ms_at_1cpu / quota`) between requests; 0 means back-to-back requests."""

    name: str
    connections: int
    think_ms_at_1cpu: float

    def think_ms(self, cpus: float) -> float:
        return self.think_ms_at_1cpu / cpus


# light: /cpu asks for about a third of the quota at every quota; saturated: far more than it.
LEVELS = {
    "light": Level("light", 4, 50.0),
    "saturated": Level("saturated", 32, 0.0),
}
MODES: dict[str, Obj] = {
    "quick": {"quotas": "1", "duration": 2, "repeats": 2, "warmup": 1},
    "full": {"quotas": "0.5,1,2", "duration": 5, "repeats": 2, "warmup": 1},
}


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def host_busy_seconds() -> float:
    """CPU seconds the whole host has spent busy (all CPUs, from /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def pss_mib(pids: list[int]) -> float:
    """PSS summed over `pids`, from /proc/PID/smaps_rollup: shared pages split fairly."""
    total_kb = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kb += int(line.split()[1])
                    break
    return total_kb / 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """One configuration running in the cgroup; leaving the `with` block always ends it."""

    def __init__(self, config: configs.Config, group: Cgroup, *, log: Path) -> None:
        self.config = config
        self.group = group
        self.log = log
        self.port = free_port()
        self.ready_dir = Path(tempfile.mkdtemp(prefix="throttle-lab-ready-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_seconds = 0.0
        self.worker_pids: set[int] = set()

    def start(self) -> None:
        argv, extra_env = configs.command(self.config, port=self.port, python=sys.executable)
        env = {**os.environ, **extra_env, "THROTTLE_LAB_READY_DIR": str(self.ready_dir),
               "PYTHONPATH": str(LAB)}
        if not self.config.via_env:
            env.pop("WEB_CONCURRENCY", None)
        self.group.set_quota(None)  # start-up is not what is measured
        began = time.monotonic()
        with self.log.open("ab") as log:
            log.write(f"$ {' '.join(argv)}  {extra_env}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                argv, cwd=LAB, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=lambda: self.group.attach(os.getpid()))
        self._wait_ready(began)
        self.start_seconds = time.monotonic() - began

    def _workers_up(self) -> set[int]:
        in_group = set(self.group.pids())
        marked = {int(p.name) for p in self.ready_dir.iterdir() if p.name.isdigit()}
        up = marked & in_group
        # A one-process uvicorn is its own worker; otherwise the parent only supervises.
        return up - {self.pid} if len(up) > 1 else up

    def _wait_ready(self, began: float) -> None:
        deadline = began + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.config.label} exited with {self.proc.returncode} "
                                   f"during start-up; see {self.log}")
            up = self._workers_up()
            if len(up) >= self.config.workers and self._ping():
                self.worker_pids = up
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.config.label}: {len(self._workers_up())} of "
                           f"{self.config.workers} workers up after {START_TIMEOUT_SECONDS:g} s")

    def _ping(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.port}/ping", timeout=5) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def restarted_workers(self) -> int:
        """Workers that are not the ones that started (a gunicorn timeout kill, a crash)."""
        return len(self._workers_up() - self.worker_pids)

    def stop(self) -> None:
        self.group.set_quota(None)  # let 129 workers shut down at full speed
        if self.proc is not None:
            stop_group(self.proc, timeout=STOP_GRACE_SECONDS)
        # Whatever is left in the group was started by this server: end it too.
        for pid in self.group.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while self.group.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        shutil.rmtree(self.ready_dir, ignore_errors=True)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_load(port: int, endpoint: str, level: Level, *, cpus: float, seconds: int,
             group: Cgroup) -> Obj:
    """One closed-loop run of loadgen.py, in the load cgroup (outside the server's)."""
    argv = [sys.executable, str(LAB / "loadgen.py"), "--port", str(port), "--path",
            f"/{endpoint}", "--connections", str(level.connections), "--duration", str(seconds),
            "--think-ms", f"{level.think_ms(cpus):.1f}", "--timeout", str(LOAD_TIMEOUT_SECONDS)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False,
                          timeout=seconds + LOAD_GRACE_SECONDS,
                          preexec_fn=lambda: group.attach(os.getpid()))
    for line in done.stdout.splitlines():
        if line.startswith("LAB_JSON "):
            result: Obj = json.loads(line.removeprefix("LAB_JSON "))
            return result
    raise RuntimeError(f"loadgen gave no result (exit {done.returncode}): {done.stderr.strip()}")


def measure(server: Server, endpoint: str, level: Level, *, cpus: float, seconds: int,
            load_group: Cgroup) -> Obj:
    load_before = loadavg()
    stat_before = server.group.cpu_stat()
    client_before = load_group.cpu_stat()
    host_before = host_busy_seconds()
    began = time.monotonic()
    load = run_load(server.port, endpoint, level, cpus=cpus, seconds=seconds, group=load_group)
    wall = time.monotonic() - began
    stat = server.group.cpu_stat().minus(stat_before)
    client = load_group.cpu_stat().minus(client_before)
    host = host_busy_seconds() - host_before
    # CPU that neither the server nor the load generator used: other work on a shared machine.
    other = (None if stat.usage_s is None or client.usage_s is None
             else max(0.0, host - stat.usage_s - client.usage_s) / wall)
    pids = server.group.pids()
    return {
        "endpoint": endpoint, "level": level.name, "connections": level.connections,
        "think_ms": round(level.think_ms(cpus), 1),
        "rps": load["requests"] / load["duration_s"], "requests": load["requests"],
        "errors": load["errors"] + load["timeouts"] + load["non2xx"],
        "unfinished": load["unfinished"],
        "p50_ms": load["p50_ms"], "p90_ms": load["p90_ms"], "p99_ms": load["p99_ms"],
        "max_ms": load["max_ms"], "mean_ms": load["mean_ms"],
        "wall_s": wall, "nr_periods": stat.nr_periods, "nr_throttled": stat.nr_throttled,
        "throttled_s": stat.throttled_s,
        "throttled_s_per_s": stat.throttled_s / wall,
        "cpu_used_cores": None if stat.usage_s is None else stat.usage_s / wall,
        "client_cpu_cores": (load["client_cpu_s"] if client.usage_s is None
                             else client.usage_s) / wall,
        "other_cpu_cores": other,
        "pss_mib": pss_mib(pids), "processes": len(pids),
        "restarted_workers": server.restarted_workers(),
        "loadavg_before": load_before, "loadavg_after": loadavg(),
    }


def commit() -> str:
    """The work tree's commit, with `+changes` when the lab's own files differ from it."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=LAB, capture_output=True, text=True,
                              check=False)
        return done.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--", ".") else "")


def versions() -> Obj:
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "missing"

    return {"python": platform.python_version(), "gunicorn": version("gunicorn"),
            "uvicorn": version("uvicorn"), "uvloop": version("uvloop")}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="1 CPU only, 2 s runs, 2 repeats (the default)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full",
                      help="0.5, 1 and 2 CPUs, 5 s runs, 2 repeats; writes results/")
    mode.add_argument("--check", dest="mode", action="store_const", const="check",
                      help="only say whether a CPU-quota cgroup can be made here")
    parser.add_argument("--quotas", help="CPU quotas, comma-separated (e.g. 0.5,1,2)")
    parser.add_argument("--configs", default=",".join(configs.NAMES))
    parser.add_argument("--servers", default=",".join(configs.SERVERS))
    parser.add_argument("--endpoints", default=",".join(ENDPOINTS))
    parser.add_argument("--levels", default=",".join(LEVELS))
    parser.add_argument("--duration", type=int, help="seconds per measured run")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--warmup", type=int, help="seconds of warm-up per endpoint (0: none)")
    parser.add_argument("--out", type=Path, help="output folder")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite results.md and the plots from OUT/results.json")
    parser.set_defaults(mode="quick")
    args = parser.parse_args(argv)
    if args.mode != "check":
        for key, value in MODES[args.mode].items():
            if getattr(args, key) is None:
                setattr(args, key, value)
        if args.out is None:
            args.out = LAB / "results" if args.mode == "full" else LAB / "results" / "quick"
    return args


def check() -> int:
    try:
        with Cgroup(f"throttle-lab-check-{os.getpid()}") as group:
            print(f"ok: cgroup {group.version} at {group.cpu_dir}")
            return 0
    except CgroupError as err:
        print(f"throttle lab: {err}", file=sys.stderr)
        return EXIT_NO_CGROUP


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.mode == "check":
        return check()
    if args.report_only:
        results = json.loads((args.out / "results.json").read_text())
        report.write(results, args.out, plots=not args.no_plots)
        return 0
    quotas = [float(q) for q in args.quotas.split(",")]
    names = tuple(n for n in args.configs.split(",") if n)
    servers = tuple(s for s in args.servers.split(",") if s in configs.SERVERS)
    endpoints = [e for e in args.endpoints.split(",") if e]
    levels = [LEVELS[name] for name in args.levels.split(",") if name]
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "servers.log"
    log.write_bytes(b"")
    try:
        group = Cgroup(f"throttle-lab-server-{os.getpid()}")
        load_group = Cgroup(f"throttle-lab-load-{os.getpid()}")
    except CgroupError as err:
        print(f"throttle lab: {err}", file=sys.stderr)
        return EXIT_NO_CGROUP
    meta: Obj = {
        "mode": args.mode, "commit": commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host_cpus": os.cpu_count(), "kernel": platform.release(), "cgroup": group.version,
        "period_ms": 100, "quotas": quotas, "duration_s": args.duration,
        "repeats": args.repeats, "warmup_s": args.warmup,
        "levels": {lv.name: asdict(lv) for lv in levels}, "endpoints": endpoints,
        "versions": versions(), "loadavg_start": Path("/proc/loadavg").read_text().strip(),
    }
    runs: list[Obj] = []
    began = time.monotonic()
    with group, load_group:
        for repeat in range(1, args.repeats + 1):
            for cpus in quotas:
                for config in configs.matrix(names, servers, cpus):
                    runs.extend(_one_server(config, group, load_group, cpus=cpus,
                                            repeat=repeat, endpoints=endpoints,
                                            levels=levels, args=args, log=log))
    meta["wall_s"] = round(time.monotonic() - began, 1)
    meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    meta["loadavg_end"] = Path("/proc/loadavg").read_text().strip()
    results = {"meta": meta, "runs": runs}
    report.write(results, args.out, plots=not args.no_plots)
    failed = [r for r in runs if r.get("failed")]
    print(f"throttle lab: {len(runs)} runs in {meta['wall_s']} s, {len(failed)} failed; "
          f"results in {args.out}")
    return 1 if failed else 0


def _one_server(config: configs.Config, group: Cgroup, load_group: Cgroup, *, cpus: float,
                repeat: int,
                endpoints: list[str], levels: list[Level], args: argparse.Namespace,
                log: Path) -> list[Obj]:
    base = {"server": config.server, "config": config.name, "shape": config.shape,
            "workers": config.workers, "threads": config.threads, "via_env": config.via_env,
            "quota": cpus, "repeat": repeat}
    out: list[Obj] = []
    try:
        with Server(config, group, log=log) as server:
            server.start()
            base |= {"start_s": round(server.start_seconds, 2),
                     "workers_seen": len(server.worker_pids)}
            group.set_quota(cpus)
            time.sleep(SETTLE_SECONDS)
            for endpoint in endpoints:
                if args.warmup:
                    run_load(server.port, endpoint, LEVELS["saturated"], cpus=cpus,
                             seconds=args.warmup, group=load_group)
                for level in levels:
                    run = base | measure(server, endpoint, level, cpus=cpus,
                                         seconds=args.duration, load_group=load_group)
                    out.append(run)
                    print(f"  r{repeat} {cpus:g} CPU {config.label:<22} /{endpoint:<5} "
                          f"{level.name:<9} {run['rps']:7.1f} rps  p99 {run['p99_ms']:7.1f} ms"
                          f"  throttled {run['throttled_s_per_s']:.2f} s/s"
                          f"  load {run['loadavg_before']:.1f}", flush=True)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as err:
        print(f"  r{repeat} {cpus:g} CPU {config.label}: FAILED: {err}", flush=True)
        done = {(r["endpoint"], r["level"]) for r in out}
        out += [base | {"endpoint": e, "level": lv.name, "failed": str(err)}
                for e in endpoints for lv in levels if (e, lv.name) not in done]
    return out


if __name__ == "__main__":
    sys.exit(main())
