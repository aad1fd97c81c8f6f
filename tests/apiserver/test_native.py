"""Native mode on the real API server: the generated policies apply, and a generated corpus of
pods stores the same env under the policy as under the webhook for every container the policy
decides (the classifier names them, the policy's marker agrees), leaves the rest untouched, and
under hybrid (policy and webhook together) stores exactly what the webhook alone stores."""

from __future__ import annotations

import copy
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.apiserver.cluster import ENABLED_LABEL, Cluster, Doc, buckets, quantile, wait_for
from tests.apiserver.conftest import REPORT, Release
from tests.apiserver.scenarios import deployment
from tests.apiserver.webhooks import Serve, chart_env
from tests.podgen import native_corpus
from webhook.config import Settings
from webhook.core.keys import NATIVE, STATUS
from webhook.core.options import Options
from webhook.core.profiles import active
from webhook.native.classify import decided
from webhook.native.policy import KubeVersion, objects

pytestmark = pytest.mark.apiserver

SCENARIO = "concurrency-injector.io/scenario"
POLICY_KINDS = (
    "MutatingAdmissionPolicy",
    "MutatingAdmissionPolicyBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
)
SEED = 19
PODS = 300


def chart_settings(release: Release) -> Settings:
    """The settings the chart gives the webhook: the policy is generated from the same."""
    return Settings.from_env({k: v for k, v in release.env.items() if k.startswith("CONCURRENCY_INJECTOR_")})


def retargeted(docs: list[Doc], key: str) -> list[Doc]:
    """The generated objects, renamed and selecting only namespaces labelled for `key`."""
    out = []
    for doc in copy.deepcopy(docs):
        doc["metadata"]["name"] += f"-{key}"
        if "policyName" in doc["spec"]:
            doc["spec"]["policyName"] += f"-{key}"
        if "matchConstraints" in doc["spec"]:
            doc["spec"]["matchConstraints"]["namespaceSelector"] = {"matchLabels": {SCENARIO: key}}
        out.append(doc)
    return out


def server_dry_run(cluster: Cluster, namespace: str, pod: Doc) -> Doc:
    body = copy.deepcopy(pod)
    body["metadata"]["namespace"] = namespace
    created = cluster.core.create_namespaced_pod(namespace, body, dry_run="All")
    stored: Doc = cluster.api.sanitize_for_serialization(created)
    return stored


def env(pod: Doc, name: str) -> list[Doc]:
    for c in pod["spec"]["containers"]:
        if c["name"] == name:
            return list(c.get("env") or [])
    raise AssertionError(name)


@pytest.fixture(scope="module")
def policy_docs(release: Release) -> list[Doc]:
    return objects(chart_settings(release).options, kube=KubeVersion.parse(release.kube_version))


@pytest.fixture(scope="module")
def chart_policies(release: Release) -> dict[str, list[Doc]]:
    """The policies the chart installs in native and hybrid mode (with the suite's values)."""
    found = {}
    for mode in ("native", "hybrid"):
        docs = release.render(f"mode={mode}")
        if mode == "hybrid":  # the same webhook as the suite's, whose settings it shares
            assert chart_env(docs, release.namespace) == release.env
        else:
            assert {d["kind"] for d in docs} == set(POLICY_KINDS)
        found[mode] = [d for d in docs if d["kind"] in POLICY_KINDS]
    return found


@pytest.fixture(scope="module")
def scenario(cluster: Cluster) -> Iterator[Callable[..., str]]:
    """Factory: a namespace for `key`, opted in to the webhook when `webhook`, and selected by
    the `policies` given (the chart's, retargeted to that namespace alone)."""
    applied: list[Doc] = []

    def make(key: str, *, policies: list[Doc] | None, webhook: bool) -> str:
        labels = {SCENARIO: key, **({ENABLED_LABEL: "true"} if webhook else {})}
        namespace = cluster.namespace(labels=labels, prefix=key)
        if policies:
            docs = retargeted(policies, key)
            cluster.apply(docs)
            applied.extend(docs)
            probe = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe"}, "spec": {"containers": [
                {"name": "web", "image": "x", "command": ["gunicorn", "a"], "resources": {"limits": {"cpu": "1"}}}]}}
            wait_for(
                lambda: NATIVE in (server_dry_run(cluster, namespace, probe)["metadata"].get("annotations") or {}),
                what=f"the policy acting in {namespace}",
            )
        return namespace

    yield make
    for doc in applied:
        cluster.kubectl("delete", doc["kind"].lower(), doc["metadata"]["name"], check=False)


