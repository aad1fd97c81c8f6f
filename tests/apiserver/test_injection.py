"""Scenarios 2-6, 10 and 12: what the API server stores after calling the chart's webhook, which
pods it calls it for, and what `kubectl` shows the user."""

from __future__ import annotations

import json

import pytest

from tests.apiserver.cluster import (
    ENABLED_LABEL,
    Cluster,
    env_of,
    env_value,
    status,
    total,
    untouched,
)
from tests.apiserver.conftest import Release
from tests.apiserver.scenarios import container, examples, expected, gunicorn_pod, pod
from tests.apiserver.webhooks import Serve

pytestmark = pytest.mark.apiserver

REQUESTS = "concurrency_injector_requests_total"


def requests(webhook: Serve) -> float:
    return total(webhook.metrics(), REQUESTS)


def test_examples_in_a_labelled_namespace_get_what_the_readme_says(
    cluster: Cluster, webhook: Serve, enabled_namespace: str
) -> None:
    cluster.apply(examples(enabled_namespace))
    for name, replicas in (("shop", 3), ("api", 1)):
        pods = cluster.wait_pods(enabled_namespace, replicas, f"app={name}")
        want = expected(name)
        for stored in pods:
            for c in want["spec"]["containers"]:
                assert env_of(stored, c["name"]) == c.get("env", []), (name, c["name"])
            assert status(stored) == json.loads(
                want["metadata"]["annotations"]["concurrency-injector.io/status"]
            )
    shop = cluster.pods(enabled_namespace, "app=shop")[0]
    assert env_value(shop, "web", "CPU_LIMIT") == {
        "resourceFieldRef": {"containerName": "web", "resource": "limits.cpu", "divisor": "1"}
    }
    assert env_value(shop, "worker", "WEB_CONCURRENCY") is None


@pytest.mark.parametrize("where", ["unlabelled", "opted-out pod", "kube-system"])
def test_excluded_pods_are_stored_unchanged_and_the_webhook_is_not_called(
    cluster: Cluster, release: Release, webhook: Serve, where: str
) -> None:
    docs = None
    namespace = ""
    if where == "unlabelled":
        namespace = cluster.namespace()
        docs = examples(namespace)
    elif where == "opted-out pod":
        namespace = cluster.namespace(labels={ENABLED_LABEL: "true"})
        docs = examples(namespace)
        for d in docs:
            d["spec"]["template"]["metadata"]["labels"][ENABLED_LABEL] = "false"
    else:
        # Labelled like an enabled namespace: only the chart's exclusion keeps it out.
        namespace = "kube-system"
        cluster.kubectl("label", "namespace", namespace, f"{ENABLED_LABEL}=true", "--overwrite")
        docs = examples(namespace)
    before = requests(webhook)
    try:
        cluster.apply(docs)
        pods = cluster.wait_pods(namespace, 4, "app in (shop,api)")
        assert all(untouched(p) for p in pods)
        assert requests(webhook) == before
    finally:
        if where == "kube-system":
            cluster.kubectl("label", "namespace", namespace, f"{ENABLED_LABEL}-")
            cluster.kubectl("delete", "deployment", "shop", "api", "-n", namespace, check=False)


def test_match_conditions_keep_pods_from_the_webhook(
    cluster: Cluster, release: Release, webhook: Serve, enabled_namespace: str
) -> None:
    if "matchConditions" not in release.webhook_config["webhooks"][0]:
        pytest.skip(f"the chart renders no matchConditions for Kubernetes {release.kube_version}")
    before = requests(webhook)
    annotated = gunicorn_pod(
        "opted-out", namespace=enabled_namespace, cpu="1",
        annotations={"concurrency-injector.io/inject": "false"},
    )
    no_limit = gunicorn_pod("no-limit", namespace=enabled_namespace, cpu=None)
    cluster.apply([annotated, no_limit])
    assert untouched(cluster.pod(enabled_namespace, "opted-out"))
    assert untouched(cluster.pod(enabled_namespace, "no-limit"))
    assert requests(webhook) == before
    # The same pod with a CPU limit is sent.
    cluster.apply([gunicorn_pod("limited", namespace=enabled_namespace, cpu="1")])
    assert not untouched(cluster.pod(enabled_namespace, "limited"))
    assert requests(webhook) == before + 1


