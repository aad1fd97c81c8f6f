"""Runs the app on uvicorn over TLS, with its own worker count from its own CPU limit."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import orjson
import uvicorn
from uvicorn.supervisors.multiprocess import Multiprocess

from webhook import logs, wiring
from webhook.config import ConfigError, Settings, env_name
from webhook.exitcodes import EXIT_ENVIRONMENT, EXIT_INPUT, EXIT_OK
from webhook.serving import tls
from webhook.serving.protocol import BoundedHttpToolsProtocol

# uvicorn's exit status for a failed start (uvicorn.config.STARTUP_FAILURE in newer releases; the
# lowest uvicorn this package allows has no such name).
STARTUP_FAILURE = 3

# kube-apiserver keeps idle connections to webhooks for 90 s; a server that closes them sooner
# makes it send reviews on dead connections.
KEEP_ALIVE_SECONDS = 120
DEV_NAMES = ["localhost", "127.0.0.1", "::1"]

log = logs.get("server")


def own_workers(environ: MutableMapping[str, str]) -> int:
    """The server's own worker count: its WEB_CONCURRENCY (set by the chart from its CPU limit)."""
    raw = environ.get("WEB_CONCURRENCY", "1").strip() or "1"
    try:
        workers = int(raw)
    except ValueError:
        raise ConfigError(f"WEB_CONCURRENCY={raw!r}: expected a whole number") from None
    if workers < 1:
        raise ConfigError(f"WEB_CONCURRENCY={raw!r}: expected at least 1")
    return workers


def serve(settings: Settings, environ: MutableMapping[str, str] | None = None) -> int:
    """Serve until stopped; a start-up problem is one log line and exit 2 (input) or 3."""
    environ = os.environ if environ is None else environ
    logs.setup(settings.log_level, settings.log_format)
    if not settings.cert_file or not settings.key_file:
        log.error(
            f"serving needs --cert-file and --key-file ({env_name('cert_file')}, "
            f"{env_name('key_file')}); try `serve --dev` to run without a cluster"
        )
        return EXIT_INPUT
    try:
        workers = own_workers(environ)
    except ConfigError as exc:
        log.error(str(exc))
        return EXIT_INPUT
    problem = wiring.in_cluster_problem(settings)
    if problem:
        log.error(problem)
        # A kubeconfig the user named is input; no service account means not in a cluster.
        return EXIT_INPUT if settings.kubeconfig else EXIT_ENVIRONMENT
    if settings.tls_self_managed:
        failed = prepare_self_managed(settings)
        if failed is not None:
            log.error(failed.message)
            return failed.exit_code
    problem = tls.pair_problem(settings.cert_file, settings.key_file)
    if problem:
        log.error(problem)
        return EXIT_INPUT
    problem = bind_problem(settings.host, settings.port)
    if problem:
        log.error(problem)
        return EXIT_ENVIRONMENT
    metrics_dir = None
    if workers > 1 and not environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Each worker is its own process: share metrics so one scrape sees them all.
        metrics_dir = tempfile.mkdtemp(prefix="concurrency-injector-metrics-")
        environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    log.info(
        "serving",
        extra={
            "host": settings.host,
            "port": settings.port,
            "workers": workers,
            "mode": settings.mode,
        },
    )
    try:
        _run(settings, settings.cert_file, settings.key_file, workers=workers)
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def bind_problem(host: str, port: int) -> str | None:
    """Why the server could not listen on host:port (a port in use, say), or None.

    Tried once before start-up, as uvicorn binds (SO_REUSEADDR), so the failure is one line
    and exit 3 whether one worker or a supervisor would have bound it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def _run(settings: Settings, cert_file: str, key_file: str, *, workers: int) -> None:
    """uvicorn.run's two ways of serving, with SIGTERM passed on to workers at once."""
    from webhook.serving.app import WorkerApp  # the app's libraries, only when serving

    worker = WorkerApp(tls.ReloadingContext(cert_file, key_file))
    config = uvicorn.Config(
        worker,
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=workers,
        ssl_context_factory=worker.ssl_context,
        # httptools with the bounds it lacks (webhook/serving/protocol.py); no websockets, nothing
        # here upgrades.
        http=BoundedHttpToolsProtocol,
        ws="none",
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        # After the drain (webhook/serving/shutdown.py), the most that reviews in flight may take.
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout),
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        lifespan="on",
    )
    if workers == 1:
        server = uvicorn.Server(config)
        server.run()
        if not server.started:
            raise SystemExit(STARTUP_FAILURE)
        return
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    _forward_sigterm(supervisor)
    supervisor.run()


def _forward_sigterm(supervisor: Multiprocess) -> None:
    """Send SIGTERM on to the workers when it arrives, not at the supervisor's next tick.

    uvicorn's supervisor queues signals and reads the queue every half second, so its workers
    would keep serving as ready, with keep-alive, for up to that long; each worker starts its
    drain (webhook/serving/shutdown.py) on the first SIGTERM and ignores the supervisor's own
    later one.
    """
    queue_signal = signal.getsignal(signal.SIGTERM)

    def forward(sig: int, frame: FrameType | None) -> None:
        for process in supervisor.processes:
            if process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        if callable(queue_signal):
            queue_signal(sig, frame)

    signal.signal(signal.SIGTERM, forward)