def test_generated_policy_applies_cleanly(cluster: Cluster, policy_docs: list[Doc]) -> None:
    done = cluster.apply(retargeted(policy_docs, "apply"), "--dry-run=server")
    assert done.stderr == ""
    assert done.stdout.count("created (server dry run)") == 4


def test_native_equals_webhook_where_cel_decides(
    cluster: Cluster,
    release: Release,
    webhook: Serve,
    scenario: Callable[..., str],
    chart_policies: dict[str, list[Doc]],
) -> None:
    settings = chart_settings(release)
    native_ns = scenario("native", policies=chart_policies["native"], webhook=False)
    webhook_ns = scenario("webhook", policies=None, webhook=True)
    hybrid_ns = scenario("hybrid", policies=chart_policies["hybrid"], webhook=True)
    corpus = native_corpus(SEED, PODS)
    counts: Counter[str] = Counter()
    forms: Counter[str] = Counter()
    timings: dict[str, float] = {}
    stored: dict[str, list[Doc]] = {}
    for key, namespace in (("native", native_ns), ("webhook", webhook_ns), ("hybrid", hybrid_ns)):
        started = time.monotonic()
        stored[key] = [server_dry_run(cluster, namespace, pod) for pod in corpus]
        timings[key] = time.monotonic() - started
    for n, pod in enumerate(corpus):
        native, by_webhook, hybrid = stored["native"][n], stored["webhook"][n], stored["hybrid"][n]
        expected = decided(pod, settings.options, disabled=settings.disabled_profiles)
        marker = (native["metadata"].get("annotations") or {}).get(NATIVE, "")
        where = f"pod {pod['metadata']['name']}: {pod['metadata']['annotations']}"
        assert marker == ",".join(expected), where
        for c in pod["spec"]["containers"]:
            name = c["name"]
            counts["containers"] += 1
            if name in expected:
                counts["decided by CEL"] += 1
                forms[" ".join((c.get("command") or []) + (c.get("args") or []))[:40]] += 1
                assert env(native, name) == env(by_webhook, name), f"{where}: {c}"
                if env(native, name) != list(c.get("env") or []):
                    counts["decided by CEL, env set"] += 1
            else:
                assert env(native, name) == list(c.get("env") or []), f"{where}: {c}"
                if env(by_webhook, name) != list(c.get("env") or []):
                    counts["left to the webhook, env set by it"] += 1
            assert env(hybrid, name) == env(by_webhook, name), f"{where}: hybrid {c}"
        hybrid_status = (hybrid["metadata"].get("annotations") or {}).get(STATUS)
        if hybrid_status:  # the webhook wrote status only for containers the policy left to it
            assert not set(expected) & set(json.loads(hybrid_status)), where
    counts["pods"] = len(corpus)
    REPORT["native: differential corpus (seed, counts)"] = f"{SEED}, {dict(counts)}"
    REPORT["native: distinct command forms CEL decided"] = len(forms)
    REPORT["native: dry-run creation of the corpus (s)"] = ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
    assert counts["decided by CEL, env set"] > 100
    assert counts["left to the webhook, env set by it"] > 50


OTHER_SETTINGS = (
    "server.workersPerCpu=2",  # with 250m and 2.25 cores: 0.5 and 4.5, rounded half up
    "server.minWorkers=2",
    "server.maxWorkers=6",
    "server.rounding=round",
    "server.resizeRestart=true",
    "server.pythonCpuCount=false",
    "server.memoryPerWorker=256Mi",
    "profiles.disabled={celery}",
)


