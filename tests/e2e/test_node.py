"""What only a kubelet can answer: in-place resize, fractional limits, pod-level limits.

Each scenario runs a real gunicorn in a pod and reads, inside the running container, what the
kubelet resolved (`CPU_LIMIT` from the downward API), what the webhook set (`WEB_CONCURRENCY`)
and how many workers gunicorn started. The README's "In-place resize" and "What a target gets"
say what these tests assert.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.apiserver.cluster import ENABLED_LABEL, Cluster, Doc, status, wait_for
from tests.apiserver.conftest import REPORT
from tests.e2e.conftest import CHART, Helm, InClusterWebhook, Settings
from tests.e2e.workloads import app_pod, exec_in, running, settled_worker_count

# What the container sees: unset variables print as "-".
SEEN = 'echo "${CPU_LIMIT:--} ${WEB_CONCURRENCY:--} ${POD_CPU:--}"'


def seen(cluster: Cluster, namespace: str, name: str) -> tuple[str, str, str, int]:
    """(CPU_LIMIT, WEB_CONCURRENCY, POD_CPU, gunicorn workers) inside the running container."""
    cpu_limit, web_concurrency, pod_cpu = exec_in(
        cluster, namespace, name, "sh", "-c", SEEN
    ).split()
    return cpu_limit, web_concurrency, pod_cpu, settled_worker_count(cluster, namespace, name)


def web_status(pod: Doc) -> Any:
    return next(s for s in pod["status"]["containerStatuses"] if s["name"] == "web")


def resize(cluster: Cluster, namespace: str, name: str, cpu: str) -> Doc:
    """An in-place resize of the web container's CPU limit through the resize subresource;
    returns the pod once the kubelet reports the new limit as applied."""
    body = {"spec": {"containers": [{"name": "web", "resources": {"limits": {"cpu": cpu}}}]}}
    cluster.kubectl(
        "patch", "pod", name, "-n", namespace, "--subresource", "resize", "-p", json.dumps(body)
    )

    def applied() -> Doc | None:
        pod = cluster.pod(namespace, name)
        state = web_status(pod)
        limits = (state.get("resources") or {}).get("limits") or {}
        ready = state.get("ready") and "running" in (state.get("state") or {})
        return pod if limits.get("cpu") == cpu and ready else None

    pod: Doc = wait_for(applied, timeout=180, what=f"{name} resized to cpu {cpu}")
    return pod


@pytest.mark.parametrize(
    ("cpu", "expected"),
    [
        # floor(1.5) workers; the kubelet rounds the downward API's 1.5 up to 2 (divisor 1).
        ("1500m", ("2", "1", "2", 1)),
        ("2", ("2", "2", "2", 2)),
        ("500m", ("1", "1", "1", 1)),
    ],
    ids=["1500m", "2", "500m"],
)
def test_a_fractional_limit_floors_the_workers_and_the_kubelet_rounds_cpu_limit_up(
    cluster: Cluster,
    settings: Settings,
    webhook: InClusterWebhook,
    enabled_namespace: str,
    cpu: str,
    expected: tuple[str, str, str, int],
) -> None:
    name = f"frac-{cpu.lower()}"
    cluster.apply([app_pod(name, namespace=enabled_namespace, image=settings.app_image, cpu=cpu)])
    stored = running(cluster, enabled_namespace, name)
    assert status(stored)["web"]["source"] == "command"
    got = seen(cluster, enabled_namespace, name)
    REPORT[f"scenario: limits.cpu {cpu} (CPU_LIMIT, WEB_CONCURRENCY, downward API, workers)"] = got
    assert got == expected
    cluster.kubectl("delete", "pod", name, "-n", enabled_namespace, "--wait=false")


def test_a_pod_level_limit_alone_sets_workers_and_no_cpu_limit(
    cluster: Cluster, settings: Settings, webhook: InClusterWebhook, enabled_namespace: str
) -> None:
    """Pod-level resources (beta, on by default since 1.34): the container has no CPU limit of
    its own. The webhook sets the worker count from the pod's limit and leaves CPU_LIMIT out
    (SPEC: only where the container has its own limit); the downward API's answer for the
    container is read from the user's own variable and recorded."""
    name = "pod-level"
    cluster.apply(
        [
            app_pod(
                name, namespace=enabled_namespace, image=settings.app_image, cpu=None, pod_cpu="2"
            )
        ]
    )
    stored = running(cluster, enabled_namespace, name)
    recorded = status(stored)["web"]
    cpu_limit, web_concurrency, pod_cpu, workers = seen(cluster, enabled_namespace, name)
    REPORT[
        "scenario: pod-level limits.cpu 2 only (CPU_LIMIT, WEB_CONCURRENCY, downward API, workers)"
    ] = (
        cpu_limit,
        web_concurrency,
        pod_cpu,
        workers,
    )
    assert recorded["cpu"] == "2"
    assert (cpu_limit, web_concurrency, workers) == ("-", "2", 2)
    # The kubelet resolves a container's limits.cpu from the pod-level limit when the container
    # has none (KEP-2837): 2 here, not the node's allocatable CPU.
    assert pod_cpu == "2"
    cluster.kubectl("delete", "pod", name, "-n", enabled_namespace, "--wait=false")


