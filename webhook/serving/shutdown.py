"""Shutdown in two steps, each bounded in time: drain, then stop.

On SIGTERM a worker first drains for `drain_seconds`: /readyz answers 503, every response
carries `Connection: close` (kube-apiserver then dials again, through the Service, and lands on
a replica that is not going away), and connections are still accepted and served, one request
each. Then uvicorn's own shutdown runs: it stops accepting, closes idle connections, lets the
reviews in flight finish (at most `shutdown_timeout`) and the worker exits. A second SIGTERM
changes nothing (with several workers, uvicorn's supervisor sends its own after ours); SIGINT
is uvicorn's as before and stops at once.

The chart's preStop sleep runs before the SIGTERM, so the endpoint is usually gone by then; the
drain covers the API servers that have not seen that yet.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from types import FrameType
from typing import Any

from webhook import logs
from webhook.serving.state import Shutdown

log = logs.get("server")


def install_drain(state: Shutdown, delay: float) -> bool:
    """Put a drain of `delay` seconds in front of the running server's SIGTERM handler.

    Called from the app's lifespan, where uvicorn's own handler is in place (it saved the one
    before it and restores that one when it exits). False when there is none to wrap: not the
    main thread, or no server running (an app in a test client).
    """
    previous: Any = signal.getsignal(signal.SIGTERM)
    if not callable(previous) or threading.current_thread() is not threading.main_thread():
        return False
    loop = asyncio.get_running_loop()

    def stop(sig: int, frame: FrameType | None) -> None:
        if not state.stopping:
            state.stopping = True
            log.info("drain over; stopping")
            previous(sig, frame)

    def on_sigterm(sig: int, frame: FrameType | None) -> None:
        if state.draining:
            return
        state.draining = True
        log.info("SIGTERM: draining", extra={"seconds": delay})
        loop.call_soon_threadsafe(loop.call_later, delay, stop, sig, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
    return True
