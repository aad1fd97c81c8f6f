"""What the kubelet scenarios run: app Deployments, a pod creation loop, processes in a container."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tests.apiserver.cluster import STATUS_ANNOTATION, Cluster, Doc
from tests.apiserver.scenarios import gunicorn_pod

# Counts the workers of the server that is PID 1: its children, less multiprocessing's
# resource tracker. Run inside the container with its own Python (the image has no ps).
COUNT_WORKERS = """\
import os
workers = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        stat = open(f"/proc/{pid}/stat").read()
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ").decode()
    except OSError:
        continue
    if int(stat.rsplit(")", 1)[1].split()[1]) == 1 and "resource_tracker" not in cmdline:
        workers.append(cmdline)
print(len(workers))
"""


def app_deployment(
    name: str, *, namespace: str, image: str, cpu: str, command: list[str] | None
) -> Doc:
    """One replica of the test app image: small requests (kind nodes share a CI runner), the
    CPU limit under test."""
    container: Doc = {
        "name": "web",
        "image": image,
        "resources": {
            "requests": {"cpu": "50m", "memory": "64Mi"},
            "limits": {"cpu": cpu, "memory": "256Mi"},
        },
    }
    if command is not None:
        container["command"] = command
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [container]},
            },
        },
    }


def running_pod(cluster: Cluster, namespace: str, app: str) -> str:
    cluster.kubectl("rollout", "status", f"deployment/{app}", "-n", namespace, "--timeout=300s")
    pods = [
        p
        for p in cluster.pods(namespace, f"app={app}")
        if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
    ]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    name: str = pods[0]["metadata"]["name"]
    return name


def exec_in(cluster: Cluster, namespace: str, pod: str, *command: str) -> str:
    out: str = cluster.kubectl("exec", "-n", namespace, pod, "--", *command).stdout
    return out.strip()


def worker_count(cluster: Cluster, namespace: str, pod: str) -> int:
    return int(exec_in(cluster, namespace, pod, "python3", "-c", COUNT_WORKERS))


def settled_worker_count(cluster: Cluster, namespace: str, pod: str, *, seconds: float = 60) -> int:
    """The worker count once it has stayed the same for 5 s (servers start workers one by one)."""
    deadline = time.monotonic() + seconds
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = worker_count(cluster, namespace, pod)
        if now != last:
            last, since = now, time.monotonic()
        elif now > 0 and time.monotonic() - since >= 5:
            return now
        time.sleep(1)
    return last


@dataclass
class Loop:
    """What a creation loop saw: pods created, creations refused, pods stored unpatched."""

    created: int = 0
    failed: list[str] = field(default_factory=list)
    unpatched: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"{self.created} created, {len(self.failed)} failed, {len(self.unpatched)} unpatched"


def pending_pod(name: str, namespace: str) -> Doc:
    """A gunicorn pod with a CPU limit that no node takes: admitted and stored, never run."""
    pod = gunicorn_pod(name, namespace=namespace, cpu="1")
    pod["spec"]["nodeSelector"] = {"concurrency-injector.io/e2e": "never"}
    return pod


@contextmanager
def creating_pods(cluster: Cluster, namespace: str, *, interval: float = 0.2) -> Iterator[Loop]:
    """Create pods one after another in a thread until the block ends; record each outcome."""
    from kubernetes.client.exceptions import ApiException

    loop = Loop()
    stop = threading.Event()
    # A client of its own: the official client is not shared across threads here.
    own = Cluster(kubeconfig=cluster.kubeconfig, kubectl_bin=cluster.kubectl_bin)

    def run() -> None:
        n = 0
        while not stop.is_set():
            name = f"loop-{n}"
            n += 1
            try:
                stored: Any = own.core.create_namespaced_pod(
                    namespace, pending_pod(name, namespace)
                )
            except ApiException as exc:
                loop.failed.append(f"{name}: {exc.status} {exc.reason}")
            else:
                loop.created += 1
                if STATUS_ANNOTATION not in (stored.metadata.annotations or {}):
                    loop.unpatched.append(name)
            stop.wait(interval)

    thread = threading.Thread(target=run, name="creation-loop", daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        stop.set()
        thread.join(timeout=60)


GUNICORN = ["gunicorn", "--bind", "0.0.0.0:8000", "app:app"]


def app_pod(
    name: str,
    *,
    namespace: str,
    image: str,
    cpu: str | None,
    pod_cpu: str | None = None,
) -> Doc:
    """A gunicorn pod of the test image: small requests (a kind node has the host's 2 CPUs and
    the control plane runs beside it), the CPU limit under test on the container or the pod."""
    limits: dict[str, str] = {"memory": "256Mi"}
    if cpu is not None:
        limits["cpu"] = cpu
    container: Doc = {
        "name": "web",
        "image": image,
        "command": GUNICORN,
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": limits},
        # What the downward API gives for this container's limits.cpu, whether or not the
        # webhook sets CPU_LIMIT: the user's own variable, which the webhook leaves alone.
        "env": [
            {
                "name": "POD_CPU",
                "valueFrom": {
                    "resourceFieldRef": {
                        "containerName": "web",
                        "resource": "limits.cpu",
                        "divisor": "1",
                    }
                },
            }
        ],
    }
    spec: Doc = {"containers": [container], "terminationGracePeriodSeconds": 2}
    if pod_cpu is not None:
        spec["resources"] = {"limits": {"cpu": pod_cpu, "memory": "256Mi"}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": spec,
    }


def running(cluster: Cluster, namespace: str, name: str) -> Doc:
    cluster.kubectl(
        "wait", "--for=condition=Ready", f"pod/{name}", "-n", namespace, "--timeout=300s"
    )
    return cluster.pod(namespace, name)
