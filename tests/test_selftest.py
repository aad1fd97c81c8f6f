"""`concurrency-injector selftest` without a cluster: the verdict on a returned pod, the
warnings read from the API server's headers, the dry-run pod itself, and the exit code when no
API server answers. tests/apiserver/test_selftest.py runs it against a real one."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml

from tests.podgen import review
from webhook.admission.handler import AdmissionHandler
from webhook.admission.review import FAIL_OPEN_WARNING
from webhook.config import Settings
from webhook.exitcodes import EXIT_ENVIRONMENT
from webhook.selftest import judge, probe_pod, warnings_of

ROOT = Path(__file__).resolve().parents[1]


def patched(settings: Settings | None = None) -> tuple[dict[str, Any], list[str]]:
    """The probe pod as the webhook's handler answers it (what the API server would return)."""
    pod = probe_pod("img:1")
    answer = AdmissionHandler(settings or Settings(), record=False).handle_now(review(pod))
    patch = json.loads(base64.b64decode(answer.response.get("patch") or "W10="))
    return jsonpatch.apply_patch(pod, patch), answer.warnings


def test_the_probe_pod_is_a_target_and_gets_two_workers() -> None:
    pod, warnings = patched()
    outcome = judge(pod, warnings, namespace="ns", labelled=None, webhook_config="w")
    assert outcome.passed
    assert outcome.message == (
        "passed: the webhook patched a dry-run pod in ns (limits.cpu 2: WEB_CONCURRENCY=2)")
    assert warnings == []


def test_audit_mode_passes_on_the_warning() -> None:
    pod, warnings = patched(Settings(mode="audit"))
    assert "concurrency-injector.io/status" not in pod["metadata"].get("annotations", {})
    outcome = judge(pod, warnings, namespace="ns", labelled=None, webhook_config=None)
    assert (outcome.passed, outcome.message) == (
        True, "passed: the webhook reviewed a dry-run pod in ns (audit mode)")


def test_an_unpatched_pod_fails_naming_the_causes() -> None:
    outcome = judge(probe_pod("img:1"), [], namespace="ns", labelled=None, webhook_config="ci-w")
    assert not outcome.passed
    lines = outcome.message.splitlines()
    assert lines[0].startswith("failed: a dry-run pod with limits.cpu 2 in namespace ns came back")
    assert lines[1:-1] == [
        "  - a NetworkPolicy does not admit the API server to the webhook pods (on the host "
        "network it needs networkPolicy.apiServerCidrs)",
        "  - the caBundle in MutatingWebhookConfiguration ci-w does not match the serving "
        "certificate",
        "  - the webhook Service has no ready endpoints (pods not ready, a wrong selector or "
        "port)",
        "  - namespace ns is not labelled concurrency-injector.io/enabled=true",
    ]
    assert "apiserver_admission_webhook_fail_open_count" in lines[-1]


def test_an_unlabelled_namespace_is_named_first_when_known() -> None:
    outcome = judge(probe_pod("img:1"), [], namespace="ns", labelled=False, webhook_config=None)
    causes = outcome.message.split("Likely causes:\n")[1].splitlines()
    assert causes[0] == "  - namespace ns is not labelled concurrency-injector.io/enabled=true"
    assert sum("not labelled" in c for c in causes) == 1
    assert "the caBundle in the webhook's MutatingWebhookConfiguration" in outcome.message


def test_the_webhooks_own_failure_is_told_apart() -> None:
    outcome = judge(probe_pod("img:1"), [FAIL_OPEN_WARNING], namespace="ns", labelled=True,
                    webhook_config=None)  # fmt: skip
    assert not outcome.passed
    assert outcome.message.startswith("failed: the webhook was reached but failed internally")


class Headers:
    """urllib3's HTTPHeaderDict, as far as warnings_of reads it (a fake: labelled)."""

    def __init__(self, values: list[str]) -> None:
        self.values = values

    def getlist(self, name: str) -> list[str]:
        return self.values if name == "Warning" else []


def test_warnings_are_read_from_the_headers() -> None:
    headers = Headers(['299 - "resize: \'web\' keeps WEB_CONCURRENCY=1"', '299 - "say \\"hi\\""',
                       "not a warning"])  # fmt: skip
    assert warnings_of(headers) == ["resize: 'web' keeps WEB_CONCURRENCY=1", 'say "hi"']


def test_the_probe_pod_is_valid_and_restricted() -> None:
    import kubernetes_validate

    pod = probe_pod("ghcr.io/x/y:1")
    kubernetes_validate.validate(pod, "1.31.0", strict=True)
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (c,) = spec["containers"]
    assert c["securityContext"] == {"allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}  # fmt: skip
    assert probe_pod("i")["metadata"]["name"] != probe_pod("i")["metadata"]["name"]


def test_no_api_server_is_an_environment_error(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:9",
                                               "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
    }))  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "webhook", "selftest", "-n", "ns", f"--kubeconfig={kubeconfig}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == EXIT_ENVIRONMENT, done.stderr
    assert done.stderr.startswith("selftest: cannot ask the API server:"), done.stderr


@pytest.mark.parametrize("args", [["selftest"], ["selftest", "-n"]], ids=["no-namespace", "empty"])
def test_the_namespace_is_required(args: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "webhook", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 2
    assert "--namespace" in done.stderr