def test_warnings_reach_kubectl(cluster: Cluster, webhook: Serve, enabled_namespace: str) -> None:
    manifest = pod(
        "warned",
        namespace=enabled_namespace,
        containers=[
            container("web", cpu="2", command=["gunicorn", "--workers", "4", "app:app"]),
            container("api", cpu=None, command=["uvicorn", "app:app"]),
        ],
    )
    done = cluster.apply([manifest])
    warnings = [line for line in done.stderr.splitlines() if line.startswith("Warning: ")]
    assert any("'web'" in w and "--workers 4" in w for w in warnings), done.stderr
    assert any("'api' has no CPU limit" in w for w in warnings), done.stderr


def test_env_from_config_map_is_read_and_a_secret_is_not(
    cluster: Cluster, webhook: Serve, enabled_namespace: str
) -> None:
    cluster.core.create_namespaced_config_map(
        enabled_namespace, {"metadata": {"name": "tuning"}, "data": {"WEB_CONCURRENCY": "7"}}
    )
    cluster.core.create_namespaced_secret(
        enabled_namespace, {"metadata": {"name": "creds"}, "stringData": {"TOKEN": "x"}}
    )
    from_config_map = gunicorn_pod("from-cm", namespace=enabled_namespace, cpu="2")
    from_config_map["spec"]["containers"][0]["envFrom"] = [{"configMapRef": {"name": "tuning"}}]
    from_secret = gunicorn_pod("from-secret", namespace=enabled_namespace, cpu="2")
    from_secret["spec"]["containers"][0]["envFrom"] = [{"secretRef": {"name": "creds"}}]

    done = cluster.apply([from_config_map])
    stored = cluster.pod(enabled_namespace, "from-cm")
    assert env_value(stored, "web", "WEB_CONCURRENCY") is None  # the ConfigMap's 7 is kept
    assert env_value(stored, "web", "PYTHON_CPU_COUNT") == "2"
    assert "ConfigMap" not in done.stderr, done.stderr  # read, so nothing to warn about
    assert "not readable" not in webhook.log_text()

    done = cluster.apply([from_secret])
    stored = cluster.pod(enabled_namespace, "from-secret")
    assert env_value(stored, "web", "WEB_CONCURRENCY") is None
    warnings = [line for line in done.stderr.splitlines() if line.startswith("Warning: ")]
    assert any("Secret" in w and "creds" in w for w in warnings), done.stderr


def test_server_side_dry_run_is_patched_and_stores_nothing(
    cluster: Cluster, webhook: Serve, enabled_namespace: str
) -> None:
    manifest = gunicorn_pod("dry", namespace=enabled_namespace, cpu="3")
    done = cluster.apply([manifest], "--dry-run=server", "-o", "json")
    returned = json.loads(done.stdout)
    assert env_value(returned, "web", "WEB_CONCURRENCY") == "3"
    missing = cluster.kubectl("get", "pod", "dry", "-n", enabled_namespace, check=False)
    assert missing.returncode != 0
    assert "NotFound" in missing.stderr


def test_pod_level_resources(cluster: Cluster, webhook: Serve, enabled_namespace: str) -> None:
    manifest = gunicorn_pod("pod-level", namespace=enabled_namespace, cpu=None)
    manifest["spec"]["resources"] = {"limits": {"cpu": "2", "memory": "512Mi"}}
    done = cluster.apply([manifest], check=False)
    if done.returncode != 0 and "resources" in done.stderr:
        pytest.skip(f"this API server refuses pod-level resources: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    stored = cluster.pod(enabled_namespace, "pod-level")
    if "resources" not in stored["spec"]:
        pytest.skip("this API server drops pod-level resources (PodLevelResources off)")
    assert env_value(stored, "web", "WEB_CONCURRENCY") == "2"
    assert env_value(stored, "web", "PYTHON_CPU_COUNT") == "2"
    # No container limit: the downward API has no per-container CPU to give.
    assert env_value(stored, "web", "CPU_LIMIT") is None
    assert status(stored)["web"]["cpuFrom"] == "pod"


def test_a_limit_range_default_counts_as_the_cpu_limit(
    cluster: Cluster, webhook: Serve, enabled_namespace: str
) -> None:
    """LimitRanger (a built-in admission plugin) runs before mutating webhooks: a pod with no
    CPU limit of its own in a namespace with a default one is patched from that default."""
    cluster.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "LimitRange",
                "metadata": {"name": "defaults", "namespace": enabled_namespace},
                "spec": {"limits": [{"type": "Container", "default": {"cpu": "3", "memory": "1Gi"}}]},
            }
        ]
    )
    cluster.apply([gunicorn_pod("defaulted", namespace=enabled_namespace, cpu=None)])
    stored = cluster.pod(enabled_namespace, "defaulted")
    assert stored["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "3"
    assert env_value(stored, "web", "WEB_CONCURRENCY") == "3"