@dataclass(frozen=True)
class StartFailure:
    message: str
    exit_code: int


def prepare_self_managed(settings: Settings) -> StartFailure | None:
    """Self-managed TLS: sync the Secret and caBundle and write the serving pair before binding.

    An API error here stops start-up (the pod restarts) rather than serving a certificate the
    API server does not trust; after start-up each worker keeps it current (see app lifespan).
    A missing setting is bad input; a refusal or an unreachable API server is the environment.
    """
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    from webhook.certificates import selfmanaged

    try:
        target = selfmanaged.Target.from_settings(settings)
    except ValueError as exc:
        return StartFailure(str(exc), EXIT_INPUT)
    where = (
        f"Secret {target.namespace}/{target.secret_name}, "
        f"MutatingWebhookConfiguration {target.webhook_config}"
    )
    try:
        core, admission = selfmanaged.in_cluster_apis(settings.kubeconfig)
        selfmanaged.ensure_certificates(core, admission, target=target)
    except ApiException as exc:
        return StartFailure(
            f"self-managed TLS ({where}): the API server answered HTTP {exc.status} {exc.reason}",
            EXIT_ENVIRONMENT,
        )
    except HTTPError as exc:  # refused, DNS, TLS, timeouts
        return StartFailure(
            f"self-managed TLS ({where}): cannot reach the API server: {logs.brief(exc)}",
            EXIT_ENVIRONMENT,
        )
    except OSError as exc:  # the serving pair could not be written
        return StartFailure(f"self-managed TLS ({where}): {logs.brief(exc)}", EXIT_ENVIRONMENT)
    return None


EXAMPLE_REVIEW = {
    "apiVersion": "admission.k8s.io/v1",
    "kind": "AdmissionReview",
    "request": {
        "uid": "0e9c5b2e-5c1d-4d1e-9a8f-000000000001",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "operation": "CREATE",
        "namespace": "default",
        "object": {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"generateName": "web-", "namespace": "default"},
            "spec": {
                "containers": [
                    {
                        "name": "web",
                        "image": "python:3.12-slim",
                        "command": ["gunicorn", "--bind", "0.0.0.0:8000", "app:app"],
                        "resources": {"limits": {"cpu": "2", "memory": "1Gi"}},
                    }
                ]
            },
        },
    },
}


def prepare_dev(args: argparse.Namespace, environ: MutableMapping[str, str]) -> Path:
    """`serve --dev`: a throwaway CA and certificate, loopback, no registry, and how to call it.

    The files are removed when the process ends: on a normal exit, SIGINT or SIGTERM (each
    ends it as a normal exit, once uvicorn has shut down).
    """
    files = tls.write_dev_certificates(DEV_NAMES)
    atexit.register(shutil.rmtree, files.directory, ignore_errors=True)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _exit_on_signal)
    args.cert_file, args.key_file = str(files.cert_file), str(files.key_file)
    args.host = args.host or "127.0.0.1"
    args.log_format = args.log_format or "text"
    if args.no_registry is None and not args.insecure_registry:
        args.no_registry = True
    port = args.port or 8443
    review_file = Path(files.directory) / "review.json"
    review_file.write_bytes(orjson.dumps(EXAMPLE_REVIEW, option=orjson.OPT_INDENT_2))
    host = "localhost" if args.host in ("127.0.0.1", "0.0.0.0", "localhost") else args.host
    print(
        "concurrency-injector dev server\n"
        f"  listens on:      {args.host}:{port}"
        f"{' (loopback only)' if args.host in DEV_LOOPBACK else ' (not loopback: --host)'}\n"
        f"  registry:        {_dev_registry(args)}\n"
        f"  CA certificate:  {files.ca_file}\n"
        f"  example review:  {review_file}\n"
        f"  (this directory is removed when the server stops)\n"
        "Call it the way kube-apiserver does:\n"
        f"  curl --cacert {files.ca_file} -H 'Content-Type: application/json' \\\n"
        f"       --data @{review_file} 'https://{host}:{port}/mutate?timeout=10s'\n"
        "Decode the patch:\n"
        f"  curl -s --cacert {files.ca_file} -H 'Content-Type: application/json' "
        f"--data @{review_file} 'https://{host}:{port}/mutate' \\\n"
        "       | python3 -c 'import sys,json,base64; "
        'print(base64.b64decode(json.load(sys.stdin)["response"]["patch"]).decode())\'\n'
        f"Metrics: curl --cacert {files.ca_file} https://{host}:{port}/metrics\n",
        flush=True,
    )
    return files.directory


DEV_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _dev_registry(args: argparse.Namespace) -> str:
    if args.no_registry:
        return "lookups off (--insecure-registry HOST:PORT turns them on)"
    return "lookups on (--insecure-registry or --no-registry=false given)"


def _exit_on_signal(sig: int, frame: FrameType | None) -> None:
    """A normal exit (atexit handlers run), once uvicorn re-raises the signal it shut down on."""
    sys.exit(EXIT_OK)
