"""Scenarios 3-5 of the kind suite: the webhook stays in the path while its own pods come and
go. Pods are created in a loop meanwhile; none may fail and none may be stored unpatched.

The loop's pods have a CPU limit and a nodeSelector no node has: admitted and stored, never run.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from tests.apiserver.cluster import Cluster, wait_for
from tests.apiserver.conftest import REPORT, Release
from tests.e2e.conftest import CHART, Helm, InClusterWebhook, Settings
from tests.e2e.workloads import creating_pods

SETTLE = 5.0
# Namespaces the earlier scenarios made (tests.apiserver.cluster.Cluster.namespace prefixes).
SCENARIO_NAMESPACES = ("ci-", "e2e-", "probe-")


@pytest.fixture(scope="module", autouse=True)
def room_to_move(cluster: Cluster) -> None:
    """Remove what the earlier scenarios left: their pods (most Pending, or pulling images that
    do not exist) hold CPU requests on the workers, and a drain needs room for the webhook's
    replacement replica."""
    names = [
        ns.metadata.name
        for ns in cluster.core.list_namespace().items
        if ns.metadata.name.startswith(SCENARIO_NAMESPACES)
    ]
    if names:
        cluster.kubectl("delete", "namespace", *names, "--wait=true", "--timeout=300s")


def test_deleting_one_of_two_replicas_loses_no_pod(
    cluster: Cluster, webhook: InClusterWebhook, enabled_namespace: str
) -> None:
    webhook.wait_rolled_out()
    victim = webhook.pods()[0]["metadata"]["name"]
    assert webhook.ready_replicas() == 2
    with creating_pods(cluster, enabled_namespace) as loop:
        time.sleep(SETTLE)
        cluster.kubectl("delete", "pod", victim, "-n", webhook.namespace, "--wait=false")
        wait_for(
            lambda: victim not in [p["metadata"]["name"] for p in webhook.pods()],
            timeout=120,
            what=f"{victim} gone",
        )
        webhook.wait_rolled_out()
        wait_for(lambda: webhook.ready_replicas() == 2, timeout=120, what="2 ready replicas")
        time.sleep(SETTLE)
    REPORT["scenario 3: a replica deleted"] = loop.summary()
    assert loop.created > 0
    assert loop.failed == []
    assert loop.unpatched == []


def test_helm_upgrade_loses_no_pod_and_uninstall_leaves_no_webhook_configuration(
    cluster: Cluster,
    helm: Helm,
    release: Release,
    settings: Settings,
    webhook: InClusterWebhook,
    enabled_namespace: str,
    tmp_path: Path,
) -> None:
    with creating_pods(cluster, enabled_namespace) as loop:
        time.sleep(SETTLE)
        # A new pod template: every replica is replaced, one at a time.
        helm(
            "upgrade",
            settings.release,
            str(CHART),
            "--reuse-values",
            "--wait",
            "--timeout",
            "5m",
            "--set-string",
            f"podAnnotations.concurrency-injector\\.io/e2e-rollout={time.time_ns()}",
        )
        webhook.wait_rolled_out()
        time.sleep(SETTLE)
    REPORT["scenario 4: helm upgrade"] = loop.summary()
    assert loop.failed == []
    assert loop.unpatched == []

    values = tmp_path / "values.yaml"
    values.write_text(helm("get", "values", settings.release, "-o", "yaml").stdout)
    config_name = release.webhook_config["metadata"]["name"]
    helm("uninstall", settings.release, "--wait", "--timeout", "5m")
    try:
        configs = json.loads(
            cluster.kubectl("get", "mutatingwebhookconfigurations", "-o", "json").stdout
        )["items"]
        names = [c["metadata"]["name"] for c in configs]
        left = cluster.kubectl(
            "get",
            "all,secrets,configmaps,leases",
            "-n",
            settings.namespace,
            "-o",
            "name",
            check=False,
        ).stdout.split()
        REPORT["scenario 4: left in the namespace after helm uninstall"] = (
            ", ".join(n for n in left if "kube-root-ca" not in n) or "nothing"
        )
        assert config_name not in names, "helm uninstall left the MutatingWebhookConfiguration"
        # With no webhook configuration, pods are created unpatched and never wait on it.
        cluster.apply(
            [
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": "after-uninstall", "namespace": enabled_namespace},
                    "spec": {
                        "containers": [
                            {
                                "name": "web",
                                "image": settings.app_image,
                                "resources": {"limits": {"cpu": "1"}},
                            }
                        ],
                        "nodeSelector": {"concurrency-injector.io/e2e": "never"},
                    },
                }
            ]
        )
    finally:
        helm(
            "install", settings.release, str(CHART), "-f", str(values), "--wait", "--timeout", "5m"
        )
        webhook.wait_rolled_out()


def test_a_node_drain_respects_the_disruption_budget(
    cluster: Cluster, webhook: InClusterWebhook, enabled_namespace: str
) -> None:
    webhook.wait_rolled_out()
    node = webhook.pods()[0]["spec"]["nodeName"]
    lowest = [webhook.ready_replicas()]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            lowest[0] = min(lowest[0], webhook.ready_replicas())
            stop.wait(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with creating_pods(cluster, enabled_namespace) as loop:
            time.sleep(SETTLE)
            # Bare pods of other scenarios are on the node too: --force deletes those.
            drained = cluster.kubectl(
                "drain",
                node,
                "--ignore-daemonsets",
                "--delete-emptydir-data",
                "--force",
                "--timeout=300s",
                check=False,
            )
            webhook.wait_rolled_out()
            time.sleep(SETTLE)
    finally:
        stop.set()
        watcher.join(timeout=10)
        cluster.kubectl("uncordon", node, check=False)
    REPORT["scenario 5: drain of " + node] = (
        f"{loop.summary()}; fewest ready webhook replicas during it: {lowest[0]}"
    )
    assert drained.returncode == 0, drained.stderr
    assert all(p["spec"]["nodeName"] != node for p in webhook.pods())
    assert lowest[0] >= 1, "the PodDisruptionBudget let every replica go at once"
    assert loop.failed == []
    assert loop.unpatched == []
