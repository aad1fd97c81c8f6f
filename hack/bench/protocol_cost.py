"""What the connection bounds cost: the floor app on uvicorn's stock httptools protocol against
the same app on webhook/serving/protocol.py's bounded one, interleaved, CPU per request from /proc.

    python hack/bench/protocol_cost.py [--rounds 6] [--duration 3]

Each server: one worker over TLS pinned to CPU 0; wrk on CPU 1 (post.lua, target-4k, c=16).
CPU time per request moves less than requests per second on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent.parent
sys.path[:0] = [str(REPO), str(BENCH)]

import bodies  # noqa: E402
import floor  # noqa: E402
import procs  # noqa: E402

from tests.servers import stop_group  # noqa: E402
from webhook.certificates.authority import build_ca, build_leaf  # noqa: E402


def serve(port: int, bounded: bool, cert: str, key: str) -> None:
    import uvicorn

    from webhook.serving.protocol import BoundedHttpToolsProtocol

    http: type[BoundedHttpToolsProtocol] | str = "httptools"
    if bounded:
        http = BoundedHttpToolsProtocol
    uvicorn.run(floor.app, host="127.0.0.1", port=port, ssl_certfile=cert, ssl_keyfile=key,
                loop="uvloop", http=http, lifespan="off", workers=1, timeout_keep_alive=120,
                log_config=None, access_log=False, server_header=False, proxy_headers=False)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_per_request(pid: int, port: int, body: Path, duration: int) -> float:
    before = cpu_seconds(pid)
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c16", f"-d{duration}s",
                          "--timeout", "10s", "-s", str(BENCH / "post.lua"),
                          f"https://127.0.0.1:{port}/mutate", "--", str(body), "same"],
                         capture_output=True, text=True, timeout=duration + 60).stdout
    line = next(x for x in out.splitlines() if x.startswith("BENCH_JSON "))
    requests = json.loads(line.removeprefix("BENCH_JSON "))["requests"]
    return (cpu_seconds(pid) - before) / max(requests, 1) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=int, default=3)
    parser.add_argument("--serve", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        port, bounded, cert, key = args.serve
        serve(int(port), bounded == "1", cert, key)
        return
    work = Path(tempfile.mkdtemp(prefix="protocol-cost-"))
    ca = build_ca("protocol-cost-ca")
    leaf = build_leaf(ca, ["localhost", "127.0.0.1"])
    cert, key, body = work / "tls.crt", work / "tls.key", work / "body.json"
    cert.write_bytes(leaf.cert_pem)
    key.write_bytes(leaf.key_pem)
    body.write_bytes(bodies.encode(bodies.all_bodies()["target-4k"]))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(BENCH)])}
    servers = {name: (port, subprocess.Popen(
        ["taskset", "-c", "0", sys.executable, __file__, "--serve", str(port), flag, str(cert),
         str(key)], env=env, start_new_session=True, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)) for name, port, flag in (("stock", 19711, "0"),
                                                             ("bounded", 19712, "1"))}
    try:
        time.sleep(5)
        found: dict[str, list[float]] = {name: [] for name in servers}
        for _ in range(args.rounds):
            for name, (port, proc) in servers.items():
                found[name].append(cpu_per_request(proc.pid, port, body, args.duration))
        for name, values in found.items():
            print(f"{name:8} CPU µs/request: median {statistics.median(values):.0f}  "
                  f"({', '.join(f'{v:.0f}' for v in values)})")
    finally:
        for _, proc in servers.values():
            stop_group(proc, timeout=procs.STOP_GRACE_SECONDS)


if __name__ == "__main__":
    main()
