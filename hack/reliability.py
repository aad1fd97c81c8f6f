"""Reliability probes: the webhook server tried as an attacker and as a busy cluster would.

Each probe starts a real `concurrency-injector serve` on a loopback port (TLS, a test CA),
drives it, and checks one bound; every loop here is bounded in count and time, every server is
stopped, and all traffic stays on 127.0.0.1. `hack/reliability.sh` runs it:

    hack/reliability.sh                 # every probe at full size (about 7 minutes)
    hack/reliability.sh --out hack/reliability-results.md   # the README's table
    hack/reliability.sh --quick         # small sizes and short timeouts (about a minute; CI)
    hack/reliability.sh --probes idle,tls

Prints a Markdown table (probe, bound, result, held) and exits 1 if a bound did not hold.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import itertools
import json
import os
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.servers import (  # noqa: E402
    LOOPBACK,
    Pki,
    WebhookServer,
    admission_review,
    client_context,
    gunicorn_pod,
    wait_until,
)

POST_LUA = REPO / "hack" / "bench" / "post.lua"


@dataclass(frozen=True)
class Size:
    """How big each probe is: full (the issue's table) or quick (CI)."""

    idle: int
    slowloris: int
    fd_connections: int
    header_mb: int
    review_containers: int
    shutdown_runs: int
    soak_reviews: int
    rotation_clients: int
    rotations: int
    first_request_seconds: float
    read_seconds: float


FULL = Size(idle=500, slowloris=200, fd_connections=1100, header_mb=200, review_containers=32_000,
            shutdown_runs=3, soak_reviews=200_000, rotation_clients=50, rotations=3,
            first_request_seconds=10.0, read_seconds=10.0)
QUICK = Size(idle=50, slowloris=20, fd_connections=1100, header_mb=20, review_containers=32_000,
             shutdown_runs=1, soak_reviews=4_000, rotation_clients=8, rotations=1,
             first_request_seconds=2.0, read_seconds=2.0)


@dataclass
class Row:
    probe: str
    bound: str
    result: str
    held: bool


# --- a server under test ----------------------------------------------------------------


_SERVERS = itertools.count(1)


def webhook_server(pki: Pki, workdir: Path, **options: Any) -> WebhookServer:
    """The shared harness (tests/servers.py) with this run's log file, ready on /readyz."""
    log_file = workdir / f"server-{next(_SERVERS)}.log"
    return WebhookServer(pki, log_file, ready_path="/readyz", **options)


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def review_body(uid: str = "u-1", *, checksum: str = "0") -> bytes:
    pod = gunicorn_pod(annotations={"checksum/config": checksum})
    return json.dumps(admission_review(pod, uid=uid)).encode()


def post(conn: http.client.HTTPSConnection, body: bytes) -> http.client.HTTPResponse:
    conn.request("POST", "/mutate?timeout=3s", body=body,
                 headers={"Content-Type": "application/json"})
    return conn.getresponse()


def raise_own_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --- many connections at once (asyncio) ---------------------------------------------------


async def _open_tls(port: int, ctx: ssl.SSLContext) -> tuple[asyncio.StreamReader,
                                                            asyncio.StreamWriter]:
    return await asyncio.wait_for(
        asyncio.open_connection(LOOPBACK, port, ssl=ctx, server_hostname="localhost"), 30)


async def _open_many(port: int, ctx: ssl.SSLContext, count: int
                     ) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    opened = []
    for start in range(0, count, 100):  # batches, so handshakes do not time out on a busy box
        batch = await asyncio.gather(*(_open_tls(port, ctx) for _ in range(start,
                                                                          min(count, start + 100))),
                                     return_exceptions=True)
        opened.extend(b for b in batch if not isinstance(b, BaseException))
    return opened


async def _closed_within(reader: asyncio.StreamReader, seconds: float, started: float
                         ) -> float | None:
    """Seconds from `started` until the server closed this connection, or None."""
    try:
        while True:
            data = await asyncio.wait_for(reader.read(4096), max(0.01, started + seconds
                                                                - time.monotonic()))
            if not data:
                return time.monotonic() - started
    except TimeoutError:
        return None
    except (ConnectionError, ssl.SSLError, OSError):
        return time.monotonic() - started


def _close_all(conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
    for _, writer in conns:
        writer.transport.abort()


# --- probes -------------------------------------------------------------------------------


def probe_idle(pki: Pki, work: Path, size: Size) -> Row:
    """Connections that finish TLS and send nothing are closed by the first-request timeout."""
    bound = size.first_request_seconds
    env = {"CONCURRENCY_INJECTOR_FIRST_REQUEST_SECONDS": str(bound)}
    with webhook_server(pki, work, env=env) as server:
        fds_before = fd_count(server.proc.pid)  # type: ignore[union-attr]

        async def run() -> tuple[int, list[float | None], int]:
            conns = await _open_many(server.port, server.context, size.idle)
            started = time.monotonic()
            peak = fd_count(server.proc.pid)  # type: ignore[union-attr]
            closed = await asyncio.gather(*(_closed_within(r, bound + 5, started)
                                            for r, _ in conns))
            _close_all(conns)
            return len(conns), list(closed), peak

        opened, closed, peak = asyncio.run(run())
        done = [c for c in closed if c is not None]
        time.sleep(0.5)
        fds_after = fd_count(server.proc.pid)  # type: ignore[union-attr]
    held = opened == size.idle and len(done) == opened and max(done, default=0) <= bound + 2
    return Row(f"{size.idle} connections that finish TLS and send nothing",
               f"closed within the first-request timeout ({bound:g} s)",
               f"{len(done)}/{opened} closed, the last after {max(done, default=0):.1f} s; "
               f"server fds {fds_before} → {peak} → {fds_after}", held)


def probe_slowloris(pki: Pki, work: Path, size: Size) -> Row:
    """Headers one byte a second: cut off by the request read deadline."""
    bound = size.read_seconds
    env = {"CONCURRENCY_INJECTOR_REQUEST_READ_SECONDS": str(bound)}
    with webhook_server(pki, work, env=env) as server:

        async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      started: float) -> float | None:
            data = b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 600
            for i in range(len(data)):
                if time.monotonic() > started + bound + 5:
                    return None
                try:
                    writer.write(data[i:i + 1])
                    await writer.drain()
                    if await _closed_within(reader, 1.0, time.monotonic()) is not None:
                        return time.monotonic() - started
                except (ConnectionError, ssl.SSLError, OSError):
                    return time.monotonic() - started
            return None

        async def run() -> tuple[int, list[float | None]]:
            conns = await _open_many(server.port, server.context, size.slowloris)
            started = time.monotonic()
            closed = await asyncio.gather(*(one(r, w, started) for r, w in conns))
            _close_all(conns)
            return len(conns), list(closed)

        opened, closed = asyncio.run(run())
        done = [c for c in closed if c is not None]
        alive = server.get("/healthz")[0] == 200
    held = (opened == size.slowloris and len(done) == opened
            and max(done, default=0) <= bound + 2 and alive)
    return Row(f"slowloris: headers one byte a second, {size.slowloris} connections",
               f"closed within the read timeout ({bound:g} s)",
               f"{len(done)}/{opened} closed, the last after {max(done, default=0):.1f} s; "
               f"/healthz {'answers' if alive else 'FAILS'}", held)


def probe_fd_exhaustion(pki: Pki, work: Path, size: Size) -> Row:
    """Idle connections up to the file limit: normal requests still get through."""
    raise_own_fd_limit()
    env = {"CONCURRENCY_INJECTOR_FIRST_REQUEST_SECONDS": "120"}  # eviction, not the timer
    with webhook_server(pki, work, env=env, nofile=1024) as server:

        async def run() -> int:
            conns = await _open_many(server.port, server.context, size.fd_connections)
            try:
                return len(conns)
            finally:
                answered_box.append(await asyncio.to_thread(normal_requests, server))
                _close_all(conns)

        answered_box: list[tuple[int, int]] = []
        opened = asyncio.run(run())
        answered, tried = answered_box[0]
    held = answered == tried
    return Row(f"{size.fd_connections} idle TLS connections, server `ulimit -n 1024`",
               "normal requests still answered (idle connections evicted at the cap)",
               f"{opened} opened; {answered}/{tried} reviews on new connections answered", held)


def normal_requests(server: WebhookServer, count: int = 20) -> tuple[int, int]:
    answered = 0
    for i in range(count):
        conn = server.connection(10)
        try:
            answered += post(conn, review_body(f"fd-{i}")).status == 200
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
    return answered, count


def probe_huge_header(pki: Pki, work: Path, size: Size) -> Row:
    """One header of hundreds of MB: refused at the cap, memory barely moves."""
    with webhook_server(pki, work) as server:
        pid = server.proc.pid  # type: ignore[union-attr]
        rss_before = status_kb(pid, "VmRSS") / 1024
        hwm_before = status_kb(pid, "VmHWM") / 1024
        raw = socket.create_connection((LOOPBACK, server.port), timeout=10)
        sock = server.context.wrap_socket(raw, server_hostname="localhost")
        chunk = b"a" * (1024 * 1024)
        sent = 0
        started = time.monotonic()
        try:
            sock.sendall(b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nX-Big: ")
            while sent < size.header_mb * 1024 * 1024:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        status = b""
        with contextlib.suppress(OSError):
            status = sock.recv(64).split(b"\r\n")[0]
        sock.close()
        elapsed = time.monotonic() - started
        time.sleep(0.5)
        rss_after = status_kb(pid, "VmRSS") / 1024
        hwm_after = status_kb(pid, "VmHWM") / 1024
        alive = server.get("/healthz")[0] == 200
    held = (status.startswith(b"HTTP/1.1 431") and hwm_after - hwm_before < 16 and alive)
    return Row(f"one {size.header_mb} MB request header",
               "431 and closed at 32 KiB; worker memory does not grow",
               f"{status.decode(errors='replace') or 'no answer'} after {sent / 2**20:.0f} MB sent "
               f"({elapsed:.1f} s); RSS {rss_before:.0f} → {rss_after:.0f} MB, peak "
               f"{hwm_before:.0f} → {hwm_after:.0f} MB", held)


def probe_websocket(pki: Pki, work: Path, size: Size) -> Row:
    """`POST /mutate` with websocket upgrade headers is refused at once."""
    with webhook_server(pki, work) as server:
        raw = socket.create_connection((LOOPBACK, server.port), timeout=5)
        sock = server.context.wrap_socket(raw, server_hostname="localhost")
        body = review_body("ws")
        started = time.monotonic()
        sock.sendall(b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n"
                     b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     b"Content-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(4096):
                answer += chunk
        elapsed = time.monotonic() - started
        sock.close()
        alive = server.get("/healthz")[0] == 200
    status = answer.split(b"\r\n")[0].decode(errors="replace")
    held = status.startswith("HTTP/1.1 400") and elapsed < 2 and alive
    return Row("`POST /mutate` with `Upgrade: websocket` headers",
               "refused (websockets off), connection closed",
               f"{status or 'no answer'}, closed after {elapsed * 1000:.0f} ms", held)


def big_review(containers: int) -> bytes:
    """A review of `containers` small containers, each with a CPU limit (about 3 MiB)."""
    items = [{"name": f"c{i}", "image": "registry.example/app:1", "command": ["gunicorn"],
              "resources": {"limits": {"cpu": "1"}}} for i in range(containers)]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"generateName": "big-", "namespace": "default"},
           "spec": {"containers": items}}
    return json.dumps(admission_review(pod, uid="big")).encode()


def capped_review() -> bytes:
    """The largest review inside the caps: 100 gunicorn containers, 5,000 env entries."""
    items = [{"name": f"c{i}", "image": "registry.example/app:1",
              "command": ["gunicorn", "app:app"],
              "env": [{"name": f"V{j}", "value": "x" * 20} for j in range(50)],
              "resources": {"limits": {"cpu": "2", "memory": "1Gi"}}} for i in range(100)]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"generateName": "cap-", "namespace": "default",
                        "annotations": {"note": "x" * 200_000}},
           "spec": {"containers": items}}
    return json.dumps(admission_review(pod, uid="cap")).encode()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _probe_stall(server: WebhookServer, body: bytes) -> tuple[float, float, int, str, float]:
    """Post `body` while /healthz is polled on another connection: review seconds (wall and
    the server's CPU), status, first warning, and the longest /healthz wait.

    On a loaded machine wall time is mostly waiting for a CPU; the server's CPU time is the
    work the review cost."""
    stop = threading.Event()
    waits: list[float] = []

    def poll() -> None:
        conn = server.connection(30)
        try:
            while not stop.is_set():
                started = time.monotonic()
                conn.request("GET", "/healthz")
                conn.getresponse().read()
                waits.append(time.monotonic() - started)
                time.sleep(0.02)
        finally:
            conn.close()

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    time.sleep(0.2)
    conn = server.connection(30)
    conn.connect()
    pid = server.proc.pid  # type: ignore[union-attr]
    cpu = cpu_seconds(pid)
    started = time.monotonic()
    answer = post(conn, body)
    data = answer.read()
    elapsed = time.monotonic() - started
    stop.set()
    poller.join(5)
    cpu = cpu_seconds(pid) - cpu
    conn.close()
    warnings = json.loads(data).get("response", {}).get("warnings", []) if answer.status == 200 \
        else [data.decode(errors="replace")[:80]]
    return elapsed, cpu, answer.status, (warnings or [""])[0], max(waits, default=0.0)


