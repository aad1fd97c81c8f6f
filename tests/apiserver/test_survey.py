"""`survey` and `explain` against a real API server, as a read-only identity with limited RBAC.

Seeded across the profiles: Deployments (gunicorn -w 9 at 1 CPU; Celery without -c, its pods
bound to a 16-CPU Node object; Celery unscheduled), a StatefulSet (uvicorn without workers at
4 CPUs), a CronJob whose worker count comes from an envFrom ConfigMap, bare pods (granian, and
redis that is not Python), and a namespace the survey's ServiceAccount may not read. Every row
and the summary are asserted; lists are read in pages of 2 so `continue` is exercised.

SURVEY_CAPTURE=DIR writes the table and an `explain` output there (the README shows them).
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.apiserver.cluster import Cluster, Doc
from tests.apiserver.scenarios import container, deployment, pod
from tests.apiserver.webhooks import token_kubeconfig
from tests.servers import clean_env, cli_command

pytestmark = pytest.mark.apiserver

CELERY = ["celery", "-A", "proj", "worker", "--loglevel", "info"]
READ = ["get", "list"]
RESOURCES = {
    "": ["pods", "configmaps"],
    "apps": ["deployments", "statefulsets", "daemonsets", "replicasets"],
    "batch": ["jobs", "cronjobs"],
}


def node(name: str, cpus: int) -> Doc:
    """A Node object (there is no kubelet: the API server stores the status given at create)."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"concurrency-injector.io/survey-test": "true"}},
        "status": {"capacity": {"cpu": str(cpus), "memory": "64Gi", "pods": "110"}},
    }


def bind(cluster: Cluster, namespace: str, name: str, node_name: str) -> None:
    """The scheduler's binding subresource, as a scheduler would call it."""
    body = {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node_name},
    }
    cluster.core.create_namespaced_pod_binding(name, namespace, body, _preload_content=False)


def statefulset(name: str, *, namespace: str, template: Doc) -> Doc:
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "serviceName": name,
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": template},
        },
    }


def cronjob(name: str, *, namespace: str, template: Doc) -> Doc:
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "schedule": "0 3 * * *",
            "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never", **template}}}},
        },
    }


def reader_rbac(namespace: str, account: str) -> list[Doc]:
    """Read-only access for the survey: nodes and namespaces cluster-wide, the rest here only."""
    rules = [{"apiGroups": [g], "resources": r, "verbs": READ} for g, r in RESOURCES.items()]
    subject = {"kind": "ServiceAccount", "name": account, "namespace": namespace}
    cluster_name = f"{account}-{namespace}"
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account, "namespace": namespace}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": cluster_name},
            "rules": [{"apiGroups": [""], "resources": ["nodes", "namespaces"], "verbs": READ}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": cluster_name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_name},
            "subjects": [subject],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": account, "namespace": namespace},
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": account, "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
            "subjects": [subject],
        },
    ]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cli_command(), *args, "--no-registry"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=120,
        check=False,
    )


def row(namespace: str, kind: str, name: str, container_name: str, runtime: str, cpu: str,
        workers: int, source: str, would_set: str, verdict: str, reason: str) -> dict[str, Any]:
    return {
        "namespace": namespace, "kind": kind, "name": name, "container": container_name,
        "runtime": runtime, "cpuLimit": cpu, "currentWorkers": workers, "workersSource": source,
        "wouldSet": would_set, "verdict": verdict, "reason": reason,
    }