def test_native_equals_webhook_with_other_settings(
    cluster: Cluster, release: Release, webhook: Serve, scenario: Callable[..., str], side_webhook: Any
) -> None:
    """The chart's other worker settings reach the policy as they reach the webhook: rounding,
    clamps, the memory guard, resizePolicy, no PYTHON_CPU_COUNT, a disabled profile."""
    side = side_webhook("settings", *OTHER_SETTINGS)
    docs = release.render("mode=hybrid", *OTHER_SETTINGS)
    settings = Settings.from_env({k: v for k, v in chart_env(docs, release.namespace).items() if k.startswith("CONCURRENCY_INJECTOR_")})
    native_ns = scenario("native-settings", policies=[d for d in docs if d["kind"] in POLICY_KINDS], webhook=False)
    options = Options.of(settings, active(settings.extra_profiles))
    decided_count = differs = 0
    for pod in native_corpus(SEED + 2, 150):
        native, by_webhook = server_dry_run(cluster, native_ns, pod), server_dry_run(cluster, side.namespace, pod)
        expected = decided(pod, options, disabled=settings.disabled_profiles)
        assert (native["metadata"].get("annotations") or {}).get(NATIVE, "") == ",".join(expected)
        for c in pod["spec"]["containers"]:
            mine = next(x for x in native["spec"]["containers"] if x["name"] == c["name"])
            theirs = next(x for x in by_webhook["spec"]["containers"] if x["name"] == c["name"])
            if c["name"] in expected:
                decided_count += 1
                assert (mine.get("env"), mine.get("resizePolicy")) == (theirs.get("env"), theirs.get("resizePolicy")), c
                differs += mine.get("env") != c.get("env")
            else:
                assert mine.get("env") == c.get("env"), c
    REPORT["native: other settings (decided, env set)"] = f"{decided_count}, {differs}"
    assert differs > 40


def test_a_second_binding_changes_nothing(
    cluster: Cluster, scenario: Callable[..., str], chart_policies: dict[str, list[Doc]]
) -> None:
    """Each binding invokes the policy's mutations again on the pod the first left: a second
    pass must store exactly what one pass stores (what reinvocation relies on)."""
    policies = chart_policies["native"]
    binding = copy.deepcopy(next(d for d in policies if d["kind"] == "MutatingAdmissionPolicyBinding"))
    binding["metadata"]["name"] += "-again"
    once = scenario("once", policies=policies, webhook=False)
    twice = scenario("twice", policies=[*policies, binding], webhook=False)
    corpus = native_corpus(SEED + 1, 80)
    changed = 0
    for pod in corpus:
        first, second = server_dry_run(cluster, once, pod), server_dry_run(cluster, twice, pod)
        assert ours(second) == ours(first), pod["metadata"]["name"]
        changed += ours(first) != ours(server_dry_run(cluster, scenario_free(cluster), pod))
    assert changed > 20


def ours(pod: Doc) -> tuple[Any, ...]:
    """What the policy may write: annotations, and each container's env and resizePolicy."""
    containers = [(c["name"], c.get("env"), c.get("resizePolicy")) for c in pod["spec"]["containers"]]
    return pod["metadata"].get("annotations"), containers


_FREE: list[str] = []


def scenario_free(cluster: Cluster) -> str:
    """A namespace no policy or webhook selects (what the API server stores untouched)."""
    if not _FREE:
        _FREE.append(cluster.namespace(prefix="untouched"))
    return _FREE[0]


def test_a_pod_of_100_containers_stays_within_the_cost_limit(
    cluster: Cluster, scenario: Callable[..., str], chart_policies: dict[str, list[Doc]]
) -> None:
    namespace = scenario("cost", policies=chart_policies["native"], webhook=False)
    long_args = ["--bind", "0.0.0.0:8000", "--access-logfile", "-"] * 5
    pod: Doc = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "wide", "annotations": {"concurrency-injector.io/runtime": ""}},
        "spec": {
            "containers": [
                {
                    "name": f"c{i}",
                    "image": "x",
                    "command": ["tini", "--", "python3", "-m", "celery", "-A", "proj", "worker", *long_args],
                    "env": [{"name": f"V{j}", "value": "x"} for j in range(20)],
                    "resources": {"limits": {"cpu": "1500m"}},
                }
                for i in range(100)
            ]
        },
    }
    stored: Any = server_dry_run(cluster, namespace, pod)
    assert stored["metadata"]["annotations"][NATIVE].count(",") == 99
    for c in stored["spec"]["containers"]:
        assert [e["name"] for e in c["env"][20:]] == ["CELERY_WORKER_CONCURRENCY", "CPU_LIMIT", "PYTHON_CPU_COUNT"]


