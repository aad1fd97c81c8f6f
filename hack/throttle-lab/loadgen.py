"""Closed-loop HTTP load from outside the server's cgroup: N connections, each sending one GET
at a time, with an optional random think time between requests. Prints one JSON line.

A client thinks *before* it connects: a server that closes every connection (gunicorn's sync
worker) is then never handed an idle connection to block on, as it would be if the client
connected first and thought afterwards (wrk's `delay()` does that). Connections are kept alive
where the server allows it. Latency runs from the moment a request is due (connect included)
to the last byte of the answer. Only 127.0.0.1 is ever the target; the run stops by itself
after `--duration` seconds, abandoning what is still in flight (counted as `unfinished`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import time
from dataclasses import dataclass, field

HOST = "127.0.0.1"
HEAD_LIMIT = 64 * 1024


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    non2xx: int = 0
    errors: int = 0
    timeouts: int = 0
    in_flight: int = 0


async def _response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one HTTP/1.1 answer; (status, keep the connection)."""
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > HEAD_LIMIT:
        raise ValueError("response head too large")
    lines = head.decode("latin-1").split("\r\n")
    version, status = lines[0].split(" ", 2)[:2]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    length = int(headers.get("content-length", "0"))
    if length:
        await reader.readexactly(length)
    keep = version == "HTTP/1.1" and headers.get("connection") != "close"
    return int(status), keep


async def _client(port: int, path: str, *, think_s: float, timeout: float, seed: int,
                  tally: Tally) -> None:
    rng = random.Random(seed)
    request = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    try:
        while True:
            if think_s > 0:
                await asyncio.sleep(rng.expovariate(1 / think_s))
            began = time.perf_counter()
            tally.in_flight += 1
            try:
                async with asyncio.timeout(timeout):
                    if writer is None:
                        reader, writer = await asyncio.open_connection(HOST, port)
                    assert reader is not None
                    writer.write(request)
                    status, keep = await _response(reader)
            except TimeoutError:
                tally.timeouts += 1
                keep = False
            except (OSError, ValueError, asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError):
                tally.errors += 1
                keep = False
            else:
                tally.latencies.append(time.perf_counter() - began)
                if not 200 <= status < 300:
                    tally.non2xx += 1
            finally:
                tally.in_flight -= 1
            if not keep and writer is not None:
                writer.close()
                writer = reader = None
    finally:
        if writer is not None:
            writer.close()


def _percentile(ordered: list[float], pct: float) -> float:
    if not ordered:
        return 0.0
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


async def run(port: int, path: str, *, connections: int, duration: float, think_ms: float,
              timeout: float, seed: int) -> dict[str, float | int]:
    tally = Tally()
    cpu_before = time.process_time()
    began = time.perf_counter()
    tasks = [asyncio.create_task(_client(port, path, think_s=think_ms / 1000, timeout=timeout,
                                         seed=seed + i, tally=tally))
             for i in range(connections)]
    await asyncio.sleep(duration)
    unfinished = tally.in_flight
    done = list(tally.latencies)
    elapsed = time.perf_counter() - began
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    ordered = sorted(done)
    return {
        "requests": len(ordered), "duration_s": elapsed,
        "p50_ms": _percentile(ordered, 50) * 1000, "p90_ms": _percentile(ordered, 90) * 1000,
        "p99_ms": _percentile(ordered, 99) * 1000,
        "max_ms": (ordered[-1] if ordered else 0.0) * 1000,
        "mean_ms": (sum(ordered) / len(ordered) if ordered else 0.0) * 1000,
        "non2xx": tally.non2xx, "errors": tally.errors, "timeouts": tally.timeouts,
        "unfinished": unfinished, "client_cpu_s": time.process_time() - cpu_before,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--think-ms", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop  # the client's own overhead is smaller on it (installed with uvicorn)

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    result = asyncio.run(run(args.port, args.path, connections=args.connections,
                        duration=args.duration, think_ms=args.think_ms, timeout=args.timeout,
                        seed=args.seed))
    print("LAB_JSON " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
