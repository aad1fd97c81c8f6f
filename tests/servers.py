"""Real processes for the server and runtime tests: the webhook server, TLS clients, process trees.

`WebhookServer` starts `concurrency-injector serve` on a free loopback port in its own process
group, with stderr in a file, and waits until /healthz answers over verified TLS. `Client` is
one HTTP/1.1 keep-alive connection that talks the way kube-apiserver does. The /proc helpers
count a server's worker processes. Every wait here is bounded in time.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import math
import os
import re
import resource
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from cryptography import x509
from kubernetes.utils import parse_quantity

from tests.podgen import container
from webhook.certificates.authority import KeyPair, build_ca, build_leaf

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
SERVER_NAMES = ["localhost", LOOPBACK]
START_TIMEOUT = 30.0
STOP_TIMEOUT = 25.0  # above the server's own graceful shutdown (20 s)
REQUEST_TIMEOUT = 10.0
API_VERSION = "admission.k8s.io/v1"
MUTATE_PATH = "/mutate?timeout=10s"
# Our own settings must not leak into a test process from the shell that runs pytest.
SCRUBBED_ENV = ("WEB_CONCURRENCY", "PROMETHEUS_MULTIPROC_DIR", "GUNICORN_CMD_ARGS",
                "PYTHON_CPU_COUNT", "CPU_LIMIT")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(check: Callable[[], bool], *, timeout: float, interval: float = 0.05) -> bool:
    """Poll `check` until it is true or `timeout` seconds pass; returns the last result."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in SCRUBBED_ENV and not k.startswith("CONCURRENCY_INJECTOR_")}
    # The package of this tree, whichever checkout the console script was installed from.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def stop_group(proc: subprocess.Popen[Any], *, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM the process group, then SIGKILL it if it outlives `timeout`."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    # Workers may outlive a master that died first: the group goes either way.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


# --- certificates -------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A test CA with one serving certificate for the loopback names, written to `directory`."""

    ca: KeyPair
    leaf: KeyPair
    ca_file: Path
    cert_file: Path
    key_file: Path

    @classmethod
    def create(cls, directory: Path, name: str = "webhook-test-ca") -> Pki:
        directory.mkdir(parents=True, exist_ok=True)
        ca = build_ca(name)
        leaf = build_leaf(ca, SERVER_NAMES)
        pki = cls(ca, leaf, directory / "ca.crt", directory / "tls.crt", directory / "tls.key")
        pki.ca_file.write_bytes(ca.cert_pem)
        pki.cert_file.write_bytes(leaf.cert_pem)
        pki.key_file.write_bytes(leaf.key_pem)
        pki.key_file.chmod(0o600)
        return pki

    @property
    def serial(self) -> int:
        return self.leaf.cert.serial_number