REPLICAS = 50
ROUNDS = 5
REQUESTS = "apiserver_request_duration_seconds"
ADMIT_STEP = "apiserver_admission_step_admission_duration_seconds"


def delta(after: str, before: str, name: str, **labels: str) -> dict[float, float]:
    now, then = buckets(after, name, **labels), buckets(before, name, **labels)
    return {le: count - then.get(le, 0.0) for le, count in now.items()}


def test_pod_creation_latency_by_mode(
    cluster: Cluster, webhook: Serve, scenario: Callable[..., str], chart_policies: dict[str, list[Doc]]
) -> None:
    """Deployments of 50 replicas created under each mode, the modes taking turns (5 rounds);
    the API server's own histograms of pod POSTs (the whole request, admission included) and of
    the mutating admission step, between scrapes before and after each Deployment."""
    template = {
        "containers": [
            {"name": "web", "image": "x", "command": ["gunicorn", "app:app"], "resources": {"limits": {"cpu": "2"}}},
            {"name": "worker", "image": "x", "command": ["sh", "-c", "exec celery -A p worker"], "resources": {"limits": {"cpu": "1"}}},
        ]
    }
    modes: dict[str, dict[str, Any]] = {
        "webhook": {"policies": None, "webhook": True},
        "native": {"policies": chart_policies["native"], "webhook": False},
        "hybrid": {"policies": chart_policies["hybrid"], "webhook": True},
    }
    namespaces = {mode: scenario(f"latency-{mode}", **how) for mode, how in modes.items()}
    posts: dict[str, dict[float, float]] = {mode: {} for mode in modes}
    steps: dict[str, dict[float, float]] = {mode: {} for mode in modes}
    checks: dict[str, dict[float, float]] = {mode: {} for mode in modes}
    for round_ in range(ROUNDS):
        for mode, namespace in namespaces.items():
            name = f"scaled-{round_}"
            before = cluster.raw_metrics()
            cluster.apply([deployment(name, namespace=namespace, replicas=REPLICAS, template=template)])
            pods = cluster.wait_pods(namespace, REPLICAS, f"app={name}")
            after = cluster.raw_metrics()
            assert [e["name"] for e in env(pods[0], "web")] == ["WEB_CONCURRENCY", "CPU_LIMIT", "PYTHON_CPU_COUNT"]
            worker = [e["name"] for e in env(pods[0], "worker")]
            assert worker == ([] if mode == "native" else ["CELERY_WORKER_CONCURRENCY", "CPU_LIMIT", "PYTHON_CPU_COUNT"])
            for total, found in (
                (posts[mode], delta(after, before, REQUESTS, verb="POST", resource="pods", subresource="")),
                (steps[mode], delta(after, before, ADMIT_STEP, type="admit", operation="CREATE")),
                (checks[mode], delta(after, before, ADMIT_STEP, type="validate", operation="CREATE")),
            ):
                for le, count in found.items():
                    total[le] = total.get(le, 0.0) + count
            cluster.kubectl("delete", "deployment", name, "-n", namespace, "--wait=false")
    ms = 1000
    for mode in modes:
        post, step, check = posts[mode], steps[mode], checks[mode]
        REPORT[f"latency {mode}: pod POST p50 / p99 (ms, {ROUNDS} x {REPLICAS} pods)"] = (
            f"{quantile(post, {}, 0.5) * ms:.1f} / {quantile(post, {}, 0.99) * ms:.1f}"
        )
        REPORT[f"latency {mode}: mutating admission p50 / p99 (ms)"] = (
            f"{quantile(step, {}, 0.5) * ms:.1f} / {quantile(step, {}, 0.99) * ms:.1f}"
        )
        REPORT[f"latency {mode}: validating admission p50 / p99 (ms)"] = (
            f"{quantile(check, {}, 0.5) * ms:.1f} / {quantile(check, {}, 0.99) * ms:.1f}"
        )
