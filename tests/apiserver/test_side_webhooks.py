"""Scenarios 8, 9, 11 and 12 (resizePolicy): the chart's webhook configuration copied to call a
second serve process (rendered with other values) or a tiny webhook of the test's own."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.apiserver.cluster import (
    ENABLED_LABEL,
    Cluster,
    Doc,
    env_of,
    env_value,
    status,
    total,
    untouched,
    wait_for,
)
from tests.apiserver.conftest import ControlPlane, Release
from tests.apiserver.scenarios import container, gunicorn_pod, pod
from tests.apiserver.webhooks import Serve, Sidecar, black_hole, sidecar_webhook

pytestmark = pytest.mark.apiserver

FAIL_OPEN = "apiserver_admission_webhook_fail_open_count"


def fail_open(cluster: Cluster, webhook_name: str) -> float:
    return total(cluster.raw_metrics(), FAIL_OPEN, name=webhook_name)


def test_failure_policy_ignore_admits_pods_when_the_webhook_is_down(
    cluster: Cluster,
    control_plane: ControlPlane,
    release: Release,
    webhook: Serve,
    side_webhook: Any,
) -> None:
    side = side_webhook("failopen")
    timeout = side_config_timeout(release)
    assert release.webhook_config["webhooks"][0]["failurePolicy"] == "Ignore"
    cluster.apply([gunicorn_pod("up", namespace=side.namespace, cpu="1")])
    assert not untouched(cluster.pod(side.namespace, "up"))
    assert fail_open(cluster, side.webhook_name) == 0

    # Stopped: connection refused, the pod is admitted unpatched at once.
    side.serve.stop()
    started = time.monotonic()
    cluster.apply([gunicorn_pod("down", namespace=side.namespace, cpu="1")])
    assert time.monotonic() - started < timeout
    assert untouched(cluster.pod(side.namespace, "down"))
    assert fail_open(cluster, side.webhook_name) == 1

    # Hung: the API server waits timeoutSeconds, then admits it unpatched.
    with black_hole(control_plane.url_address) as port:
        config = cluster.admission.read_mutating_webhook_configuration(side.config_name)
        url = f"https://{control_plane.url_address}:{port}/mutate"
        cluster.kubectl(
            "patch", "mutatingwebhookconfiguration", side.config_name, "--type=json",
            "-p", json.dumps([{"op": "replace", "path": "/webhooks/0/clientConfig/url", "value": url}]),
        )
        assert config.webhooks[0].timeout_seconds == timeout
        time.sleep(2)  # the API server's webhook informer picks the change up
        started = time.monotonic()
        cluster.apply([gunicorn_pod("hung", namespace=side.namespace, cpu="1")])
        took = time.monotonic() - started
    assert timeout - 0.5 <= took < timeout + 5, took
    assert untouched(cluster.pod(side.namespace, "hung"))
    assert fail_open(cluster, side.webhook_name) == 2


def side_config_timeout(release: Release) -> int:
    seconds: int = release.webhook_config["webhooks"][0]["timeoutSeconds"]
    return seconds


def reinvoked_pod(
    cluster: Cluster, control_plane: ControlPlane, release: Release, directory: Path, name: str
) -> tuple[str, Doc]:
    """A pod created in a namespace where a second webhook, called after ours, adds a gunicorn
    container: (namespace, the pod as stored)."""
    assert release.webhook_config["webhooks"][0]["reinvocationPolicy"] == "IfNeeded"
    label = {"concurrency-injector.io/scenario": "reinvoke"}
    namespace = cluster.namespace(labels={ENABLED_LABEL: "true", **label})
    sidecar = Sidecar(
        container=container("metrics", cpu="1", command=["gunicorn", "metrics:app"]),
        env={"name": "ADDED_BY_SIDECAR", "value": "1"},
    )
    address = control_plane.url_address
    with sidecar_webhook(sidecar, address=address, directory=directory) as (port, ca):
        # Named after the chart's configuration: the API server calls it second, so ours must
        # be called again to see the container it adds.
        config = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "zz-sidecar"},
            "webhooks": [
                {
                    "name": "sidecar.tests.concurrency-injector.io",
                    "admissionReviewVersions": ["v1"],
                    "clientConfig": {
                        "url": f"https://{address}:{port}/",
                        "caBundle": base64.b64encode(ca).decode(),
                    },
                    "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                               "resources": ["pods"]}],
                    "namespaceSelector": {"matchLabels": label},
                    "sideEffects": "None",
                    "failurePolicy": "Fail",
                    "reinvocationPolicy": "Never",
                    "timeoutSeconds": 5,
                }
            ],
        }
        cluster.apply([config])
        try:
            time.sleep(2)  # the API server's webhook informer picks the configuration up
            cluster.apply([gunicorn_pod(name, namespace=namespace, cpu="2")])
        finally:
            cluster.kubectl("delete", "mutatingwebhookconfiguration", "zz-sidecar", check=False)
    return namespace, cluster.pod(namespace, name)


def test_reinvocation_after_another_webhook_adds_a_container(
    cluster: Cluster, control_plane: ControlPlane, release: Release, webhook: Serve, tmp_path: Path
) -> None:
    _, stored = reinvoked_pod(cluster, control_plane, release, tmp_path, "web")
    assert [c["name"] for c in stored["spec"]["containers"]] == ["web", "metrics"]
    for name, workers in (("web", "2"), ("metrics", "1")):
        names = [e["name"] for e in env_of(stored, name)]
        for variable in ("WEB_CONCURRENCY", "CPU_LIMIT", "PYTHON_CPU_COUNT"):
            assert names.count(variable) == 1, (name, names)
        assert env_value(stored, name, "WEB_CONCURRENCY") == workers
    assert [e["name"] for e in env_of(stored, "web")].count("ADDED_BY_SIDECAR") == 1
    assert set(status(stored)) == {"web", "metrics"}


def audit_annotations(log: Path, namespace: str, name: str) -> dict[str, str] | None:
    """The annotations of the audit event that completed the creation of pod namespace/name."""
    for line in log.read_text().splitlines():
        event = json.loads(line)
        ref = event.get("objectRef", {})
        if (
            ref.get("resource") == "pods"
            and ref.get("namespace") == namespace
            and ref.get("name") == name
            and event.get("verb") == "create"
            and event.get("stage") == "ResponseComplete"
        ):
            found: dict[str, str] = event.get("annotations", {})
            return found
    return None


def test_reinvocation_audit_annotation_names_every_injected_container(
    cluster: Cluster, control_plane: ControlPlane, release: Release, webhook: Serve, tmp_path: Path
) -> None:
    if control_plane.audit_log is None:
        pytest.skip("the API server was started without an audit log")
    namespace, stored = reinvoked_pod(cluster, control_plane, release, tmp_path, "audited")
    assert set(status(stored)) == {"web", "metrics"}
    log = control_plane.audit_log
    found = wait_for(lambda: audit_annotations(log, namespace, "audited"), what="the audit event")
    # One key per container, so the container patched on reinvocation is named too.
    assert found.get(f"{release.webhook_name}/injected-web") == "2", found
    assert found.get(f"{release.webhook_name}/injected-metrics") == "1", found


def test_audit_mode_patches_nothing_warns_and_annotates_the_audit_log(
    cluster: Cluster, control_plane: ControlPlane, webhook: Serve, side_webhook: Any
) -> None:
    if control_plane.audit_log is None:
        pytest.skip("the API server was started without an audit log")
    side = side_webhook("audit", "server.mode=audit")
    done = cluster.apply([gunicorn_pod("surveyed", namespace=side.namespace, cpu="2")])
    assert untouched(cluster.pod(side.namespace, "surveyed"))
    assert "Warning: audit: would set" in done.stderr, done.stderr
    log = control_plane.audit_log
    found = wait_for(
        lambda: audit_annotations(log, side.namespace, "surveyed"), what="the pod's audit event"
    )
    assert found[f"{side.webhook_name}/mode"] == "audit"
    assert found[f"{side.webhook_name}/injected-web"] == "2"


def test_resize_restart_adds_a_resize_policy_the_api_server_accepts(
    cluster: Cluster, webhook: Serve, side_webhook: Any
) -> None:
    side = side_webhook("resize", "server.resizeRestart=true")
    sidecar = container("log", cpu="500m", command=["sh", "-c", "tail -f /dev/null"],
                        restartPolicy="Always")
    init = container("migrate", cpu="1", command=["gunicorn", "--check-config", "app:app"])
    manifest = pod(
        "resizable",
        namespace=side.namespace,
        containers=[container("web", cpu="2")],
        initContainers=[init, sidecar],
    )
    cluster.apply([manifest])
    stored = cluster.pod(side.namespace, "resizable")
    web = stored["spec"]["containers"][0]
    assert {"resourceName": "cpu", "restartPolicy": "RestartContainer"} in web["resizePolicy"]
    for init_container in stored["spec"]["initContainers"]:
        assert "resizePolicy" not in init_container or init_container["name"] == "log"
