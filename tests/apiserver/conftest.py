"""The cluster-specific setup of the API server suite; the scenarios only see `Cluster`/`Release`.

Once per session: build (cached) and start a local control plane with `hack/kube/control-plane.sh`
(etcd, kube-apiserver, kube-controller-manager of KUBE_VERSION, default the newest that builds),
install the chart's objects from `helm template` of the real chart, and run
`concurrency-injector serve` on the host as the chart's ServiceAccount (a TokenRequest token), in
self-managed TLS mode, reached by the API server through the chart's own `clientConfig.service`
(an EndpointSlice for the Service points at this machine's address: aggregator routing).

What cannot be had here (no Go, the module proxy unreachable, helm or kubectl missing) skips the
suite with the reason; with CONCURRENCY_INJECTOR_REQUIRE_APISERVER=1 (CI) it fails instead.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml

from tests.apiserver.cluster import ENABLED_LABEL, Cluster, Doc, wait_for
from tests.apiserver.webhooks import (
    ROOT,
    Serve,
    chart_env,
    one,
    start_serve,
    token_kubeconfig,
    wait_healthy,
)

SCRIPT = ROOT / "hack" / "kube" / "control-plane.sh"
CHART = ROOT / "charts" / "concurrency-injector"
RELEASE = "ci"
RELEASE_NAMESPACE = "concurrency-injector"
CANNOT_BUILD = 3
# Short-lived serving certificates, so the whole suite runs across several renewals.
CERT_LIFETIME = "60"
RESYNC_SECONDS = "5"
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    resources: [{group: "", resources: ["pods"]}]
    verbs: ["create"]
  - level: None
"""
# What the suite measured, printed at the end of the run (and written to KUBE_REPORT if set).
REPORT: dict[str, Any] = {}


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("CONCURRENCY_INJECTOR_REQUIRE_APISERVER") == "1":
        pytest.fail(f"API server suite required, but: {reason}", pytrace=False)
    pytest.skip(reason)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not REPORT:
        return
    terminalreporter.section("API server suite")
    for key, value in REPORT.items():
        terminalreporter.write_line(f"{key}: {value}")
    target = os.environ.get("KUBE_REPORT")
    if target:
        Path(target).write_text(json.dumps(REPORT, indent=2) + "\n")


@dataclass
class ControlPlane:
    version: str
    directory: Path
    kubeconfig: Path
    advertise_address: str
    audit_log: Path | None
    # Where webhooks started by the tests listen, for clientConfig.url: the API server runs on
    # this machine. Another cluster (kind) would give the address it reaches the host at.
    url_address: str = "127.0.0.1"


@pytest.fixture(scope="session")
def tools() -> Path:
    """helm v4 and kubectl, installed by hack/install-tools.sh."""
    done = subprocess.run(
        [str(ROOT / "hack" / "install-tools.sh")], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        unavailable(f"hack/install-tools.sh could not install helm and kubectl: {done.stderr[-500:]}")
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    version = os.environ.get("KUBE_VERSION") or subprocess.run(
        [str(SCRIPT), "newest"], capture_output=True, text=True, check=True
    ).stdout.strip()
    started = time.monotonic()
    build = subprocess.run([str(SCRIPT), "build", version], capture_output=True, text=True, check=False)
    if build.returncode == CANNOT_BUILD:
        unavailable(build.stderr.strip().splitlines()[-1])
    if build.returncode != 0:
        unavailable(f"building Kubernetes {version} failed: {build.stderr[-1500:]}")
    REPORT["kubernetes"] = version
    REPORT["build (s)"] = round(time.monotonic() - started, 1)
    directory = tmp_path_factory.mktemp("kube")
    policy = directory / "audit-policy.yaml"
    policy.write_text(AUDIT_POLICY)
    state = directory / "state"
    env = {**os.environ, "KUBE_AUDIT_POLICY": str(policy)}
    started = time.monotonic()
    start = subprocess.run(
        [str(SCRIPT), "start", version, str(state)], env=env, capture_output=True, text=True, check=False
    )
    try:
        if start.returncode == CANNOT_BUILD:
            unavailable(start.stderr.strip())
        assert start.returncode == 0, f"control plane did not start: {start.stderr}"
        REPORT["control plane start (s)"] = round(time.monotonic() - started, 1)
        values = dict(
            line.split("=", 1)
            for line in subprocess.run(
                [str(SCRIPT), "env", str(state)], capture_output=True, text=True, check=True
            ).stdout.splitlines()
        )
        yield ControlPlane(
            version=version,
            directory=state,
            kubeconfig=Path(values["KUBECONFIG"]),
            advertise_address=values["KUBE_ADVERTISE_ADDRESS"],
            audit_log=Path(values["KUBE_AUDIT_LOG"]) if "KUBE_AUDIT_LOG" in values else None,
        )
    finally:
        subprocess.run([str(SCRIPT), "stop", str(state)], check=False)


@pytest.fixture(scope="session")
def cluster(control_plane: ControlPlane, tools: Path) -> Cluster:
    return Cluster(kubeconfig=control_plane.kubeconfig, kubectl_bin=tools / "kubectl")


@dataclass
class Release:
    """The chart as installed: its rendered objects and the names the scenarios need."""

    namespace: str
    docs: list[Doc]
    env: dict[str, str]
    webhook_config: Doc
    service_account: str
    service: str
    tls_secret: str
    kube_version: str
    helm: Path

    @property
    def webhook_name(self) -> str:
        name: str = self.webhook_config["webhooks"][0]["name"]
        return name

    @property
    def server_name(self) -> str:
        """The name the API server checks the serving certificate for."""
        return f"{self.service}.{self.namespace}.svc"

    def render(self, *sets: str, tests: bool = False) -> list[Doc]:
        """`helm template` of the real chart, as installed here, with extra `--set`s (and with
        `tests`, the `helm test` hooks)."""
        return render(self.helm, self.kube_version, self.namespace, *sets, tests=tests)


# The registry is off: the examples' images are not reachable from this machine, and nothing
# here may reach the network. Everything else is the chart's defaults.
CHART_SETS = ("registry.enabled=false",)


def render(helm: Path, kube_version: str, namespace: str, *sets: str, tests: bool = False) -> list[Doc]:
    args = [str(helm), "template", RELEASE, str(CHART), "--namespace", namespace]
    args += ["--kube-version", kube_version]
    if not tests:
        args.append("--skip-tests")  # the `helm test` hooks: applied by `helm test` only
    for value in (*CHART_SETS, *sets):
        args += ["--set", value]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="session")
