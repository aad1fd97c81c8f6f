"""The HTTP app: `POST /mutate` on a lean ASGI path, health and metrics on FastAPI.

Every Pod creation waits on /mutate, so it skips the framework's routing and middleware and
speaks ASGI directly (bytes in, orjson out); everything else is an ordinary FastAPI app.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import re
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client import multiprocess as prom_multiprocess

from webhook import logs, metrics, wiring
from webhook.admission.handler import AdmissionHandler
from webhook.admission.review import ReviewError
from webhook.admission.types import EnvSourceReader, ImageResolver
from webhook.config import Settings
from webhook.serving import shutdown, tls
from webhook.serving.state import Bounds, CertificateSource, ServingState

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json")]
GO_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)$")
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0}
# Leave the API server this much of its own timeout to receive and apply our answer.
TIMEOUT_MARGIN = 0.5
MIN_BUDGET = 0.05

log = logs.get("admission")


class HTTPError(Exception):
    """A request we refuse, with its status code (4xx only: never 5xx for bad input)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def request_budget(settings: Settings, query: bytes) -> float:
    """Seconds the lookups may take: the registry budget, inside the API server's `?timeout=`."""
    budget = settings.registry_timeout
    for part in query.decode("latin-1").split("&"):
        name, _, value = part.partition("=")
        match = GO_DURATION.match(value) if name == "timeout" else None
        if match:
            allowed = float(match[1]) * DURATION_UNITS[match[2]] - TIMEOUT_MARGIN
            budget = min(budget, max(MIN_BUDGET, allowed))
    return budget


class Webhook:
    """The ASGI application: /mutate here, everything else to the FastAPI app.

    /mutate only moves bytes: the body in, the handler's answer out (webhook/admission/handler.py);
    a review that is the caller's fault is a 4xx here, the one place errors become HTTP codes.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        resolver: ImageResolver | None = None,
        env_reader: EnvSourceReader | None = None,
        serving: ServingState | None = None,
    ) -> None:
        self.settings = settings
        self.handler = AdmissionHandler(settings, resolver=resolver, env_reader=env_reader)
        # Certificates, shutdown and connection bounds: /readyz and the protocol ask this.
        self.serving = serving or ServingState(bounds=Bounds.from_settings(settings))
        self.api = build_api(self)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/mutate":
            await self.mutate_endpoint(scope, receive, send)
        else:
            await self.api(scope, receive, send)

    async def mutate_endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        try:
            body = await self._read_body(scope, receive)
            # The API server's `?timeout=` bounds the lookups, when there are any to make.
            query = scope.get("query_string", b"") if self.handler.makes_lookups else b""
            budget = request_budget(self.settings, query) if query else None
            answer = await self.handler.handle_body(body, budget=budget)
        except (HTTPError, ReviewError) as exc:  # the caller's fault: 4xx (ours fail open)
            status = exc.status if isinstance(exc, HTTPError) else 400
            metrics.child(metrics.REQUESTS, "invalid").inc()
            log.info("rejected review", extra={"status": status, "error": str(exc)})
            await _send(send, status, {"error": str(exc)})
            return
        metrics.child(metrics.REQUESTS, answer.outcome).inc()
        metrics.LATENCY.observe(time.perf_counter() - started)
        await _send(send, 200, answer.review())

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        if scope["method"] != "POST":
            raise HTTPError(405, "only POST is allowed on /mutate")
        limit = self.settings.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                raise HTTPError(413, f"body over {limit} bytes")
            if name == b"content-type" and b"json" not in value.lower():
                raise HTTPError(415, "content-type must be application/json")
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise HTTPError(400, "client disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise HTTPError(413, f"body over {limit} bytes")
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)


async def _send(send: Send, status: int, payload: Any) -> None:
    body = orjson.dumps(payload)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*JSON_HEADERS, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def build_api(webhook: Webhook) -> FastAPI:
    """Health, readiness and metrics; their lifespan runs the certificate watcher."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        shutdown.install_drain(webhook.serving.shutdown, webhook.settings.drain_seconds)
        watch = _watch_certificates(webhook.serving, webhook.settings.cert_reload_seconds)
        tasks = [asyncio.create_task(watch)]
        if webhook.settings.tls_self_managed:
            tasks.append(asyncio.create_task(_self_managed_tls(webhook.settings, stop)))
        try:
            yield
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await webhook.handler.aclose()

    api = FastAPI(
        title="concurrency-injector",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )

    @api.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @api.get("/readyz")
    async def readyz() -> JSONResponse:
        status, ready = webhook.serving.readiness()
        return JSONResponse({"status": status}, 200 if ready else 503)

    @api.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(_metrics_text(), media_type=CONTENT_TYPE_LATEST)

    return api


def _metrics_text() -> bytes:
    """This process's metrics, or all workers' when running several (prometheus multiprocess)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        prom_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest()


async def _watch_certificates(serving: ServingState, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        for source in serving.certificates:
            source.reload_if_changed()


async def _self_managed_tls(settings: Settings, stop: asyncio.Event) -> None:
    """Keep the self-managed certificate renewed and the caBundle current (in-cluster only)."""
    from webhook.certificates import selfmanaged

    await selfmanaged.run_self_managed(selfmanaged.Target.from_settings(settings), stop)


def create_app(certificates: Sequence[CertificateSource] = ()) -> Webhook:
    """One worker's app, built from the environment (each worker builds its own)."""
    settings = Settings.from_env()
    logs.setup(settings.log_level, settings.log_format)
    serving = ServingState(list(certificates), bounds=Bounds.from_settings(settings))
    app = Webhook(
        settings,
        resolver=wiring.resolver(settings),
        env_reader=wiring.env_reader(settings),
        serving=serving,
    )
    # The libraries' objects live as long as the process: keep full collections from walking
    # them again and again (a pause of tens of milliseconds in the middle of a review).
    gc.collect()
    gc.freeze()
    return app


@dataclass
class WorkerApp:
    """What uvicorn builds each worker from: the app and its TLS context, from one object.

    Picklable (the supervisor hands it to every worker process). In a worker, uvicorn first
    calls `ssl_context`, then the object itself for the app, so the app is built with the very
    certificate source that serves: /readyz asks it and the watcher reloads it.
    """

    certificates: tls.ReloadingContext

    def ssl_context(self, config: object, default: object) -> ssl.SSLContext:
        return self.certificates.build()

    def __call__(self) -> Webhook:
        return create_app([self.certificates])
