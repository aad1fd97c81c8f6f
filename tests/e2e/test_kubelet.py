"""Scenarios 1 and 2 of the kind suite: what only a kubelet shows. The downward API resolved
inside the running container, gunicorn and uvicorn starting the injected worker count, and the
image label read from the registry the cluster pulls from."""

from __future__ import annotations

import pytest

from tests.apiserver.cluster import Cluster, status
from tests.apiserver.conftest import REPORT
from tests.e2e.conftest import InClusterWebhook, Settings
from tests.e2e.workloads import app_deployment, exec_in, running_pod, settled_worker_count

SERVERS = {
    "gunicorn": ["gunicorn", "--bind", "0.0.0.0:8000", "app:app"],
    "uvicorn": ["uvicorn", "app:asgi", "--host", "0.0.0.0", "--port", "8000"],
}


@pytest.mark.parametrize("server", sorted(SERVERS), ids=sorted(SERVERS))
def test_a_server_with_two_cpus_runs_two_workers(
    cluster: Cluster,
    settings: Settings,
    webhook: InClusterWebhook,
    enabled_namespace: str,
    server: str,
) -> None:
    cluster.apply(
        [
            app_deployment(
                server,
                namespace=enabled_namespace,
                image=settings.app_image,
                cpu="2",
                command=SERVERS[server],
            )
        ]
    )
    pod = running_pod(cluster, enabled_namespace, server)
    stored = cluster.pod(enabled_namespace, pod)
    assert status(stored)["web"]["source"] == "command"
    env = exec_in(cluster, enabled_namespace, pod, "sh", "-c", 'echo "$CPU_LIMIT $WEB_CONCURRENCY"')
    assert env == "2 2", env
    workers = settled_worker_count(cluster, enabled_namespace, pod)
    REPORT[f"scenario 1: {server} workers at limits.cpu 2"] = workers
    assert workers == 2
    # Gone before the shared scenarios count the webhook's requests.
    cluster.kubectl("delete", "deployment", server, "-n", enabled_namespace, "--wait=false")


def test_an_image_label_in_the_local_registry_makes_a_target(
    cluster: Cluster, settings: Settings, webhook: InClusterWebhook, enabled_namespace: str
) -> None:
    if not settings.app_image_in_registry:
        pytest.skip(
            "the test image was loaded with `kind load`, not pushed: no registry to read its label from"
        )
    # No command: the image's entrypoint is a script; only its label says gunicorn.
    cluster.apply(
        [
            app_deployment(
                "labelled",
                namespace=enabled_namespace,
                image=settings.app_image,
                cpu="1",
                command=None,
            )
        ]
    )
    pod = running_pod(cluster, enabled_namespace, "labelled")
    stored = cluster.pod(enabled_namespace, pod)
    assert status(stored)["web"]["source"] == "image-label"
    env = exec_in(cluster, enabled_namespace, pod, "sh", "-c", 'echo "$CPU_LIMIT $WEB_CONCURRENCY"')
    assert env == "1 1", env
    assert settled_worker_count(cluster, enabled_namespace, pod) == 1
    cluster.kubectl("delete", "deployment", "labelled", "-n", enabled_namespace, "--wait=false")