def release(cluster: Cluster, tools: Path) -> Release:
    """The chart's objects, from `helm template`, applied with kubectl (nothing schedules the pod)."""
    server = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]
    kube_version = server["gitVersion"].lstrip("v")
    docs = render(tools / "helm", kube_version, RELEASE_NAMESPACE)
    cluster.kubectl("create", "namespace", RELEASE_NAMESPACE)
    cluster.apply(docs)
    config = one(docs, "MutatingWebhookConfiguration")
    env = chart_env(docs, RELEASE_NAMESPACE)
    return Release(
        namespace=RELEASE_NAMESPACE,
        docs=docs,
        env=env,
        webhook_config=config,
        service_account=one(docs, "ServiceAccount")["metadata"]["name"],
        service=one(docs, "Service")["metadata"]["name"],
        tls_secret=env["CONCURRENCY_INJECTOR_TLS_SECRET"],
        kube_version=kube_version,
        helm=tools / "helm",
    )


@pytest.fixture(scope="session")
def sa_kubeconfig(
    cluster: Cluster, release: Release, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A kubeconfig with a TokenRequest token of the chart's ServiceAccount, as its pod gets."""
    token = cluster.kubectl(
        "create", "token", release.service_account, "-n", release.namespace, "--duration=6h"
    ).stdout.strip()
    return token_kubeconfig(cluster.kubeconfig, token, tmp_path_factory.mktemp("sa") / "kubeconfig")


def free_port(address: str) -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port


def endpoint_slice(release: Release, *, address: str, port: int) -> Doc:
    """An EndpointSlice of the chart's Service at `address:port` (aggregator routing uses it)."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{release.service}-host",
            "namespace": release.namespace,
            "labels": {
                "kubernetes.io/service-name": release.service,
                "endpointslice.kubernetes.io/managed-by": "concurrency-injector-tests",
            },
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
    }


@contextmanager
def wrong_service_port(cluster: Cluster, release: Release) -> Iterator[None]:
    """The chart's webhook configuration naming a port its Service does not have, meanwhile.

    Changing the clientConfig makes the API server build a new client, so no open connection is
    reused: kube-apiserver 1.35 resolves a webhook Service only when it dials, and keeps using a
    connection to an endpoint that is gone (1.37 resolves each request).
    """
    name = release.webhook_config["metadata"]["name"]
    port = release.webhook_config["webhooks"][0]["clientConfig"]["service"]["port"]

    def set_port(value: int) -> None:
        op = {"op": "replace", "path": "/webhooks/0/clientConfig/service/port", "value": value}
        cluster.kubectl("patch", "mutatingwebhookconfiguration", name, "--type", "json",
                        "-p", json.dumps([op]))  # fmt: skip

    set_port(port + 1)
    try:
        yield
    finally:
        set_port(port)


def self_managed_env(release: Release, sa_kubeconfig: Path, directory: Path) -> dict[str, str]:
    """The chart's env for serve, with the pod's files and account replaced by the host's."""
    directory.mkdir(parents=True, exist_ok=True)
    return {
        **release.env,
        "CONCURRENCY_INJECTOR_CERT_FILE": str(directory / "tls.crt"),
        "CONCURRENCY_INJECTOR_KEY_FILE": str(directory / "tls.key"),
        "CONCURRENCY_INJECTOR_KUBECONFIG": str(sa_kubeconfig),
        "CONCURRENCY_INJECTOR_TLS_CERT_LIFETIME": CERT_LIFETIME,
        "CONCURRENCY_INJECTOR_TLS_RESYNC_SECONDS": RESYNC_SECONDS,
        "CONCURRENCY_INJECTOR_CERT_RELOAD_SECONDS": "1",
    }


@pytest.fixture(scope="session")
def webhook(
    cluster: Cluster,
    control_plane: ControlPlane,
    release: Release,
    sa_kubeconfig: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Serve]:
    """The chart's webhook, served from the host through the chart's clientConfig.service."""
    directory = tmp_path_factory.mktemp("webhook")
    address = control_plane.advertise_address
    port = free_port(address)
    serve = start_serve(
        self_managed_env(release, sa_kubeconfig, directory / "tls"),
        address=address,
        port=port,
        server_name=release.server_name,
        log=directory / "serve.log",
    )
    try:
        # Self-managed TLS: the server creates the Secret and writes the caBundle before binding.
        serve.ca = wait_for(
            lambda: _ca_bundle(cluster, release) or ((serve.alive() or _died(serve)) and None),
            what="the webhook's caBundle in its MutatingWebhookConfiguration",
        )
        wait_healthy(serve)
        cluster.apply([endpoint_slice(release, address=address, port=port)])
        namespace = cluster.namespace(labels={ENABLED_LABEL: "true"}, prefix="probe")
        wait_for(
            lambda: _probe(cluster, namespace),
            what="the API server calling the webhook (a probe pod patched)",
        )
        yield serve
    finally:
        serve.stop()


def _died(serve: Serve) -> NoReturn:
    raise AssertionError(f"serve exited {serve.process.returncode}:\n{serve.log_text()}")


def _ca_bundle(cluster: Cluster, release: Release) -> bytes | None:
    config = cluster.admission.read_mutating_webhook_configuration(release.webhook_config["metadata"]["name"])
    bundle = config.webhooks[0].client_config.ca_bundle
    if not bundle:
        return None
    return base64.b64decode(bundle)


def _probe(cluster: Cluster, namespace: str) -> bool:
    from tests.apiserver.scenarios import gunicorn_pod

    name = f"probe-{time.monotonic_ns()}"
    cluster.apply([gunicorn_pod(name, namespace=namespace, cpu="1")])
    return "concurrency-injector.io/status" in (
        cluster.pod(namespace, name)["metadata"].get("annotations") or {}
    )


@pytest.fixture
def enabled_namespace(cluster: Cluster, webhook: Serve) -> str:
    """A namespace labelled for injection (the chart's namespaceSelector)."""
    return cluster.namespace(labels={ENABLED_LABEL: "true"})


@dataclass
class SideWebhook:
    """A second serve process with its own copy of the chart's webhook configuration."""

    serve: Serve
    config_name: str
    webhook_name: str
    namespace: str


@pytest.fixture
def side_webhook(
    cluster: Cluster,
    control_plane: ControlPlane,
    release: Release,
    sa_kubeconfig: Path,
    tmp_path: Path,
) -> Iterator[Any]:
    """Factory: serve with the chart rendered with extra `--set`s, a static certificate, and the
    chart's webhook configuration copied to call it by URL for one new namespace only."""
    from tests.apiserver.webhooks import config_copy, static_pair

    started: list[SideWebhook] = []

    def start(key: str, *sets: str) -> SideWebhook:
        docs = release.render(*sets)
        address = control_plane.url_address
        ca, cert, key_file = static_pair([address], tmp_path / key)
        env = {
            **chart_env(docs, release.namespace),
            "CONCURRENCY_INJECTOR_TLS_SELF_MANAGED": "false",
            "CONCURRENCY_INJECTOR_CERT_FILE": str(cert),
            "CONCURRENCY_INJECTOR_KEY_FILE": str(key_file),
            "CONCURRENCY_INJECTOR_KUBECONFIG": str(sa_kubeconfig),
        }
        port = free_port(address)
        serve = start_serve(env, address=address, port=port, server_name=address, log=tmp_path / f"{key}.log")
        serve.ca = ca.cert_pem
        wait_healthy(serve)
        name = f"{key}-{RELEASE}"
        config = config_copy(
            one(docs, "MutatingWebhookConfiguration"),
            name=name,
            url=f"https://{address}:{port}/mutate",
            ca=ca.cert_pem,
            namespace_labels={"concurrency-injector.io/scenario": key},
        )
        cluster.apply([config])
        namespace = cluster.namespace(labels={"concurrency-injector.io/scenario": key})
        side = SideWebhook(serve, name, config["webhooks"][0]["name"], namespace)
        started.append(side)
        return side

    yield start
    for side in started:
        side.serve.stop()
        cluster.kubectl("delete", "mutatingwebhookconfiguration", side.config_name, check=False)