def probe_huge_review(pki: Pki, work: Path, size: Size) -> list[Row]:
    """A 3 MiB review of 32k containers, and the largest review inside the caps."""
    with webhook_server(pki, work) as server:
        body = big_review(size.review_containers)
        elapsed, cpu, status, warning, stall = _probe_stall(server, body)
        held = status == 200 and "limit" in warning and cpu < 0.3 and elapsed < 3
        huge = Row(f"a {len(body) / 2**20:.1f} MiB review of {size.review_containers:,} small "
                   "containers", "admitted unchanged with a warning; < 0.3 s of server CPU "
                   "(a tenth of the API server's 3 s)",
                   f"{status} with {warning[:60]!r}: {cpu * 1000:.0f} ms CPU, "
                   f"{elapsed * 1000:.0f} ms wall; /healthz waited at most "
                   f"{stall * 1000:.0f} ms meanwhile", held)
        body = capped_review()
        elapsed, cpu, status, _, stall = _probe_stall(server, body)
        held = status == 200 and cpu < 0.3 and elapsed < 3
        capped = Row(f"the largest review inside the caps ({len(body) / 2**20:.1f} MiB: 100 "
                     "targets, 5,000 env entries, 200 KB of annotations)",
                     "decided in < 0.3 s of server CPU",
                     f"{status}: {cpu * 1000:.0f} ms CPU, {elapsed * 1000:.0f} ms wall; "
                     f"/healthz waited at most {stall * 1000:.0f} ms meanwhile", held)
    return [huge, capped]


