"""The chart's NetworkPolicy, enforced by the cluster's network (kindnetd where kind's own node
image runs, kube-router's firewall where hack/e2e-kind.sh built the node image): another pod
cannot open the webhook's port, the API server still calls the webhook, and the same pod reaches
other pods (so a refusal is the policy, not a broken network)."""

from __future__ import annotations

from tests.apiserver.cluster import ENABLED_LABEL, STATUS_ANNOTATION, Cluster, wait_for
from tests.apiserver.conftest import REPORT, Release
from tests.apiserver.scenarios import gunicorn_pod
from tests.e2e.conftest import InClusterWebhook, Settings
from tests.e2e.workloads import app_pod, exec_in, running

# Prints "open" or "closed: <why>" for a TCP connection to HOST:PORT within 5 s.
CONNECT = """\
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()
    print("open")
except OSError as exc:
    print(f"closed: {exc}")
"""


def connect(cluster: Cluster, namespace: str, pod: str, host: str, port: int) -> str:
    return exec_in(cluster, namespace, pod, "python3", "-c", CONNECT, host, str(port))


def test_other_pods_cannot_reach_the_webhook_and_the_api_server_can(
    cluster: Cluster,
    settings: Settings,
    release: Release,
    webhook: InClusterWebhook,
    enabled_namespace: str,
) -> None:
    # A client and a peer in a namespace of their own: not the release's, not kube-system.
    cluster.apply(
        [
            app_pod("client", namespace=enabled_namespace, image=settings.app_image, cpu="1"),
            app_pod("peer", namespace=enabled_namespace, image=settings.app_image, cpu="1"),
        ]
    )
    running(cluster, enabled_namespace, "client")
    peer_ip = running(cluster, enabled_namespace, "peer")["status"]["podIP"]
    webhook_pod = webhook.pods()[0]
    webhook_ip = webhook_pod["status"]["podIP"]
    port = webhook_pod["spec"]["containers"][0]["ports"][0]["containerPort"]
    service = f"{webhook.deployment}.{webhook.namespace}.svc"
    service_port = next(d for d in release.docs if d["kind"] == "Service")["spec"]["ports"][0][
        "port"
    ]

    # The same client reaches an unprotected pod: the network works.
    wait_for(
        lambda: connect(cluster, enabled_namespace, "client", peer_ip, 8000) == "open",
        timeout=60,
        what="the client reaching the peer pod",
    )
    to_pod = connect(cluster, enabled_namespace, "client", webhook_ip, port)
    to_service = connect(cluster, enabled_namespace, "client", service, service_port)
    REPORT["scenario: NetworkPolicy, a pod to the webhook pod / its Service"] = (
        f"{to_pod} / {to_service}"
    )
    assert to_pod.startswith("closed"), to_pod
    assert to_service.startswith("closed"), to_service

    # The API server, calling from a node address the policy lets in, still gets through.
    namespace = cluster.namespace(labels={ENABLED_LABEL: "true"}, prefix="e2e")
    cluster.apply([gunicorn_pod("after-policy", namespace=namespace, cpu="1")])
    stored = cluster.pod(namespace, "after-policy")
    assert STATUS_ANNOTATION in (stored["metadata"].get("annotations") or {})
    for name in ("client", "peer"):
        cluster.kubectl("delete", "pod", name, "-n", enabled_namespace, "--wait=false")