@pytest.fixture
def resize_restart(
    cluster: Cluster, helm: Helm, settings: Settings, webhook: InClusterWebhook
) -> Iterator[None]:
    """The release with server.resizeRestart on for the test, then back as it was.

    A finished rollout is not enough: replicas of the old release still answer while they
    terminate. The setting is in force once a server-side dry run of a pod gets it."""
    namespace = cluster.namespace(labels={ENABLED_LABEL: "true"}, prefix="e2e")
    probe = yaml.safe_dump(app_pod("probe", namespace=namespace, image=settings.app_image, cpu="1"))

    def upgrade(on: bool) -> None:
        helm(
            "upgrade",
            settings.release,
            str(CHART),
            "--reuse-values",
            "--set",
            f"server.resizeRestart={str(on).lower()}",
            "--wait",
            "--timeout",
            "5m",
        )
        webhook.wait_rolled_out()

        def in_force() -> bool:
            out = cluster.kubectl(
                "create", "-f", "-", "--dry-run=server", "-o", "json", stdin=probe
            )
            got = "resizePolicy" in json.loads(out.stdout)["spec"]["containers"][0]
            return got == on

        wait_for(in_force, timeout=120, what=f"server.resizeRestart={on} in force")

    upgrade(True)
    try:
        yield
    finally:
        upgrade(False)


def resized_from_one_to_two(
    cluster: Cluster, namespace: str, image: str, name: str, *, report: str
) -> tuple[Doc, Doc, tuple[str, str, str, int]]:
    """A gunicorn pod started at 1 CPU (seen: 1 1 1, one worker), then resized to 2: the pod as
    created, the pod once the kubelet applied the resize, and what the container sees then."""
    cluster.apply([app_pod(name, namespace=namespace, image=image, cpu="1")])
    stored = running(cluster, namespace, name)
    assert seen(cluster, namespace, name) == ("1", "1", "1", 1)
    after_pod = resize(cluster, namespace, name, "2")
    after = seen(cluster, namespace, name)
    REPORT[
        f"scenario: resize 1 -> 2 CPUs, {report} (CPU_LIMIT, WEB_CONCURRENCY, downward API, workers)"
    ] = after
    return stored, after_pod, after


def test_a_resize_without_restart_keeps_every_value(
    cluster: Cluster, settings: Settings, webhook: InClusterWebhook, enabled_namespace: str
) -> None:
    """Default resizePolicy (NotRequired): the kubelet changes the cgroup limit in place and the
    process keeps the env it started with: CPU_LIMIT, WEB_CONCURRENCY and the workers stay."""
    stored, after_pod, after = resized_from_one_to_two(
        cluster, enabled_namespace, settings.app_image, "resize-keep", report="no restart"
    )
    assert "resizePolicy" not in stored["spec"]["containers"][0]
    assert web_status(after_pod)["restartCount"] == 0
    assert after == ("1", "1", "1", 1)
    cluster.kubectl("delete", "pod", "resize-keep", "-n", enabled_namespace, "--wait=false")


def test_a_resize_with_resize_restart_renews_cpu_limit_but_not_the_worker_count(
    cluster: Cluster,
    settings: Settings,
    webhook: InClusterWebhook,
    enabled_namespace: str,
    resize_restart: None,
) -> None:
    """server.resizeRestart gives the target {cpu: RestartContainer}: the kubelet restarts the
    container, which re-resolves the downward API (CPU_LIMIT follows the new limit), while the
    literal WEB_CONCURRENCY the webhook wrote at creation stays, and so does the worker count."""
    stored, after_pod, after = resized_from_one_to_two(
        cluster, enabled_namespace, settings.app_image, "resize-restart", report="RestartContainer"
    )
    assert stored["spec"]["containers"][0]["resizePolicy"] == [
        {"resourceName": "cpu", "restartPolicy": "RestartContainer"}
    ]
    assert web_status(after_pod)["restartCount"] == 1
    assert after == ("2", "1", "2", 1)
    cluster.kubectl("delete", "pod", "resize-restart", "-n", enabled_namespace, "--wait=false")
