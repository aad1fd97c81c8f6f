"""Scenarios 1 and 13: self-managed TLS against a live Secret and webhook configuration, through
the chart's `clientConfig.service`; the chart's RBAC is enough and no more."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.apiserver.cluster import ENABLED_LABEL, Cluster, status, total, untouched
from tests.apiserver.conftest import (
    ControlPlane,
    Release,
    free_port,
    self_managed_env,
)
from tests.apiserver.scenarios import gunicorn_pod
from tests.apiserver.webhooks import Serve, start_serve, wait_healthy

pytestmark = pytest.mark.apiserver


def secret_pair(cluster: Cluster, release: Release) -> tuple[bytes, bytes, str]:
    """(ca.crt, tls.crt, resourceVersion) of the self-managed Secret as stored."""
    secret = cluster.core.read_namespaced_secret(release.tls_secret, release.namespace)
    return (
        base64.b64decode(secret.data["ca.crt"]),
        base64.b64decode(secret.data["tls.crt"]),
        secret.metadata.resource_version,
    )


def served(serve: Serve) -> x509.Certificate:
    return x509.load_der_x509_certificate(serve.get("/healthz")[1])


def test_the_webhook_creates_its_secret_and_the_api_server_trusts_it(
    cluster: Cluster, release: Release, webhook: Serve, enabled_namespace: str
) -> None:
    secret = cluster.core.read_namespaced_secret(release.tls_secret, release.namespace)
    assert secret.type == "kubernetes.io/tls"
    assert secret.metadata.labels["app.kubernetes.io/managed-by"] == "concurrency-injector"
    ca, _, _ = secret_pair(cluster, release)
    stored = cluster.admission.read_mutating_webhook_configuration(
        release.webhook_config["metadata"]["name"]
    )
    # The chart's clientConfig.service, unchanged; the server wrote only the caBundle.
    client_config = stored.webhooks[0].client_config
    assert client_config.url is None
    assert client_config.service.name == release.service
    assert base64.b64decode(client_config.ca_bundle) == ca
    # The served certificate is signed by the CA the API server was given.
    served(webhook).verify_directly_issued_by(x509.load_pem_x509_certificate(ca))
    names = served(webhook).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert release.server_name in names.value.get_values_for_type(x509.DNSName)

    cluster.apply([gunicorn_pod("web", namespace=enabled_namespace, cpu="2")])
    pod = cluster.pod(enabled_namespace, "web")
    assert status(pod)["web"]["set"]["WEB_CONCURRENCY"] == "2"


def test_a_second_replica_converges_and_renewal_keeps_admitting(
    cluster: Cluster,
    control_plane: ControlPlane,
    release: Release,
    webhook: Serve,
    sa_kubeconfig: Path,
    tmp_path: Path,
) -> None:
    """Renewal is forced by the short TLS_CERT_LIFETIME the suite runs the webhook with."""
    namespace = cluster.namespace(labels={ENABLED_LABEL: "true"})
    ca_before, leaf_before, _ = secret_pair(cluster, release)
    # Counted from here: other scenarios make the webhook unreachable on purpose.
    failed_open = total(
        cluster.raw_metrics(), "apiserver_admission_webhook_fail_open_count", name=release.webhook_name
    )
    address = control_plane.advertise_address
    second = start_serve(
        self_managed_env(release, sa_kubeconfig, tmp_path / "tls"),
        address=address,
        port=free_port(address),
        server_name=release.server_name,
        log=tmp_path / "second.log",
    )
    second.ca = ca_before
    try:
        wait_healthy(second)
        ca_now, leaf_now, _ = secret_pair(cluster, release)
        # The second replica adopted the stored CA and pair instead of writing its own.
        assert ca_now == ca_before
        assert served(second) in (
            x509.load_pem_x509_certificate(leaf_before),
            x509.load_pem_x509_certificate(leaf_now),
        )
        assert "created TLS Secret" not in second.log_text()

        # Create pods until the serving certificate has been renewed and served by both.
        serial = served(webhook).serial_number
        created: list[str] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            name = f"web-{len(created)}"
            cluster.apply([gunicorn_pod(name, namespace=namespace, cpu="1")])
            created.append(name)
            first_now, second_now = served(webhook), served(second)
            if first_now.serial_number != serial and first_now == second_now:
                break
            time.sleep(1)
        else:
            pytest.fail("the serving certificate was not renewed within 90 s")
        # A few more after the switch.
        for n in range(3):
            name = f"after-{n}"
            cluster.apply([gunicorn_pod(name, namespace=namespace, cpu="1")])
            created.append(name)
        ca_after, leaf_after, _ = secret_pair(cluster, release)
        assert ca_after == ca_before, "a leaf renewal must not replace the CA"
        assert x509.load_pem_x509_certificate(leaf_after).serial_number != serial
        for name in created:
            pod = cluster.pod(namespace, name)
            assert status(pod)["web"]["set"]["WEB_CONCURRENCY"] == "1", name
        assert len(created) >= 5
        # Nothing failed open on the way.
        metrics = cluster.raw_metrics()
        assert total(
            metrics, "apiserver_admission_webhook_fail_open_count", name=release.webhook_name
        ) == failed_open
    finally:
        second.stop()


def sa_api(sa_kubeconfig: Path) -> Any:
    return config.new_client_from_config(config_file=str(sa_kubeconfig))  # type: ignore[no-untyped-call]


def status_of(call: object) -> int:
    try:
        call()  # type: ignore[operator]
    except ApiException as exc:
        return int(exc.status)
    return 200


def test_the_service_account_can_do_what_the_webhook_needs_and_nothing_more(
    cluster: Cluster, release: Release, webhook: Serve, sa_kubeconfig: Path
) -> None:
    core: Any = client.CoreV1Api(sa_api(sa_kubeconfig))
    admission: Any = client.AdmissionregistrationV1Api(sa_api(sa_kubeconfig))
    cluster.core.create_namespaced_secret(
        "kube-system", {"metadata": {"name": "not-yours"}, "stringData": {"k": "v"}}
    )
    cluster.core.create_namespaced_secret(
        release.namespace, {"metadata": {"name": "not-yours-either"}, "stringData": {"k": "v"}}
    )
    other = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "someone-elses"},
        "webhooks": [],
    }
    cluster.apply([other])
    try:
        # What it needs.
        assert status_of(lambda: core.read_namespaced_secret(release.tls_secret, release.namespace)) == 200
        assert status_of(lambda: core.read_namespaced_config_map("absent", "default")) == 404
        name = release.webhook_config["metadata"]["name"]
        assert status_of(lambda: admission.read_mutating_webhook_configuration(name)) == 200
        # What it must not do.
        assert status_of(lambda: core.read_namespaced_secret("not-yours", "kube-system")) == 403
        assert status_of(lambda: core.read_namespaced_secret("not-yours-either", release.namespace)) == 403
        assert status_of(lambda: core.list_namespaced_secret(release.namespace)) == 403
        assert status_of(lambda: core.list_secret_for_all_namespaces()) == 403
        assert status_of(lambda: core.list_namespaced_config_map("default")) == 403
        assert status_of(
            lambda: core.create_namespaced_secret("kube-system", {"metadata": {"name": "x"}})
        ) == 403
        assert status_of(
            lambda: admission.patch_mutating_webhook_configuration(
                "someone-elses", [{"op": "add", "path": "/metadata/labels", "value": {"a": "b"}}],
                _content_type="application/json-patch+json",
            )
        ) == 403
        assert status_of(lambda: admission.read_mutating_webhook_configuration("someone-elses")) == 403
        assert status_of(lambda: admission.list_mutating_webhook_configuration()) == 403
    finally:
        cluster.kubectl("delete", "secret", "not-yours", "-n", "kube-system", check=False)
        cluster.kubectl("delete", "secret", "not-yours-either", "-n", release.namespace, check=False)
        cluster.kubectl("delete", "mutatingwebhookconfiguration", "someone-elses", check=False)


def test_the_release_namespace_pods_are_never_patched(
    cluster: Cluster, release: Release, webhook: Serve
) -> None:
    """The webhook's own namespace is excluded even when labelled (it must not admit itself)."""
    cluster.kubectl("label", "namespace", release.namespace, f"{ENABLED_LABEL}=true", "--overwrite")
    try:
        before = total(webhook.metrics(), "concurrency_injector_requests_total")
        cluster.apply([gunicorn_pod("own", namespace=release.namespace, cpu="1")])
        assert untouched(cluster.pod(release.namespace, "own"))
        assert total(webhook.metrics(), "concurrency_injector_requests_total") == before
    finally:
        cluster.kubectl("label", "namespace", release.namespace, f"{ENABLED_LABEL}-")
        cluster.kubectl("delete", "pod", "own", "-n", release.namespace, "--wait=false", check=False)



@pytest.mark.parametrize("how", ["client-side", "server-side"])
def test_reapplying_the_chart_keeps_the_ca_bundle(
    cluster: Cluster, release: Release, webhook: Serve, enabled_namespace: str, how: str
) -> None:
    """An upgrade re-applies the webhook configuration without a caBundle (the server owns it):
    the API server must keep the one the server wrote, so pods stay patched."""
    name = release.webhook_config["metadata"]["name"]
    before = cluster.admission.read_mutating_webhook_configuration(name)
    args = ["--server-side", "--field-manager=helm", "--force-conflicts"] if how == "server-side" else []
    cluster.apply([release.webhook_config], *args)
    after = cluster.admission.read_mutating_webhook_configuration(name)
    assert after.webhooks[0].client_config.ca_bundle == before.webhooks[0].client_config.ca_bundle
    cluster.apply([gunicorn_pod("after-upgrade", namespace=enabled_namespace, cpu="1")])
    assert status(cluster.pod(enabled_namespace, "after-upgrade"))["web"]["set"]["WEB_CONCURRENCY"] == "1"
