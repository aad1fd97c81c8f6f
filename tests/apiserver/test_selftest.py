"""The chart's `helm test` hook on a real API server: `concurrency-injector selftest` with the
hook's own arguments and RBAC (a token of the hook's ServiceAccount), run on the host, since
there is no kubelet here to run the hook's pod.

It passes while the API server reaches the webhook, and fails, naming the likely causes, when
the webhook cannot be reached: the chart's configuration naming a port its Service does not
have, and a webhook configuration whose caBundle does not match the serving certificate.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.apiserver.cluster import Cluster, Doc, environ_without_ours, total, wait_for
from tests.apiserver.conftest import ControlPlane, Release, wrong_service_port
from tests.apiserver.webhooks import ROOT, Serve, config_copy, token_kubeconfig
from webhook.certificates.authority import build_ca

pytestmark = pytest.mark.apiserver

REQUESTS = "concurrency_injector_requests_total"
PASSED = "selftest: passed: the webhook patched a dry-run pod in {} (limits.cpu 2: WEB_CONCURRENCY=2)"
CAUSES = (
    "came back unpatched",
    "failurePolicy Ignore admitted the pod",
    "a NetworkPolicy does not admit the API server to the webhook pods",
    "does not match the serving certificate",
    "the webhook Service has no ready endpoints",
    "is not labelled concurrency-injector.io/enabled=true",
    "apiserver_admission_webhook_fail_open_count",
)


def hooks(docs: list[Doc]) -> dict[str, Doc]:
    return {d["kind"]: d for d in docs
            if (d["metadata"].get("annotations") or {}).get("helm.sh/hook") == "test"}  # fmt: skip


def selftest(args: list[str], kubeconfig: Path) -> subprocess.CompletedProcess[str]:
    """The hook pod's command line, run on the host with the hook's ServiceAccount."""
    return subprocess.run(
        [sys.executable, "-m", "webhook", *args, f"--kubeconfig={kubeconfig}"],
        cwd=ROOT, env=environ_without_ours(), capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip


def hook_account(cluster: Cluster, release: Release, docs: list[Doc], directory: Path) -> Path:
    """Apply the hook's objects but its pod; a kubeconfig with its ServiceAccount's token."""
    test = hooks(docs)
    cluster.apply([d for kind, d in test.items() if kind != "Pod"])
    name = test["ServiceAccount"]["metadata"]["name"]
    token = cluster.kubectl("create", "token", name, "-n", release.namespace).stdout.strip()
    directory.mkdir(parents=True, exist_ok=True)
    return token_kubeconfig(cluster.kubeconfig, token, directory / "kubeconfig")


@pytest.fixture
def chart_hook(cluster: Cluster, release: Release, webhook: Serve, tmp_path: Path) -> Iterator[tuple[list[str], Path]]:
    """The default hook (a labelled namespace of its own): its pod's args and its account."""
    docs = release.render(tests=True)
    kubeconfig = hook_account(cluster, release, docs, tmp_path / "hook")
    yield hooks(docs)["Pod"]["spec"]["containers"][0]["args"], kubeconfig
    # As `hook-succeeded` does; waited for, so the next test makes the namespace anew.
    namespace = hooks(docs)["Namespace"]["metadata"]["name"]
    cluster.kubectl("delete", "namespace", namespace, "--wait=true", "--timeout=90s", check=False)


def test_selftest_passes_when_the_api_server_reaches_the_webhook(
    cluster: Cluster, webhook: Serve, chart_hook: tuple[list[str], Path]
) -> None:
    args, kubeconfig = chart_hook
    namespace = args[1].removeprefix("--namespace=")
    before = total(webhook.metrics(), REQUESTS, outcome="patched")
    done = selftest(args, kubeconfig)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1] == PASSED.format(namespace)
    assert total(webhook.metrics(), REQUESTS, outcome="patched") == before + 1
    assert cluster.pods(namespace) == []  # a dry run stores nothing


def test_selftest_fails_and_says_why_when_the_service_cannot_be_reached(
    cluster: Cluster, release: Release, webhook: Serve, chart_hook: tuple[list[str], Path]
) -> None:
    args, kubeconfig = chart_hook
    with wrong_service_port(cluster, release):
        done = wait_for(
            lambda: (d := selftest(args, kubeconfig)).returncode != 0 and d,
            what="the API server to fail calling the webhook",
        )
    assert done.returncode == 3, done.stdout + done.stderr
    for cause in CAUSES:
        assert cause in done.stderr, (cause, done.stderr)
    assert "the caBundle in MutatingWebhookConfiguration ci-concurrency-injector does not" in (
        done.stderr)
    wait_for(lambda: selftest(args, kubeconfig).returncode == 0, what="the webhook back")


def test_selftest_fails_when_the_ca_bundle_is_wrong(
    cluster: Cluster, control_plane: ControlPlane, release: Release, webhook: Serve, tmp_path: Path
) -> None:
    """A copy of the chart's configuration, calling the same server with another CA, for a
    namespace of its own; the hook rendered for that namespace (`test.namespace`)."""
    label = {"concurrency-injector.io/scenario": "selftest-wrong-ca"}
    namespace = cluster.namespace(labels=label)
    name = "selftest-wrong-ca"
    config = config_copy(
        release.webhook_config, name=name, ca=build_ca().cert_pem, namespace_labels=label,
        url=f"https://{webhook.address}:{webhook.port}/mutate",
    )  # fmt: skip
    cluster.apply([config])
    try:
        docs = release.render(f"test.namespace={namespace}", tests=True)
        kubeconfig = hook_account(cluster, release, docs, tmp_path / "hook")
        args = hooks(docs)["Pod"]["spec"]["containers"][0]["args"]
        assert f"--namespace={namespace}" in args
        done = selftest(args, kubeconfig)
    finally:
        cluster.kubectl("delete", "mutatingwebhookconfiguration", name)
    assert done.returncode == 3, done.stdout + done.stderr
    for cause in CAUSES:
        assert cause in done.stderr, (cause, done.stderr)
    assert base64.b64decode(config["webhooks"][0]["clientConfig"]["caBundle"]) != webhook.ca


def test_selftest_names_an_unlabelled_namespace_when_it_may_read_it(
    cluster: Cluster, webhook: Serve
) -> None:
    """With credentials that may read the namespace (here the admin's), the label is checked."""
    namespace = cluster.namespace()
    done = selftest(["selftest", f"--namespace={namespace}"], cluster.kubeconfig)
    assert done.returncode == 3, done.stdout + done.stderr
    first = done.stderr.split("Likely causes:\n", 1)[1].splitlines()[0]
    assert first == f"  - namespace {namespace} is not labelled concurrency-injector.io/enabled=true"


def test_selftest_without_rbac_is_an_environment_error(
    cluster: Cluster, release: Release, webhook: Serve, enabled_namespace: str,
    chart_hook: tuple[list[str], Path],
) -> None:  # fmt: skip
    """The hook's account may create pods in its own test namespace only."""
    _, kubeconfig = chart_hook
    started = time.monotonic()
    done = selftest(["selftest", f"--namespace={enabled_namespace}"], kubeconfig)
    assert done.returncode == 3, done.stdout + done.stderr
    # Retried only while a new RoleBinding may not have taken effect, not for the 60 s a new
    # namespace may take to get its ServiceAccount (the refusal names the account).
    assert time.monotonic() - started < 30
    assert f"not allowed to create pods (dry run) in namespace {enabled_namespace}" in done.stderr
