"""What the scenarios use to talk to a cluster: kubectl, the official client, metrics, waits.

Nothing here knows how the cluster was made: `Cluster` takes a kubeconfig, so the same scenario
code runs against the local control plane of `hack/kube/control-plane.sh` or any other cluster.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

ENABLED_LABEL = "concurrency-injector.io/enabled"
STATUS_ANNOTATION = "concurrency-injector.io/status"
OUR_ENV = ("WEB_CONCURRENCY", "CPU_LIMIT", "PYTHON_CPU_COUNT")
WAIT = 60.0

Doc = dict[str, Any]


def wait_for(check: Callable[[], Any], *, timeout: float = WAIT, what: str = "") -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or check}")
        time.sleep(0.2)


@dataclass
class Cluster:
    """A cluster given by a kubeconfig (admin credentials) and the kubectl to use on it."""

    kubeconfig: Path
    kubectl_bin: Path
    # The official client, as untyped objects: the scenarios read what the API server stored.
    api: Any = field(init=False)

    def __post_init__(self) -> None:
        self.api = config.new_client_from_config(config_file=str(self.kubeconfig))  # type: ignore[no-untyped-call]

    @property
    def core(self) -> Any:
        return client.CoreV1Api(self.api)

    @property
    def admission(self) -> Any:
        return client.AdmissionregistrationV1Api(self.api)

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """kubectl as a user runs it; `check` fails the test with its stderr."""
        done = subprocess.run(
            [str(self.kubectl_bin), "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {done.stderr}")
        return done

    def apply(
        self, docs: Iterable[Doc], *extra: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.kubectl(
            "apply", "-f", "-", *extra, stdin=yaml.safe_dump_all(list(docs)), check=check
        )

    def namespace(self, *, labels: dict[str, str] | None = None, prefix: str = "ci") -> str:
        """A new namespace with `labels`; the namespace controller removes it with its pods."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        body = {"metadata": {"name": name, "labels": labels or {}}}
        self.core.create_namespace(body)
        # Pods need the namespace's default ServiceAccount, made by the controller manager.
        wait_for(
            lambda: _exists(lambda: self.core.read_namespaced_service_account("default", name)),
            what=f"ServiceAccount default in {name}",
        )
        return name

    def pods(self, namespace: str, selector: str = "") -> list[Doc]:
        """Pods as stored, in their JSON form (camelCase), as kubectl shows them."""
        out = self.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json")
        items: list[Doc] = json.loads(out.stdout)["items"]
        return items

    def pod(self, namespace: str, name: str) -> Doc:
        out = self.kubectl("get", "pod", name, "-n", namespace, "-o", "json")
        stored: Doc = json.loads(out.stdout)
        return stored

    def wait_pods(self, namespace: str, count: int, selector: str = "") -> list[Doc]:
        return list(
            wait_for(
                lambda: (p := self.pods(namespace, selector)) and len(p) >= count and p,
                what=f"{count} pods in {namespace} ({selector or 'all'})",
            )
        )

    def raw_metrics(self) -> str:
        """The API server's own /metrics (needs the admin credential)."""
        text: str = self.kubectl("get", "--raw", "/metrics").stdout
        return text


def _exists(read: Callable[[], Any]) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        read()
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


# --- pod contents ---------------------------------------------------------------------------


def env_of(pod: Doc, container: str) -> list[Doc]:
    for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]:
        if c["name"] == container:
            env: list[Doc] = c.get("env", [])
            return env
    raise AssertionError(f"no container {container} in pod {pod['metadata']['name']}")


def env_value(pod: Doc, container: str, name: str) -> Any:
    """The `value` (or `valueFrom`) of one env entry; None when absent."""
    found = [e for e in env_of(pod, container) if e["name"] == name]
    assert len(found) <= 1, f"{name} set {len(found)} times in {container}: {found}"
    if not found:
        return None
    return found[0].get("value", found[0].get("valueFrom"))


def untouched(pod: Doc) -> bool:
    """True when the pod carries nothing of ours: no status annotation, none of our variables."""
    annotations = pod["metadata"].get("annotations") or {}
    names = {
        e["name"]
        for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]
        for e in c.get("env", [])
    }
    return STATUS_ANNOTATION not in annotations and not names & set(OUR_ENV)


def status(pod: Doc) -> Any:
    return json.loads(pod["metadata"]["annotations"][STATUS_ANNOTATION])


# --- Prometheus text ----------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def samples(text: str, name: str, /, **labels: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of metric `name` whose labels include `labels`."""
    found = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m or m.group(1) != name:
            continue
        have = dict(_LABEL.findall(m.group(3) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            found.append((have, float(m.group(4))))
    return found


def total(text: str, name: str, /, **labels: str) -> float:
    return sum(v for _, v in samples(text, name, **labels))


def buckets(text: str, name: str, /, **labels: str) -> dict[float, float]:
    found: dict[float, float] = {}
    for have, value in samples(text, f"{name}_bucket", **labels):
        le = float("inf") if have["le"] == "+Inf" else float(have["le"])
        found[le] = found.get(le, 0.0) + value
    return found


def quantile(after: dict[float, float], before: dict[float, float], q: float) -> float:
    """histogram_quantile over the observations made between two scrapes (linear in a bucket)."""
    counts = {le: after[le] - before.get(le, 0.0) for le in after}
    bounds = sorted(counts)
    rank = q * counts[bounds[-1]]
    lower, below = 0.0, 0.0
    for le in bounds:
        if counts[le] >= rank:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * (rank - below) / max(counts[le] - below, 1e-12)
        lower, below = le, counts[le]
    return lower


# --- TLS to a webhook ---------------------------------------------------------------------


def https_get(
    address: str, port: int, path: str, *, ca: bytes, server_name: str, timeout: float = 10
) -> tuple[bytes, bytes]:
    """GET over TLS verified against `ca` for `server_name`: (body, the served certificate DER).

    The address and the name differ as they do for the API server, which dials an endpoint's
    address and checks the Service's DNS name.
    """
    context = ssl.create_default_context(cadata=ca.decode("ascii"))
    with (
        socket.create_connection((address, port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as sock,
    ):
        der = sock.getpeercert(binary_form=True) or b""
        request = f"GET {path} HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n"
        sock.sendall(request.encode("ascii"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    if b"transfer-encoding: chunked" in head.lower():
        body = _unchunk(body)
    return body, der


def _unchunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return out


def environ_without_ours() -> dict[str, str]:
    """This process's environment less what would leak settings into a server under test."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CONCURRENCY_INJECTOR_")
        and k not in ("WEB_CONCURRENCY", "PROMETHEUS_MULTIPROC_DIR", "KUBECONFIG")
        and not k.startswith("COV_CORE_")
    }
