"""The kind suite's fixtures: the same names the API server suite's scenarios ask for (`cluster`,
`release`, `webhook`, `enabled_namespace`), given by a cluster that `hack/e2e-kind.sh` made.

Everything here reads a kubeconfig (E2E_KUBECONFIG) and the installed release; nothing knows
how the cluster was made. Without a cluster (no Docker engine, no kind, E2E_KUBECONFIG unset)
every test is skipped with the reason; with E2E_REQUIRE=1 (the e2e workflow) it fails instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml

from tests.apiserver.cluster import ENABLED_LABEL, Cluster, Doc, wait_for
from tests.apiserver.conftest import REPORT, Release
from tests.apiserver.webhooks import ROOT, chart_env, one

CHART = ROOT / "charts" / "concurrency-injector"


@cache
def why_no_cluster() -> str | None:
    """None when a cluster is given; otherwise what is missing, most basic first."""
    if os.environ.get("E2E_KUBECONFIG"):
        return None
    if shutil.which("docker") is None:
        return "no Docker (the docker client is not installed), so no kind cluster: run hack/e2e-kind.sh on a Docker host"
    try:
        info = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        engine_error = info.stderr.strip().splitlines()[-1:] if info.returncode != 0 else []
    except subprocess.TimeoutExpired:
        engine_error = ["docker info timed out"]
    if engine_error:
        return f"no Docker engine ({engine_error[0][:160]}), so no kind cluster: run hack/e2e-kind.sh on a Docker host"
    if shutil.which("kind") is None:
        return (
            "kind is not on PATH: hack/e2e-kind.sh builds it, makes a cluster and runs this suite"
        )
    return (
        "no cluster given (E2E_KUBECONFIG unset): hack/e2e-kind.sh creates one and runs this suite"
    )


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("E2E_REQUIRE") == "1":
        pytest.fail(f"kind suite required, but: {reason}", pytrace=False)
    pytest.skip(reason)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test of this directory is an e2e test (the shared scenarios are imported here).

    The scenarios that take webhook replicas away (test_availability) run last, so a failure
    there cannot make the others fail.
    """
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.e2e)
    items.sort(key=lambda item: Path(str(item.path)) == here / "test_availability.py")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not REPORT or not os.environ.get("E2E_KUBECONFIG"):
        return
    terminalreporter.section("kind suite")
    for key, value in REPORT.items():
        terminalreporter.write_line(f"{key}: {value}")


@dataclass(frozen=True)
class Settings:
    """What hack/e2e-kind.sh tells the suite."""

    kubeconfig: Path
    release: str
    namespace: str
    app_image: str
    app_image_in_registry: bool
    values: Path
    kube_minor: str


@pytest.fixture(scope="session")
def settings() -> Settings:
    reason = why_no_cluster()
    if reason:
        unavailable(reason)
    env = os.environ
    return Settings(
        kubeconfig=Path(env["E2E_KUBECONFIG"]),
        release=env.get("E2E_RELEASE", "concurrency-injector"),
        namespace=env.get("E2E_NAMESPACE", "concurrency-injector"),
        app_image=env.get("E2E_APP_IMAGE", "kind-registry:5000/concurrency-injector-e2e-app:e2e"),
        app_image_in_registry=env.get("E2E_APP_IMAGE_IN_REGISTRY", "true") == "true",
        values=Path(env.get("E2E_VALUES", str(ROOT / "hack" / "kind" / "values.yaml"))),
        kube_minor=env.get("E2E_KUBE_MINOR", ""),
    )