def test_survey_rows_and_summary_on_a_real_api_server(cluster: Cluster, tmp_path: Path) -> None:
    big, small = f"survey-16-{uuid.uuid4().hex[:6]}", f"survey-4-{uuid.uuid4().hex[:6]}"
    cluster.apply([node(big, 16), node(small, 4)])
    shop = cluster.namespace(prefix="shop")
    hidden = cluster.namespace(prefix="hidden")
    cluster.apply(reader_rbac(shop, "surveyor"))
    report_config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "report-config", "namespace": shop},
        "data": {"WEB_CONCURRENCY": "4"},
    }
    cluster.apply(
        [
            report_config,
            deployment("web", namespace=shop, replicas=1, template={"containers": [
                container("web", command=["gunicorn", "-w", "9", "app:app"], cpu="1"),
                container("proxy", command=["envoy", "-c", "/etc/envoy.yaml"], cpu="1"),
            ]}),
            deployment("worker", namespace=shop, replicas=2, template={
                "containers": [container("worker", command=CELERY, cpu="2")]}),
            deployment("worker-pending", namespace=shop, replicas=1, template={
                "containers": [container("worker", command=CELERY, cpu="1")]}),
            statefulset("api", namespace=shop, template={"containers": [
                container("api", command=["uvicorn", "app:app", "--host", "0.0.0.0"], cpu="4")]}),
            cronjob("report", namespace=shop, template={"containers": [container(
                "report", command=["gunicorn", "report:app"], cpu="2",
                envFrom=[{"configMapRef": {"name": "report-config"}}])]}),
            pod("granian", namespace=shop, nodeName=small, containers=[
                container("granian", command=["granian", "--workers", "2", "app:app"], cpu="2")]),
            pod("redis", namespace=shop, containers=[
                container("redis", command=["redis-server"], cpu="1", image="redis:7")]),
            deployment("secret-web", namespace=hidden, replicas=1, template={"containers": [
                container("web", command=["gunicorn", "-w", "9", "app:app"], cpu="1")]}),
        ]
    )
    for p in cluster.wait_pods(shop, 2, "app=worker"):
        bind(cluster, shop, p["metadata"]["name"], big)
    cluster.wait_pods(shop, 1, "app=web")
    token = cluster.kubectl("create", "token", "surveyor", "-n", shop).stdout.strip()
    kubeconfig = token_kubeconfig(cluster.kubeconfig, token, tmp_path / "surveyor")

    done = run_cli("survey", "--kubeconfig", str(kubeconfig), "-A", "-o", "json", "--page-size", "2")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    trapped = "trapped"
    assert result["rows"] == [
        row(shop, "CronJob", "report", "report", "gunicorn", "2", 4,
            "envFrom ConfigMap report-config WEB_CONCURRENCY", "nothing (the container sets it)",
            trapped, "4 workers on 2 CPUs: throttled when busy"),
        row(shop, "Deployment", "web", "web", "gunicorn", "1", 9, "flag -w",
            "WEB_CONCURRENCY=1", trapped, "9 workers on 1 CPU: throttled when busy"),
        row(shop, "Deployment", "worker", "worker", "celery", "2", 16,
            f"node CPU count (node {big})", "CELERY_WORKER_CONCURRENCY=2", trapped,
            "16 workers on 2 CPUs: throttled when busy"),
        row(shop, "Deployment", "worker-pending", "worker", "celery", "1", 16,
            f"node CPU count (largest node {big}, not scheduled)",
            "CELERY_WORKER_CONCURRENCY=1", trapped, "16 workers on 1 CPU: throttled when busy"),
        row(shop, "Pod", "granian", "granian", "granian", "2", 2, "flag --workers",
            "GRANIAN_WORKERS=2", "ok", "2 workers for 2 CPUs"),
        row(shop, "StatefulSet", "api", "api", "uvicorn", "4", 1, "uvicorn default",
            "WEB_CONCURRENCY=4", "under-used", "1 worker for 4 CPUs"),
    ], result["summary"]
    summary = result["summary"]
    assert {k: summary[k] for k in ("workloads", "containers", "trapped", "under-used", "ok", "unknown")} == {
        "workloads": 6, "containers": 6, "trapped": 4, "under-used": 1, "ok": 1, "unknown": 0}
    assert hidden in summary["forbidden"]
    assert shop not in summary["forbidden"]
    assert "kube-system" in summary["forbidden"]

    # One namespace, the table, as the admin; and explain on a live pod.
    table = run_cli("survey", "--kubeconfig", str(cluster.kubeconfig), "-n", shop)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["NAMESPACE", "KIND", "NAME"]
    assert lines[-1] == "6 Python containers in 6 workloads: 4 trapped, 1 under-used, 1 ok, 0 unknown"
    web_pod = cluster.pods(shop, "app=web")[0]["metadata"]["name"]
    explained = run_cli("explain", "--kubeconfig", str(cluster.kubeconfig), "--pod", f"{shop}/{web_pod}")
    assert explained.returncode == 0, explained.stderr
    assert explained.stdout.splitlines()[0] == f"Pod {shop}/{web_pod} container 'web': target (gunicorn)"
    assert f"Pod {shop}/{web_pod} container 'proxy': not-target" in explained.stdout
    capture = os.environ.get("SURVEY_CAPTURE")
    if capture:
        Path(capture).mkdir(parents=True, exist_ok=True)
        Path(capture, "survey.txt").write_text(table.stdout)
        Path(capture, "explain.txt").write_text(explained.stdout)
    cluster.kubectl("delete", "node", big, small, check=False)


def test_survey_of_a_namespace_it_may_not_read_says_so(cluster: Cluster, tmp_path: Path) -> None:
    shop = cluster.namespace(prefix="shop")
    hidden = cluster.namespace(prefix="hidden")
    cluster.apply(reader_rbac(shop, "surveyor"))
    token = cluster.kubectl("create", "token", "surveyor", "-n", shop).stdout.strip()
    kubeconfig = token_kubeconfig(cluster.kubeconfig, token, tmp_path / "surveyor")
    done = run_cli("survey", "--kubeconfig", str(kubeconfig), "-n", hidden)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == (
        f"0 Python containers in 0 workloads: 0 trapped, 0 under-used, 0 ok, 0 unknown; "
        f"not readable (403): {hidden}"
    )


def test_explain_of_a_pod_that_does_not_exist_exits_2(cluster: Cluster) -> None:
    shop = cluster.namespace(prefix="shop")
    done = run_cli("explain", "--kubeconfig", str(cluster.kubeconfig), "--pod", f"{shop}/ghost")
    assert done.returncode == 2
    assert done.stderr == f"concurrency-injector: Pod {shop}/ghost not found\n"


def test_survey_after_install_reads_injected_pods_and_flags_templates(
    cluster: Cluster, enabled_namespace: str
) -> None:
    """With the webhook serving: a bare pod is read as stored (the injected variable counts);
    a Deployment's row reads its template, and says that its pods were changed."""
    ns = enabled_namespace
    cluster.apply(
        [
            pod("solo", namespace=ns, containers=[container("web", cpu="2")]),
            deployment("web", namespace=ns, replicas=1, template={"containers": [
                container("web", command=["gunicorn", "-w", "9", "app:app"], cpu="1")]}),
        ]
    )
    cluster.wait_pods(ns, 1, "app=web")
    done = run_cli("survey", "--kubeconfig", str(cluster.kubeconfig), "-n", ns, "-o", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows"] == [
        row(ns, "Deployment", "web", "web", "gunicorn", "1", 9, "flag -w", "WEB_CONCURRENCY=1",
            "trapped", "9 workers on 1 CPU: throttled when busy; read from its template: its "
            "pods already carry the webhook's values"),
        row(ns, "Pod", "solo", "web", "gunicorn", "2", 2, "env WEB_CONCURRENCY",
            "WEB_CONCURRENCY=2", "ok", "2 workers for 2 CPUs"),
    ]