@dataclass
class ShutdownRun:
    exit_s: float = 0.0
    exit_code: int | None = None
    ready_503_s: float | None = None
    answered: int = 0
    answered_after: int = 0
    close_after: int = 0
    lost: int = 0  # written on an accepted connection, never answered
    refused: int = 0  # connection refused or reset before the request was written


def _shutdown_run(pki: Pki, work: Path, workers: int) -> ShutdownRun:
    """Clients the way kube-apiserver behind a Service behaves, then SIGTERM to the server."""
    result = ShutdownRun()
    server = webhook_server(pki, work, workers=workers).start()
    endpoint = threading.Event()  # the Service still lists this pod
    endpoint.set()
    stop = threading.Event()
    lock = threading.Lock()
    sigterm_at: list[float] = []

    def client(n: int) -> None:
        conn: http.client.HTTPSConnection | None = None
        i = 0
        while not stop.is_set():
            if conn is None:
                if not endpoint.is_set():  # the API server now dials another replica
                    time.sleep(0.05)
                    continue
                conn = server.connection(15)
                try:
                    conn.connect()
                except OSError:
                    with lock:
                        result.refused += 1
                    conn = None
                    time.sleep(0.05)
                    continue
            i += 1
            try:
                sent = time.monotonic()
                answer = post(conn, review_body(f"s{n}-{i}", checksum=str(i % 7)))
                answer.read()
                closing = (answer.getheader("connection") or "").lower() == "close"
                with lock:
                    result.answered += 1
                    # Sent once the drain had surely started (signal delivery and, with two
                    # workers, the supervisor passing it on take a moment on a busy machine).
                    if sigterm_at and sent > sigterm_at[0] + 0.1:
                        result.answered_after += 1
                        result.close_after += closing
                if closing:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                with lock:
                    result.lost += 1
                conn.close()
                conn = None

    def readiness() -> None:
        """The kubelet's readiness probe, from 0.1 s after SIGTERM: the first answer counts."""
        time.sleep(max(0.0, sigterm_at[0] + 0.1 - time.monotonic()))
        while not stop.is_set():
            sent = time.monotonic()
            try:
                status, _ = server.get("/readyz", timeout=2)
            except (OSError, http.client.HTTPException):
                status = 0
            if status == 503:
                result.ready_503_s = sent - sigterm_at[0]
                time.sleep(1.0)  # endpoint removal takes the endpoints controller a moment
                endpoint.clear()
                return
            if status == 0:  # gone without ever saying 503
                endpoint.clear()
                return
            time.sleep(0.05)

    # Idle keep-alive connections whose client never reads again (as a pooled client that
    # waits for its next request does): uvicorn's shutdown used to wait on their TLS close.
    idle = []
    for _ in range(4):
        sock = server.context.wrap_socket(socket.create_connection((LOOPBACK, server.port), 10),
                                          server_hostname="localhost")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        sock.recv(4096)
        idle.append(sock)
    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(8)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    assert server.proc is not None
    sigterm_at.append(time.monotonic())
    server.proc.send_signal(signal.SIGTERM)  # to the main process only, as the kubelet does
    watcher = threading.Thread(target=readiness, daemon=True)
    watcher.start()
    try:
        result.exit_code = server.proc.wait(40)
    except subprocess.TimeoutExpired:
        result.exit_code = None
    result.exit_s = time.monotonic() - sigterm_at[0]
    stop.set()
    for t in [*threads, watcher]:
        t.join(20)
    for sock in idle:
        sock.close()
    server.stop()
    return result