@pytest.fixture(scope="session")
def tools(settings: Settings) -> Path:
    """helm v4 and kubectl from hack/install-tools.sh, as the API server suite uses."""
    done = subprocess.run(
        [str(ROOT / "hack" / "install-tools.sh")], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        unavailable(
            f"hack/install-tools.sh could not install helm and kubectl: {done.stderr[-500:]}"
        )
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def cluster(settings: Settings, tools: Path) -> Cluster:
    return Cluster(kubeconfig=settings.kubeconfig, kubectl_bin=tools / "kubectl")


@dataclass
class Helm:
    """helm on the suite's cluster and release."""

    binary: Path
    settings: Settings

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [
                str(self.binary),
                "--kubeconfig",
                str(self.settings.kubeconfig),
                "--namespace",
                self.settings.namespace,
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed: {done.stderr}")
        return done

    def manifest(self) -> list[Doc]:
        out = self("get", "manifest", self.settings.release).stdout
        return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="session")
def helm(settings: Settings, tools: Path) -> Helm:
    return Helm(tools / "helm", settings)


@pytest.fixture(scope="session")
def release(cluster: Cluster, helm: Helm, settings: Settings) -> Release:
    """The installed release, described as the API server suite describes its own."""
    server = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]
    docs = helm.manifest()
    env = chart_env(docs, settings.namespace)
    return Release(
        namespace=settings.namespace,
        docs=docs,
        env=env,
        webhook_config=one(docs, "MutatingWebhookConfiguration"),
        service_account=one(docs, "ServiceAccount")["metadata"]["name"],
        service=one(docs, "Service")["metadata"]["name"],
        tls_secret=env["CONCURRENCY_INJECTOR_TLS_SECRET"],
        kube_version=server["gitVersion"].lstrip("v"),
        helm=helm.binary,
    )


@dataclass
class InClusterWebhook:
    """The chart's webhook pods, seen the way the scenarios see a webhook process: metrics and logs.

    Metrics are the sum over every running replica (through the API server's pod proxy), so a
    counter compared before and after a scenario counts every review whichever pod answered it.
    """

    cluster: Cluster
    namespace: str
    selector: str
    deployment: str

    def pods(self) -> list[Doc]:
        return [
            p
            for p in self.cluster.pods(self.namespace, self.selector)
            if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
        ]

    def metrics(self) -> str:
        texts = []
        for pod in self.pods():
            name = pod["metadata"]["name"]
            port = pod["spec"]["containers"][0]["ports"][0]["containerPort"]
            path = f"/api/v1/namespaces/{self.namespace}/pods/https:{name}:{port}/proxy/metrics"
            texts.append(self.cluster.kubectl("get", "--raw", path).stdout)
        return "\n".join(texts)

    def log_text(self) -> str:
        out = self.cluster.kubectl(
            "logs", "-n", self.namespace, "-l", self.selector, "--prefix", "--tail=-1", check=False
        )
        return out.stdout

    def ready_replicas(self) -> int:
        out = self.cluster.kubectl(
            "get", "deployment", self.deployment, "-n", self.namespace, "-o", "json"
        )
        ready: int = json.loads(out.stdout)["status"].get("readyReplicas", 0)
        return ready

    def wait_rolled_out(self, timeout: str = "300s") -> None:
        self.cluster.kubectl(
            "rollout",
            "status",
            f"deployment/{self.deployment}",
            "-n",
            self.namespace,
            f"--timeout={timeout}",
        )


@pytest.fixture(scope="session")
def webhook(cluster: Cluster, release: Release, settings: Settings) -> InClusterWebhook:
    deployment = one(release.docs, "Deployment")
    selector = ",".join(
        f"{k}={v}" for k, v in deployment["spec"]["selector"]["matchLabels"].items()
    )
    serving = InClusterWebhook(
        cluster, settings.namespace, selector, deployment["metadata"]["name"]
    )
    serving.wait_rolled_out()
    # The API server calls it: a probe pod in a labelled namespace comes back patched.
    from tests.apiserver.scenarios import gunicorn_pod

    namespace = cluster.namespace(labels={ENABLED_LABEL: "true"}, prefix="probe")
    cluster.apply([gunicorn_pod("probe", namespace=namespace, cpu="1")])
    wait_for(
        lambda: (
            "concurrency-injector.io/status"
            in (cluster.pod(namespace, "probe")["metadata"].get("annotations") or {})
        ),
        what="the API server calling the webhook (a probe pod patched)",
    )
    return serving


@pytest.fixture
def enabled_namespace(cluster: Cluster, webhook: InClusterWebhook) -> str:
    """A namespace labelled for injection (the chart's namespaceSelector)."""
    return cluster.namespace(labels={ENABLED_LABEL: "true"}, prefix="e2e")
