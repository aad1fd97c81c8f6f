"""In-place resize on a real API server: `kubectl patch --subresource resize` of a pod the chart's
webhook patched at creation reaches the webhook (the chart's `pods/resize` UPDATE rule), is never
denied or patched, and warns exactly when the recorded worker count no longer matches.

There is no kubelet here: the pods stay Pending and unscheduled, and the API server accepts a
resize of such a pod (it only stores the desired resources; a kubelet would actuate them).
"""

from __future__ import annotations

import json
import time

import pytest

from tests.apiserver.cluster import Cluster, Doc, env_value, total
from tests.apiserver.scenarios import container, gunicorn_pod, pod
from tests.apiserver.webhooks import Serve

pytestmark = pytest.mark.apiserver

STALE = "concurrency_injector_resize_stale_total"
REQUESTS = "concurrency_injector_requests_total"


def resize(cluster: Cluster, namespace: str, name: str, cpu: str) -> tuple[list[str], Doc]:
    """Resize container `web` to `cpu` (requests and limits, so the QoS class stays); returns
    kubectl's warnings and the pod as stored after the resize."""
    body = {"spec": {"containers": [
        {"name": "web", "resources": {"requests": {"cpu": cpu}, "limits": {"cpu": cpu}}}]}}
    done = cluster.kubectl(
        "patch", "pod", name, "-n", namespace, "--subresource", "resize",
        "--type", "strategic", "-p", json.dumps(body), "-o", "json",
    )  # fmt: skip
    warnings = [line.removeprefix("Warning: ") for line in done.stderr.splitlines()
                if line.startswith("Warning: ")]  # fmt: skip
    return warnings, json.loads(done.stdout)


def created(cluster: Cluster, namespace: str, cpu: str, **meta: object) -> str:
    name = f"resize-{time.monotonic_ns()}"
    cluster.apply([gunicorn_pod(name, namespace=namespace, cpu=cpu, **meta)])
    return name


@pytest.mark.parametrize(
    ("first", "then", "warning"),
    [
        ("1", "2", "resize: 'web' keeps WEB_CONCURRENCY=1; recreate the pod (kubectl rollout "
                   "restart) to get 2"),
        ("4", "2", "resize: 'web' keeps WEB_CONCURRENCY=4; recreate the pod (kubectl rollout "
                   "restart) to get 2"),
        ("2", "2500m", None),
    ],
    ids=["up", "down", "same-count"],
)  # fmt: skip
def test_a_resize_warns_when_the_count_is_stale_and_is_never_denied(
    cluster: Cluster, webhook: Serve, enabled_namespace: str, first: str, then: str,
    warning: str | None,
) -> None:  # fmt: skip
    name = created(cluster, enabled_namespace, first)
    before = cluster.pod(enabled_namespace, name)
    assert env_value(before, "web", "WEB_CONCURRENCY") == str(int(first))
    stale = total(webhook.metrics(), STALE, runtime="gunicorn")

    warnings, after = resize(cluster, enabled_namespace, name, then)

    assert warnings == ([warning] if warning else [])
    stored = cluster.pod(enabled_namespace, name)
    assert stored["spec"]["containers"][0]["resources"]["limits"]["cpu"] == then  # not denied
    # Nothing patched: env and annotations are what creation left.
    assert stored["spec"]["containers"][0]["env"] == before["spec"]["containers"][0]["env"]
    assert stored["metadata"]["annotations"] == before["metadata"]["annotations"]
    assert after["spec"]["containers"][0]["env"] == before["spec"]["containers"][0]["env"]
    assert total(webhook.metrics(), STALE, runtime="gunicorn") == stale + (1 if warning else 0)


def test_a_resize_of_a_pod_the_webhook_did_not_patch_is_not_sent_to_it(
    cluster: Cluster, webhook: Serve, enabled_namespace: str
) -> None:
    """The chart's matchCondition sends a resize only for a pod with the status annotation."""
    name = f"plain-{time.monotonic_ns()}"
    cluster.apply([pod(name, namespace=enabled_namespace,
                       containers=[container("web", command=["postgres"], cpu="1")])])  # fmt: skip
    assert "concurrency-injector.io/status" not in (
        cluster.pod(enabled_namespace, name)["metadata"].get("annotations") or {})
    before = total(webhook.metrics(), REQUESTS)
    warnings, _ = resize(cluster, enabled_namespace, name, "2")
    assert warnings == []
    assert total(webhook.metrics(), REQUESTS) == before