def probe_shutdown(pki: Pki, work: Path, size: Size) -> list[Row]:
    rows = []
    for workers in (1, 2):
        runs = [_shutdown_run(pki, work, workers) for _ in range(size.shutdown_runs)]
        worst_exit = max(r.exit_s for r in runs)
        ready = [r.ready_503_s for r in runs]
        lost = sum(r.lost for r in runs)
        after = sum(r.answered_after for r in runs)
        closes = sum(r.close_after for r in runs)
        held = (worst_exit < 15 and lost == 0 and all(r is not None and r < 0.15 for r in ready)
                and closes == after)
        rows.append(Row(
            f"SIGTERM under load (8 clients, 4 idle keep-alive connections), {workers} "
            f"worker{'s' if workers > 1 else ''}, {len(runs)} run{'s' if len(runs) > 1 else ''}",
            "/readyz 503 at once, `Connection: close`, exit < 15 s (grace 30 s), none lost",
            f"exit after {', '.join(f'{r.exit_s:.1f}' for r in runs)} s; first /readyz (sent "
            f"0.1 s after SIGTERM): {', '.join('200' if r is None else '503' for r in ready)}; "
            f"{sum(r.answered for r in runs):,} answered, {closes}/{after} sent after SIGTERM "
            f"with `Connection: close`; {lost} lost, {sum(r.refused for r in runs)} refused",
            held))
    return rows


