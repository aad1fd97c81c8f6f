"""The lab's two small real apps: a WSGI one for gunicorn and an ASGI one for uvicorn.

Endpoints (the same on both):
- `/cpu`: a fixed amount of pure-Python work (CPU_ITERATIONS, about 5 ms on the machine the
  results come from), holding the GIL throughout, as template rendering or serialisation does;
- `/mixed`: a wait for MIXED_WAIT_SECONDS (a stand-in for a database or an upstream call: the
  GIL is released and no CPU is used), then MIXED_ITERATIONS of the same work (about 2 ms);
- `/ping`: nothing, for the readiness check.

When THROTTLE_LAB_READY_DIR is set, every process that imports this module (each gunicorn or
uvicorn worker, which load the app after they start) creates a file named after its pid there,
so the lab can tell when all workers are up.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any

CPU_ITERATIONS = 50_000
MIXED_WAIT_SECONDS = 0.020
MIXED_ITERATIONS = 20_000
READY_DIR_ENV = "THROTTLE_LAB_READY_DIR"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
StartResponse = Callable[[str, list[tuple[str, str]]], object]


def burn(iterations: int) -> int:
    """Pure-Python work whose cost depends only on `iterations`."""
    x = 0
    for i in range(iterations):
        x = (x * 31 + i) % 1_000_003
    return x


def _answer(value: int) -> bytes:
    return f"{value}\n".encode()


def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """The WSGI app (gunicorn `apps:application`)."""
    path = environ.get("PATH_INFO", "")
    if path == "/cpu":
        body = _answer(burn(CPU_ITERATIONS))
    elif path == "/mixed":
        time.sleep(MIXED_WAIT_SECONDS)
        body = _answer(burn(MIXED_ITERATIONS))
    elif path == "/ping":
        body = b"ok\n"
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain"),
                                         ("Content-Length", "0")])
        return [b""]
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI app (uvicorn `apps:app`). The CPU work runs on the event loop, as a plain
    `async def` handler that renders or serialises does."""
    if scope["type"] != "http":
        return
    path = scope.get("path", "")
    status = 200
    if path == "/cpu":
        body = _answer(burn(CPU_ITERATIONS))
    elif path == "/mixed":
        await asyncio.sleep(MIXED_WAIT_SECONDS)
        body = _answer(burn(MIXED_ITERATIONS))
    elif path == "/ping":
        body = b"ok\n"
    else:
        status, body = 404, b""
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _mark_ready() -> None:
    ready_dir = os.environ.get(READY_DIR_ENV)
    if ready_dir:
        (Path(ready_dir) / str(os.getpid())).touch()


_mark_ready()
