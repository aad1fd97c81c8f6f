"""Scenario 7: a Deployment scaled to 50: every pod the controllers create is patched; the
webhook's and the API server's view of the admission latency go to the suite's report."""

from __future__ import annotations

import time

import pytest

from tests.apiserver.cluster import Cluster, buckets, env_value, quantile, status
from tests.apiserver.conftest import REPORT, Release
from tests.apiserver.scenarios import container, deployment
from tests.apiserver.webhooks import Serve

pytestmark = pytest.mark.apiserver

OURS = "concurrency_injector_request_duration_seconds"
API_SERVER = "apiserver_admission_webhook_admission_duration_seconds"


def test_every_pod_of_a_scaled_deployment_is_patched(
    cluster: Cluster, release: Release, webhook: Serve, enabled_namespace: str
) -> None:
    template = {"containers": [container("web", cpu="2")]}
    manifest = deployment("scaled", namespace=enabled_namespace, replicas=3, template=template)
    ours_before = buckets(webhook.metrics(), OURS)
    api_labels = {"name": release.webhook_name, "operation": "CREATE", "type": "admit"}
    api_before = buckets(cluster.raw_metrics(), API_SERVER, **api_labels)

    cluster.apply([manifest])
    cluster.wait_pods(enabled_namespace, 3, "app=scaled")
    started = time.monotonic()
    cluster.kubectl("scale", "deployment", "scaled", "-n", enabled_namespace, "--replicas=50")
    pods = cluster.wait_pods(enabled_namespace, 50, "app=scaled")
    scale_seconds = time.monotonic() - started

    assert len(pods) == 50
    for pod in pods:
        assert env_value(pod, "web", "WEB_CONCURRENCY") == "2", pod["metadata"]["name"]
        assert status(pod)["web"]["set"]["PYTHON_CPU_COUNT"] == "2"

    ours_after = buckets(webhook.metrics(), OURS)
    api_after = buckets(cluster.raw_metrics(), API_SERVER, **api_labels)
    calls = ours_after[float("inf")] - ours_before.get(float("inf"), 0.0)
    assert calls >= 50
    ms = 1000
    REPORT["scenario 7: pods created by the controllers"] = 50
    REPORT["scenario 7: 3 -> 50 replicas, all stored (s)"] = round(scale_seconds, 1)
    REPORT["scenario 7: webhook reviews"] = int(calls)
    REPORT["scenario 7: webhook p50 / p99 (ms, own histogram)"] = (
        f"{quantile(ours_after, ours_before, 0.5) * ms:.1f} / "
        f"{quantile(ours_after, ours_before, 0.99) * ms:.1f}"
    )
    REPORT["scenario 7: API server p50 / p99 (ms, admission_duration_seconds)"] = (
        f"{quantile(api_after, api_before, 0.5) * ms:.1f} / "
        f"{quantile(api_after, api_before, 0.99) * ms:.1f}"
    )
    REPORT["scenario 7: API server buckets (le s: calls)"] = ", ".join(
        f"{le:g}: {int(api_after[le] - api_before.get(le, 0.0))}" for le in sorted(api_after)
    )
    cluster.kubectl("delete", "deployment", "scaled", "-n", enabled_namespace, "--wait=false")
