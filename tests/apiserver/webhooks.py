"""Webhook processes for the scenarios: `concurrency-injector serve` as the chart runs it, and a
tiny second webhook for reinvocation.

`chart_env` turns the chart's rendered Deployment into the server's environment, so the process
on the host runs with the settings the chart gives the pod; only what a host cannot have (the
pod's files, its service account mount, its address) is replaced.
"""

from __future__ import annotations

import base64
import copy
import json
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from tests.apiserver.cluster import Doc, environ_without_ours, https_get, wait_for
from tests.servers import stop_group
from webhook.certificates.authority import KeyPair, build_ca, build_leaf

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0


def one(docs: list[Doc], kind: str) -> Doc:
    found = [d for d in docs if d.get("kind") == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects rendered"
    return found[0]


def chart_env(docs: list[Doc], namespace: str) -> dict[str, str]:
    """The webhook container's env from the rendered Deployment, downward API resolved.

    `metadata.namespace` is the release namespace; resource fields (CPU_LIMIT) are left out:
    only the kubelet resolves those.
    """
    deployment = one(docs, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
        elif entry.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[entry["name"]] = namespace
    assert container.get("args") == ["serve"], container.get("args")
    return env


def token_kubeconfig(admin_kubeconfig: Path, token: str, path: Path) -> Path:
    """The admin kubeconfig's cluster with a bearer token instead of the admin credential."""
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])
    cluster = next(c for c in admin["clusters"] if c["name"] == context["context"]["cluster"])
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "users": [{"name": "sa", "user": {"token": token}}],
                "contexts": [{"name": "sa", "context": {"cluster": cluster["name"], "user": "sa"}}],
                "current-context": "sa",
            }
        )
    )
    path.chmod(0o600)
    return path


@dataclass
class Serve:
    """One `concurrency-injector serve` process on the host."""

    process: subprocess.Popen[bytes]
    address: str
    port: int
    server_name: str
    log: Path
    ca: bytes = b""

    def get(self, path: str) -> tuple[bytes, bytes]:
        return https_get(self.address, self.port, path, ca=self.ca, server_name=self.server_name)

    def metrics(self) -> str:
        return self.get("/metrics")[0].decode()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        stop_group(self.process, timeout=30)


def start_serve(
    env: dict[str, str], *, address: str, port: int, server_name: str, log: Path
) -> Serve:
    """Start serve with `env` (CONCURRENCY_INJECTOR_* and WEB_CONCURRENCY) in its own group."""
    full = environ_without_ours()
    full.update(env)
    full["CONCURRENCY_INJECTOR_HOST"] = address
    full["CONCURRENCY_INJECTOR_PORT"] = str(port)
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "webhook", "serve"],
            cwd=ROOT,
            env=full,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Serve(process, address, port, server_name, log)


def wait_healthy(serve: Serve, *, timeout: float = START_TIMEOUT) -> None:
    def healthy() -> bool:
        if not serve.alive():
            raise AssertionError(f"serve exited {serve.process.returncode}:\n{serve.log_text()}")
        try:
            serve.get("/healthz")
        except (OSError, AssertionError):
            return False
        return True

    wait_for(healthy, timeout=timeout, what=f"serve on {serve.address}:{serve.port}")


def static_pair(names: list[str], directory: Path) -> tuple[KeyPair, Path, Path]:
    """A CA and a serving pair for `names`, written to `directory`: (CA, cert file, key file)."""
    ca = build_ca()
    leaf = build_leaf(ca, names)
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "tls.crt", directory / "tls.key"
    cert.write_bytes(leaf.cert_pem)
    key.write_bytes(leaf.key_pem)
    key.chmod(0o600)
    return ca, cert, key


def config_copy(
    chart_config: Doc, *, name: str, url: str, ca: bytes, namespace_labels: dict[str, str]
) -> Doc:
    """The chart's MutatingWebhookConfiguration, renamed, calling `url`, for other namespaces.

    Everything else (rules, matchConditions, failurePolicy, timeout, reinvocation, object
    selector) stays as the chart renders it.
    """
    copied = copy.deepcopy(chart_config)
    copied["metadata"] = {"name": name}
    for webhook in copied["webhooks"]:
        # Its own webhook name, so the API server's metrics tell it from the chart's.
        webhook["name"] = f"{name}.{webhook['name']}"
        webhook["clientConfig"] = {
            "url": url,
            "caBundle": base64.b64encode(ca).decode("ascii"),
        }
        webhook["namespaceSelector"] = {"matchLabels": namespace_labels}
    return copied


# --- a tiny second webhook ----------------------------------------------------------------


@dataclass
class Sidecar:
    """What the second webhook adds: a container (unless present) and an env var to the first."""

    container: Doc
    env: Doc


@contextmanager
def sidecar_webhook(sidecar: Sidecar, *, address: str, directory: Path) -> Iterator[tuple[int, bytes]]:
    """A mutating webhook that adds `sidecar` to every pod; yields (port, CA PEM)."""
    ca, cert, key = static_pair([address], directory)
    calls: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            pod = review["request"]["object"]
            patch: list[Doc] = []
            names = [c["name"] for c in pod["spec"]["containers"]]
            if sidecar.container["name"] not in names:
                patch.append({"op": "add", "path": "/spec/containers/-", "value": sidecar.container})
            first = pod["spec"]["containers"][0]
            if not any(e["name"] == sidecar.env["name"] for e in first.get("env") or []):
                if first.get("env"):
                    patch.append({"op": "add", "path": "/spec/containers/0/env/-", "value": sidecar.env})
                else:
                    patch.append({"op": "add", "path": "/spec/containers/0/env", "value": [sidecar.env]})
            calls.append(len(patch))
            response: Doc = {"uid": review["request"]["uid"], "allowed": True}
            if patch:
                response["patchType"] = "JSONPatch"
                response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
            body = json.dumps(
                {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((address, 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], ca.cert_pem
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextmanager
def black_hole(address: str) -> Iterator[int]:
    """A port that accepts connections and never answers (a hung webhook); yields the port."""
    import socket

    listener = socket.socket()
    listener.bind((address, 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        listener.close()
