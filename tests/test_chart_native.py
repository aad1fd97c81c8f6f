"""The chart's `mode` (webhook, native, hybrid), rendered by a real helm: the policies it renders
are the `policy` command's output, with only the settings variables taken from the values."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from webhook.cli import build_parser
from webhook.config import Settings
from webhook.native import command

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "concurrency-injector"
GENERATED = CHART / "files" / "native-policy.json"
POLICIES = [
    "MutatingAdmissionPolicy",
    "MutatingAdmissionPolicyBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
]
ENV_PREFIX = "CONCURRENCY_INJECTOR_"

Doc = dict[str, Any]


def helm_template(tools: Path, *sets: str, kube_version: str = "1.37.2") -> subprocess.CompletedProcess[str]:
    args = [str(tools / "helm"), "template", "ci", str(CHART), "--namespace", "injector-system"]
    args += ["--kube-version", kube_version]
    for s in sets:
        args += ["--set-json", s.removeprefix("json:")] if s.startswith("json:") else ["--set", s]
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def render(tools: Path, *sets: str, kube_version: str = "1.37.2") -> list[Doc]:
    run = helm_template(tools, *sets, kube_version=kube_version)
    assert run.returncode == 0, run.stderr
    return [d for d in yaml.safe_load_all(run.stdout) if d]


def policy_output(settings: Settings, *args: str) -> list[Doc]:
    out = io.StringIO()
    parsed = build_parser().parse_args(["policy", "-o", "json", *args])
    assert command.run(parsed, settings, stdout=out) == 0
    items: list[Doc] = json.loads(out.getvalue())["items"]
    return items


def test_the_committed_policy_is_the_command_output() -> None:
    """hack/native-policy.sh writes it; regenerate when the profiles or the CEL change."""
    assert json.loads(GENERATED.read_text()) == {"apiVersion": "v1", "kind": "List", "items": policy_output(Settings())}


def test_webhook_mode_renders_no_policy(tools: Path) -> None:
    kinds = [d["kind"] for d in render(tools)]
    assert "Deployment" in kinds
    assert not set(POLICIES) & set(kinds)


def test_native_mode_renders_only_the_policies(tools: Path) -> None:
    docs = render(tools, "mode=native")
    assert [d["kind"] for d in docs] == POLICIES
    assert [d["metadata"]["name"] for d in docs] == ["ci-concurrency-injector"] * 2 + ["ci-concurrency-injector-warnings"] * 2
    assert docs[1]["spec"]["policyName"] == docs[0]["metadata"]["name"]
    assert docs[3]["spec"]["policyName"] == docs[2]["metadata"]["name"]
    excluded = docs[0]["spec"]["matchConstraints"]["namespaceSelector"]["matchExpressions"][1]
    assert excluded == {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "kube-node-lease", "injector-system"]}


def test_hybrid_mode_renders_the_webhook_and_the_policies(tools: Path) -> None:
    kinds = [d["kind"] for d in render(tools, "mode=hybrid")]
    assert {"Deployment", "MutatingWebhookConfiguration", *POLICIES} <= set(kinds)


@pytest.mark.parametrize(("version", "api"), [("1.35.4", "v1beta1"), ("1.36.0", "v1"), ("1.37.2", "v1")])
def test_mutating_policy_api_follows_the_cluster(tools: Path, version: str, api: str) -> None:
    docs = render(tools, "mode=native", kube_version=version)
    assert docs[0]["apiVersion"] == f"admissionregistration.k8s.io/{api}"


SETTINGS = (
    "json:server.workersPerCpu=1.5",
    "server.minWorkers=2",
    "server.maxWorkers=8",
    "server.rounding=ceil",
    "server.resizeRestart=true",
    "server.pythonCpuCount=false",
    "server.memoryPerWorker=256Mi",
    "profiles.disabled={celery,dramatiq}",
)


def test_the_chart_policy_is_the_command_output_for_the_same_values(tools: Path) -> None:
    """The hybrid webhook's settings, given to `policy`, give the policy the chart renders."""
    docs = render(tools, "mode=hybrid", *SETTINGS)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    env = {
        e["name"]: e["value"]
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        if e["name"].startswith(ENV_PREFIX) and "value" in e
    }
    expected = policy_output(Settings.from_env(env))
    rendered = [d for d in docs if d["kind"] in POLICIES]
    for want, got in zip(expected, rendered, strict=True):
        want_vars = {v["name"]: v["expression"] for v in want["spec"].get("variables", [])}
        got_vars = {v["name"]: v["expression"] for v in got["spec"].get("variables", [])}
        # The command writes a quantity as plain bytes; the chart passes the value on as written.
        if want_vars:
            assert want_vars.pop("memoryPerWorker") == '"268435456"'
            assert got_vars.pop("memoryPerWorker") == '"256Mi"'
        assert got_vars == want_vars
        for key in ("mutations", "validations", "matchConditions", "failurePolicy", "reinvocationPolicy"):
            assert got["spec"].get(key) == want["spec"].get(key), key


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("mode=native", "server.mode=audit"), "has no policy form"),
        (("mode=hybrid", "profiles.extra[0].name=acme", "profiles.extra[0].env={ACME}"), "profiles.extra"),
        (("mode=kubelet",), "mode"),
    ],
    ids=["audit", "extra-profiles", "unknown-mode"],
)
def test_modes_refuse_what_they_cannot_do(tools: Path, sets: tuple[str, ...], message: str) -> None:
    run = helm_template(tools, *sets)
    assert run.returncode != 0
    assert message in run.stderr