def client_context(*ca_pems: bytes, minimum: ssl.TLSVersion | None = None,
                   maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    """A client context that verifies the server against `ca_pems` and checks the hostname."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata="".join(p.decode() for p in ca_pems))
    if minimum is not None:
        ctx.minimum_version = minimum
    if maximum is not None:
        ctx.maximum_version = maximum
    return ctx


def peer_serial(sock: ssl.SSLSocket) -> int:
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


# --- HTTP ---------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def response(self) -> dict[str, Any]:
        """The AdmissionResponse of a 200 answer."""
        review = self.json()
        assert review["apiVersion"] == API_VERSION, review
        assert review["kind"] == "AdmissionReview", review
        response: dict[str, Any] = review["response"]
        return response

    def patch(self) -> list[dict[str, Any]] | None:
        encoded = self.response.get("patch")
        if encoded is None:
            return None
        ops: list[dict[str, Any]] = orjson.loads(base64.b64decode(encoded))
        return ops


class Client:
    """One keep-alive HTTPS connection, used the way kube-apiserver uses one to a webhook."""

    def __init__(self, port: int, ctx: ssl.SSLContext, *, timeout: float = REQUEST_TIMEOUT
                 ) -> None:
        # The certificate is checked for the address dialled (its IP SAN), as the API server
        # checks the host of a webhook's `url`.
        self.conn = http.client.HTTPSConnection(LOOPBACK, port, timeout=timeout, context=ctx)

    def connect(self) -> ssl.SSLSocket:
        """Open the connection now (handshake included) and return its socket."""
        self.conn.connect()
        return self.socket

    @property
    def socket(self) -> ssl.SSLSocket:
        sock = self.conn.sock
        assert isinstance(sock, ssl.SSLSocket), "not connected"
        return sock

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> Reply:
        self.conn.request(method, path, body=body, headers=dict(headers or {}))
        answer = self.conn.getresponse()
        data = answer.read()
        return Reply(answer.status, {k.lower(): v for k, v in answer.getheaders()}, data)

    def post(self, body: bytes, *, content_type: str = "application/json",
             path: str = MUTATE_PATH) -> Reply:
        return self.request("POST", path, body, {"Content-Type": content_type,
                                                 "Accept": "application/json"})

    def review(self, review: Mapping[str, Any]) -> Reply:
        return self.post(orjson.dumps(review))

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the webhook server ---------------------------------------------------------------------


def cli_command() -> list[str]:
    """The installed `concurrency-injector` console script (`python -m webhook` without one)."""
    script = Path(sys.executable).with_name("concurrency-injector")
    return [str(script)] if script.exists() else [sys.executable, "-m", "webhook"]


@dataclass
class WebhookServer:
    """`concurrency-injector serve` on a free loopback port, in its own process group.

    The one harness for a real server, in the tests and in hack/reliability.py: `workers` sets
    its WEB_CONCURRENCY, `nofile` its file limit, `ready_path` what it must answer before use.
    """

    pki: Pki
    log_file: Path
    env: dict[str, str] = field(default_factory=dict)
    workers: int = 1
    nofile: int | None = None
    ready_path: str = "/healthz"
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WebhookServer:
        for _attempt in range(3):  # a free port can be taken between probe and bind
            self.port = free_port()
            command = [*cli_command(), "serve", "--cert-file", str(self.pki.cert_file),
                       "--key-file", str(self.pki.key_file), "--host", LOOPBACK,
                       "--port", str(self.port), "--no-registry"]
            env = clean_env(**{"CONCURRENCY_INJECTOR_LOG_FORMAT": "json",
                               "WEB_CONCURRENCY": str(self.workers), **self.env})
            with self.log_file.open("ab") as log:
                self.proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                                             stdout=log, stderr=log, start_new_session=True,
                                             preexec_fn=self._limits if self.nofile else None)
            started = wait_until(self._serving, timeout=START_TIMEOUT, interval=0.1)
            if started and self.proc.poll() is None:
                return self
            self.stop()
            if "address already in use" not in self.log().lower():
                break
        raise RuntimeError(f"the webhook server did not start; its log:\n{self.log()}")

    def _limits(self) -> None:
        """In the child, before exec: the file limit the server is to run under."""
        if self.nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def _serving(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            return True  # exited: start() sees it is not healthy
        try:
            with self.client() as client:
                return client.get(self.ready_path).status == 200
        except (OSError, http.client.HTTPException):
            return False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self, *ca_pems: bytes, timeout: float = REQUEST_TIMEOUT) -> Client:
        """A new connection that trusts `ca_pems` (default: this server's test CA)."""
        return Client(self.port, client_context(*(ca_pems or (self.pki.ca.cert_pem,))),
                      timeout=timeout)

    def log(self, since: int = 0) -> str:
        try:
            with self.log_file.open("rb") as handle:
                handle.seek(since)
                return handle.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_file.stat().st_size
        except FileNotFoundError:
            return 0

    @property
    def context(self) -> ssl.SSLContext:
        """A client context that trusts this server's test CA."""
        return client_context(self.pki.ca.cert_pem)

    def connection(self, timeout: float = REQUEST_TIMEOUT) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(LOOPBACK, self.port, timeout=timeout,
                                           context=self.context)

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        """GET on a new connection: status and body."""
        conn = self.connection(timeout)
        try:
            conn.request("GET", path)
            answer = conn.getresponse()
            return answer.status, answer.read()
        finally:
            conn.close()

    def workers_pids(self) -> list[int]:
        """The processes that serve: the server itself, or with several workers, its workers."""
        return uvicorn_workers(self.pid) if self.workers > 1 else [self.pid]

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)

    def __enter__(self) -> WebhookServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        # Captured by pytest and shown only when the test fails.
        print(f"--- webhook server log ({self.log_file}) ---\n{self.log()}")


# --- reviews --------------------------------------------------------------------------------

POD_KIND = {"group": "", "version": "v1", "kind": "Pod"}
PODS = {"group": "", "version": "v1", "resource": "pods"}


def gunicorn_pod(*, name: str = "web", cpu: str | None = "2",
                 annotations: Mapping[str, str] | None = None,
                 command: list[str] | None = None) -> dict[str, Any]:
    """A Pod as a ReplicaSet controller creates it (no name yet), one container `web`."""
    main = container(name, command=command or ["gunicorn", "--bind", "0.0.0.0:8000", "app:app"],
                     cpu=cpu, memory="1Gi", image="python:3.12-slim")
    metadata: dict[str, Any] = {"generateName": "web-", "namespace": "default"}
    if annotations:
        metadata["annotations"] = dict(annotations)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
            "spec": {"containers": [main]}}