def probe_soak(pki: Pki, work: Path, size: Size) -> list[Row]:
    """Many reviews, half distinct, with wrk: no errors, memory and fds flat."""
    if shutil.which("wrk") is None:
        return [Row("soak", "wrk", "wrk is not installed (hack/bench/install.sh): skipped",
                    True)]
    rows = []
    for workers in (1, 2):
        with webhook_server(pki, work, workers=workers) as server:
            body_file = work / "soak.json"
            body_file.write_bytes(_bench_body())
            pids = server.workers_pids()
            half = size.soak_reviews // 2
            counts: Counter[str] = Counter()
            rss_warm: list[float] = []
            fds_warm: list[int] = []
            for label, distinct, share in (("warm-up", "distinct", half // 10),
                                           ("same", "same", half),
                                           ("distinct", "distinct", half - half // 10)):
                stats = _wrk(server.port, body_file, distinct, share, work)
                counts["requests"] += stats["requests"]
                counts["errors"] += sum(stats[k] for k in ("non2xx", "connect", "read",
                                                            "write", "timeout"))
                if label == "warm-up":
                    rss_warm = [status_kb(p, "VmRSS") / 1024 for p in pids]
                    fds_warm = [fd_count(p) for p in pids]
            rss_end = [status_kb(p, "VmRSS") / 1024 for p in pids]
            fds_end = [fd_count(p) for p in pids]
        growth = max((e - w) / w * 100 for w, e in zip(rss_warm, rss_end, strict=True))
        held = counts["errors"] == 0 and growth < 15 and max(fds_end) <= max(fds_warm) + 4
        rows.append(Row(f"soak, {counts['requests']:,} reviews (half distinct), {workers} "
                        f"worker{'s' if workers > 1 else ''}",
                        "no errors; RSS < +15 % after warm-up; fds flat",
                        f"{counts['errors']} errors; RSS {_mb(rss_warm)} → {_mb(rss_end)} MB "
                        f"(+{growth:.1f} %); fds {fds_warm} → {fds_end}", held))
    return rows


def _mb(values: list[float]) -> str:
    return "/".join(f"{v:.0f}" for v in values)


def _bench_body() -> bytes:
    sys.path.insert(0, str(REPO / "hack" / "bench"))
    import bodies  # the benchmark's realistic review, with its checksum/config annotation

    return bodies.encode(bodies.all_bodies()["target-4k"])


def _wrk(port: int, body_file: Path, distinct: str, count: int, work: Path) -> dict[str, int]:
    done = work / "wrk.done"
    done.unlink(missing_ok=True)
    argv = ["wrk", "-t1", "-c16", "-d120s", "--timeout", "10s", "-s", str(POST_LUA),
            f"https://{LOOPBACK}:{port}/mutate", "--", str(body_file), distinct, str(count),
            str(done)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 130
    while proc.poll() is None and time.monotonic() < deadline:
        if done.exists():
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.1)
    out, _ = proc.communicate(timeout=30)
    for line in out.decode(errors="replace").splitlines():
        if line.startswith("BENCH_JSON "):
            parsed: dict[str, int] = json.loads(line.removeprefix("BENCH_JSON "))
            return parsed
    raise RuntimeError(f"wrk printed no result:\n{out.decode(errors='replace')[-2000:]}")


def probe_rotation(pki: Pki, work: Path, size: Size) -> Row:
    """New handshakes from many clients while the certificate is renewed on disk."""
    from webhook.certificates.authority import build_leaf

    tls_dir = work / "rotating"
    tls_dir.mkdir(exist_ok=True)
    data = tls_dir / "..data"
    first = tls_dir / "..v0"
    first.mkdir()
    (first / "tls.crt").write_bytes(pki.leaf.cert_pem)
    (first / "tls.key").write_bytes(pki.leaf.key_pem)
    data.symlink_to(first.name)
    rotating = Pki(pki.ca, pki.leaf, pki.ca_file, tls_dir / "tls.crt", tls_dir / "tls.key")
    rotating.cert_file.symlink_to("..data/tls.crt")
    rotating.key_file.symlink_to("..data/tls.key")
    env = {"CONCURRENCY_INJECTOR_CERT_RELOAD_SECONDS": "1"}
    serials: Counter[int] = Counter()
    failures = Counter[str]()
    lock = threading.Lock()
    stop = threading.Event()
    with webhook_server(rotating, work, env=env) as server:
        ctx = server.context

        def client() -> None:
            while not stop.is_set():
                try:
                    raw = socket.create_connection((LOOPBACK, server.port), timeout=10)
                    with ctx.wrap_socket(raw, server_hostname="localhost") as sock:
                        der = sock.getpeercert(binary_form=True)
                    from cryptography import x509

                    serial = x509.load_der_x509_certificate(der or b"").serial_number
                    with lock:
                        serials[serial] += 1
                except (OSError, ValueError) as exc:
                    with lock:
                        failures[type(exc).__name__] += 1

        threads = [threading.Thread(target=client, daemon=True)
                   for _ in range(size.rotation_clients)]
        for t in threads:
            t.start()
        picked_up = []
        for n in range(1, size.rotations + 1):
            time.sleep(2)
            leaf = build_leaf(pki.ca, ["localhost", LOOPBACK])
            if n % 2:  # the kubelet's way: a new directory, then one symlink swap
                new = tls_dir / f"..v{n}"
                new.mkdir()
                (new / "tls.crt").write_bytes(leaf.cert_pem)
                (new / "tls.key").write_bytes(leaf.key_pem)
                tmp = tls_dir / "..data_tmp"
                tmp.symlink_to(new.name)
                tmp.rename(data)
            else:  # a plain rename of each file over the old one
                target = data.resolve()
                for name, pem in (("tls.crt", leaf.cert_pem), ("tls.key", leaf.key_pem)):
                    (target / f"{name}.new").write_bytes(pem)
                    (target / f"{name}.new").rename(target / name)
            started = time.monotonic()
            serial = leaf.cert.serial_number
            wait_until(lambda s=serial: serials[s] > 0, timeout=15, interval=0.05)  # type: ignore[misc]
            picked_up.append(time.monotonic() - started if serials[serial] else None)
        time.sleep(1)
        stop.set()
        for t in threads:
            t.join(15)
    handshakes = sum(serials.values())
    held = not failures and all(p is not None and p < 15 for p in picked_up)
    return Row(f"certificate renewed {size.rotations} times under {size.rotation_clients} clients "
               "(`..data` symlink swap and file rename)",
               "no failed handshake; new certificate served within 15 s",
               f"{handshakes:,} handshakes, {sum(failures.values())} failed; new certificate after "
               f"{', '.join('never' if p is None else f'{p:.1f}' for p in picked_up)} s", held)


def probe_tls(pki: Pki, work: Path, size: Size) -> Row:
    """Protocol versions and TLS 1.2 cipher suites the server accepts."""
    with webhook_server(pki, work) as server:
        refused = []
        for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
            ctx = _client(server, version, "ALL:@SECLEVEL=0")
            refused.append(not _handshake(server.port, ctx))
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        probe.set_ciphers("ALL:@SECLEVEL=0")
        names = [c["name"] for c in probe.get_ciphers() if c["protocol"] == "TLSv1.2"]
        accepted = [n for n in names if _handshake(server.port,
                                                   _client(server, ssl.TLSVersion.TLSv1_2, n))]
        tls13 = _handshake(server.port, _client(server, ssl.TLSVersion.TLSv1_3, None))
    weak = [n for n in accepted if not n.startswith("ECDHE") or not ("GCM" in n or "CHACHA" in n)]
    held = all(refused) and not weak and tls13 and bool(accepted)
    return Row("TLS versions and TLS 1.2 suites", "1.0/1.1 refused; 1.2 only ECDHE + AEAD; 1.3",
               f"1.0/1.1 {'refused' if all(refused) else 'ACCEPTED'}; 1.2: {', '.join(accepted)}"
               f"; 1.3 {'accepted' if tls13 else 'refused'}", held)


def _client(server: WebhookServer, version: ssl.TLSVersion, ciphers: str | None) -> ssl.SSLContext:
    ctx = client_context(server.pki.ca.cert_pem, minimum=version, maximum=version)
    if ciphers:
        ctx.set_ciphers(ciphers)
    return ctx


def _handshake(port: int, ctx: ssl.SSLContext) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost"):
            return True
    except (OSError, ssl.SSLError):
        return False


def probe_chart(pki: Pki, work: Path, size: Size) -> Row:
    """The default render has a NetworkPolicy; checkov's findings (when installed)."""
    helm = shutil.which("helm") or str(REPO / ".tools" / "bin" / "helm")
    chart = REPO / "charts" / "concurrency-injector"
    rendered = subprocess.run([helm, "template", "ci", str(chart), "-n", "ci"], check=True,
                              capture_output=True, text=True, timeout=60).stdout
    policy = "kind: NetworkPolicy" in rendered
    result = f"NetworkPolicy {'rendered' if policy else 'MISSING'} by default"
    held = policy
    checkov = os.environ.get("CHECKOV") or shutil.which("checkov")
    if checkov:
        (work / "render").mkdir(exist_ok=True)
        (work / "render" / "chart.yaml").write_text(rendered)
        out = subprocess.run([checkov, "-d", str(work / "render"), "--framework", "kubernetes",
                              "--compact", "--quiet", "-o", "json"], capture_output=True,
                             text=True, timeout=300)
        try:
            report = json.loads(out.stdout)
            reports = report if isinstance(report, list) else [report]
            failed = sorted({c["check_id"] for r in reports
                             for c in r["results"]["failed_checks"]})
        except (ValueError, KeyError, TypeError):
            failed = ["(checkov output unreadable)"]
        accepted = _accepted_checkov(chart)
        unexplained = [c for c in failed if c not in accepted]
        held = held and not unexplained
        result += (f"; checkov: {len(failed)} failed checks, all justified in the chart README"
                   if not unexplained else f"; checkov: unexplained {', '.join(unexplained)}")
    else:
        result += "; checkov not installed (pip install checkov, or CHECKOV=path): not run"
    return Row("the chart's default render", "NetworkPolicy on; every checkov finding fixed or "
               "justified", result, held)


def _accepted_checkov(chart: Path) -> set[str]:
    """Checks the chart README justifies: `CKV_K8S_N` in its 'Scanner findings' section."""
    import re

    text = (chart / "README.md").read_text()
    section = text.split("## Scanner findings", 1)[1] if "## Scanner findings" in text else ""
    section = section.split("\n## ", 1)[0]
    return set(re.findall(r"CKV2?_K8S_\d+", section))


PROBES: dict[str, Callable[[Pki, Path, Size], Row | list[Row]]] = {
    "idle": probe_idle,
    "slowloris": probe_slowloris,
    "fds": probe_fd_exhaustion,
    "header": probe_huge_header,
    "websocket": probe_websocket,
    "review": probe_huge_review,
    "shutdown": probe_shutdown,
    "soak": probe_soak,
    "rotation": probe_rotation,
    "tls": probe_tls,
    "chart": probe_chart,
}
QUICK_PROBES = ("idle", "slowloris", "fds", "header", "websocket", "review", "shutdown", "tls",
                "chart")


def table(rows: list[Row]) -> str:
    lines = ["| probe | bound | result | held |", "|---|---|---|---|"]
    lines += [f"| {r.probe} | {r.bound} | {r.result} | {'yes' if r.held else '**no**'} |"
              for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, short timeouts (CI)")
    parser.add_argument("--probes", help=f"comma-separated subset of {','.join(PROBES)}")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    size = QUICK if args.quick else FULL
    chosen = args.probes.split(",") if args.probes else list(QUICK_PROBES if args.quick
                                                               else PROBES)
    unknown = [p for p in chosen if p not in PROBES]
    if unknown:
        parser.error(f"unknown probes {unknown}; choose from {','.join(PROBES)}")
    rows: list[Row] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="concurrency-injector-reliability-") as tmp:
        work = Path(tmp)
        pki = Pki.create(work / "pki")
        for name in chosen:
            began = time.monotonic()
            try:
                found = PROBES[name](pki, work, size)
            except Exception as exc:  # a probe that breaks is a bound not shown to hold
                found = Row(name, "probe ran", f"probe failed: {type(exc).__name__}: {exc}",
                            False)
            for row in found if isinstance(found, list) else [found]:
                rows.append(row)
                print(f"{'ok  ' if row.held else 'FAIL'} {row.probe}: {row.result} "
                      f"({time.monotonic() - began:.0f} s)", flush=True)
    load = os.getloadavg()
    header = (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
              f"{'quick' if args.quick else 'full'} run, {time.monotonic() - started:.0f} s, "
              f"load average {load[0]:.1f} on {os.cpu_count()} CPUs")
    text = f"{header}\n\n{table(rows)}\n"
    print("\n" + text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    failed = [r for r in rows if not r.held]
    print(f"reliability: {len(rows) - len(failed)} bounds held, {len(failed)} did not")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