def admission_review(obj: Mapping[str, Any] | None, *, uid: str, operation: str = "CREATE",
                     kind: Mapping[str, str] = POD_KIND, resource: Mapping[str, str] = PODS,
                     sub_resource: str | None = None,
                     old: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """An AdmissionReview v1 request as kube-apiserver sends it."""
    request: dict[str, Any] = {
        "uid": uid,
        "kind": dict(kind),
        "resource": dict(resource),
        "requestKind": dict(kind),
        "requestResource": dict(resource),
        "operation": operation,
        "namespace": "default",
        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
        "object": dict(obj) if obj is not None else None,
        "oldObject": dict(old) if old is not None else None,
        "dryRun": False,
    }
    if sub_resource:
        request["subResource"] = sub_resource
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "request": request}


# --- process trees ----------------------------------------------------------------------------


def parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in parentheses may hold spaces: the fields after it are fixed.
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def children(pid: int) -> list[int]:
    """Live child processes of `pid`, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and parent_of(int(entry.name)) == pid:
            found.append(int(entry.name))
    return sorted(found)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def uvicorn_workers(pid: int) -> list[int]:
    """uvicorn's worker processes: the multiprocessing children of `pid` that run the app
    (its other child is multiprocessing's resource tracker)."""
    return [child for child in children(pid) if "spawn_main" in cmdline(child)]


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {k.decode(): v.decode() for k, _, v in pairs}


@contextlib.contextmanager
def process_group(command: list[str], *, env: Mapping[str, str], cwd: Path,
                  log_file: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run `command` in its own process group; the group is always killed on exit."""
    with log_file.open("ab") as log:
        proc = subprocess.Popen(command, env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, start_new_session=True)
    try:
        yield proc
    finally:
        stop_group(proc, timeout=10)
        print(f"--- {command[0]} log ({log_file}) ---\n{log_file.read_text(errors='replace')}")


# --- the command line, the kubelet and the runtimes ----------------------------------------


def mutate(pod: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """The pod as `concurrency-injector mutate -o json` returns it."""
    source = tmp_path / "pod.json"
    source.write_bytes(orjson.dumps(pod))
    done = subprocess.run([*cli_command(), "mutate", "-f", str(source), "-o", "json",
                           "--no-registry"], env=clean_env(), capture_output=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr.decode()
    mutated: dict[str, Any] = orjson.loads(done.stdout)
    return mutated


def _quantity(value: str) -> Decimal:
    return Decimal(parse_quantity(value))  # type: ignore[no-untyped-call]


def kubelet_env(pod: dict[str, Any], container_name: str) -> dict[str, str]:
    """A container's env as the kubelet gives it: `value`s, and limits via `resourceFieldRef`."""
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    env: dict[str, str] = {}
    for entry in containers[container_name].get("env") or []:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
            continue
        ref = entry["valueFrom"]["resourceFieldRef"]
        owner = containers[ref.get("containerName") or container_name]
        section, name = ref["resource"].split(".")
        limit = _quantity(owner["resources"][section][name])
        env[entry["name"]] = str(math.ceil(limit / _quantity(ref.get("divisor") or "1")))
    return env


def fetch(port: int) -> tuple[int, bytes]:
    """GET / on a new connection: status and body."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    try:
        conn.request("GET", "/")
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def answers(port: int, body: bytes | None = None) -> bool:
    """The server at `port` answers GET / with 200 (and `body`, when given)."""
    try:
        status, data = fetch(port)
    except (OSError, http.client.HTTPException):
        return False
    return status == 200 and (body is None or data == body)


def answers_healthz(port: int, ca: bytes) -> bool:
    """True once a server on the loopback port answers GET /healthz with 200 over TLS."""
    try:
        with Client(port, client_context(ca)) as client:
            return client.get("/healthz").status == 200
    except OSError:
        return False


@dataclass(frozen=True)
class DevServer:
    """A running `serve --dev`, with what it printed (files under `tmp_path`)."""

    proc: subprocess.Popen[bytes]
    port: int
    out: Path
    err: Path

    @property
    def printed(self) -> str:
        return self.out.read_text()

    def printed_path(self, label: str) -> Path:
        found = re.search(rf"{label}:\s+(\S+)", self.printed)
        assert found, f"no {label!r} in:\n{self.printed}"
        return Path(found[1])


@contextlib.contextmanager
def dev_server(tmp_path: Path) -> Iterator[DevServer]:
    """`concurrency-injector serve --dev` on a free port, once it has printed how to call it and
    answers /healthz; its process group is stopped on the way out."""
    port = free_port()
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen([*cli_command(), "serve", "--dev", "--port", str(port)],
                                env=clean_env(), stdin=subprocess.DEVNULL, stdout=stdout,
                                stderr=stderr, start_new_session=True)
    try:
        server = DevServer(proc, port, out, err)
        assert wait_until(lambda: "Metrics:" in out.read_text(), timeout=30), err.read_text()
        ca = server.printed_path("CA certificate").read_bytes()
        assert wait_until(lambda: answers_healthz(port, ca), timeout=30, interval=0.1), (
            err.read_text())
        yield server
    finally:
        stop_group(proc)
