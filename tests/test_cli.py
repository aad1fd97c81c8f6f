"""The `mutate` command, run as users run it: a real subprocess on files and stdin."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.podgen import gunicorn, pod, review

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "webhook", "mutate", *args],
        input=stdin, capture_output=True, text=True, timeout=60, check=False,
    )


def test_every_example_has_its_expected_result() -> None:
    examples = sorted(p.name for p in EXAMPLES.glob("*.yaml"))
    assert examples
    assert examples == sorted(p.name for p in (EXAMPLES / "expected").glob("*.yaml"))


@pytest.mark.parametrize("name", sorted(p.stem for p in EXAMPLES.glob("*.yaml")))
def test_examples_turn_into_the_expected_result(name: str) -> None:
    result = run("-f", str(EXAMPLES / f"{name}.yaml"), "--no-registry")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (EXAMPLES / "expected" / f"{name}.yaml").read_text()
    assert result.stderr == ""


def env(obj: dict[str, Any], path: list[Any]) -> list[dict[str, Any]]:
    for key in path:
        obj = obj[key]
    return obj["containers"][0]["env"]  # type: ignore[no-any-return]


WORKLOADS = {
    "Deployment": ["spec", "template", "spec"],
    "StatefulSet": ["spec", "template", "spec"],
    "DaemonSet": ["spec", "template", "spec"],
    "ReplicaSet": ["spec", "template", "spec"],
    "Job": ["spec", "template", "spec"],
    "CronJob": ["spec", "jobTemplate", "spec", "template", "spec"],
}


def workload(kind: str) -> dict[str, Any]:
    template = {"metadata": {"labels": {"app": "x"}}, "spec": pod(gunicorn(cpu="3"))["spec"]}
    spec: dict[str, Any] = {"template": template}
    if kind == "CronJob":
        spec = {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": template}}}
    return {"apiVersion": "batch/v1" if "Job" in kind else "apps/v1", "kind": kind,
            "metadata": {"name": "x"}, "spec": spec}


@pytest.mark.parametrize("kind", list(WORKLOADS))
def test_every_workload_kind(kind: str) -> None:
    result = run("-f", "-", "-o", "json", "--no-registry", stdin=json.dumps(workload(kind)))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert env(out, WORKLOADS[kind])[0] == {"name": "WEB_CONCURRENCY", "value": "3"}


def test_multi_document_stream_and_list() -> None:
    docs = [pod(gunicorn(cpu="1")), {"apiVersion": "v1", "kind": "List", "items": [workload("Deployment")]}]
    result = run("-f", "-", "--no-registry", stdin=yaml.safe_dump_all(docs))
    assert result.returncode == 0, result.stderr
    first, second = list(yaml.safe_load_all(result.stdout))
    assert env(first, ["spec"])[0]["value"] == "1"
    assert env(second["items"][0], WORKLOADS["Deployment"])[0]["value"] == "3"


def test_patch_output_for_a_pod() -> None:
    result = run("-f", "-", "-o", "patch", "--no-registry", stdin=json.dumps(pod(gunicorn(cpu="2"))))
    ops = json.loads(result.stdout)
    assert [op["path"] for op in ops] == ["/metadata/annotations", "/spec/containers/0/env"]


def test_admission_review_in_gives_a_response_review_out() -> None:
    result = run("-f", "-", "-o", "json", "--no-registry", stdin=json.dumps(review(pod(gunicorn(cpu=None)))))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["response"] == {
        "uid": "u-1", "allowed": True,
        "warnings": ["container 'web' has no CPU limit; nothing injected"],
        "patchType": "JSONPatch", "patch": out["response"]["patch"],
    }
    assert "Warning: document 1: container 'web' has no CPU limit" in result.stderr


def test_warnings_go_to_stderr() -> None:
    p = pod(gunicorn(cpu="2", args=["-w", "2"]))
    result = run("-f", "-", "--no-registry", stdin=json.dumps(p))
    assert result.stderr == "Warning: document 1: container 'web': --workers 2 in args overrides WEB_CONCURRENCY\n"
    assert "WEB_CONCURRENCY" in result.stdout


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        ("", "- holds no document"),
        ("a: [unclosed", "- is not valid YAML or JSON"),
        ("- 1\n- 2\n", "document 1: expected a Kubernetes object, got list"),
        ("kind: Job\nmetadata: {name: j}\nspec: {template: []}\n", "document 1: Job has no spec.template"),
        ("kind: Deployment\nmetadata: {name: d}\n", "document 1: Deployment has no spec.template"),
        ("kind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n", "document 1: Pod p: pod spec.containers is missing or empty"),
        ("kind: List\nitems: {}\n", "document 1: a List needs an items array"),
        ("kind: AdmissionReview\napiVersion: admission.k8s.io/v1\n", "document 1: request is missing"),
        ("kind: Secret\n---\nkind: StatefulSet\nspec: {template: {spec: {}}}\n", "document 2: StatefulSet (unnamed): pod spec.containers"),
    ],
    ids=["empty", "bad-yaml", "not-object", "no-template", "no-spec", "no-containers", "bad-list",
         "bad-review", "second-doc"],
)
def test_invalid_input_exits_2_naming_the_problem(stdin: str, message: str) -> None:
    result = run("-f", "-", stdin=stdin)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_missing_file_exits_2() -> None:
    result = run("-f", "/nonexistent/pod.yaml")
    assert result.returncode == 2
    assert "cannot read /nonexistent/pod.yaml: No such file or directory" in result.stderr


def test_bad_setting_exits_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "webhook", "mutate", "-f", "-"], input="{}", capture_output=True, text=True,
        env={"CONCURRENCY_INJECTOR_MODE": "loud", "PATH": "/usr/bin:/bin"}, timeout=60, check=False,
    )
    assert result.returncode == 2
    assert "CONCURRENCY_INJECTOR_MODE='loud'" in result.stderr


def test_documents_without_a_pod_template_pass_through_unchanged_and_in_order() -> None:
    """`helm template ... | mutate -f -`: Services, ConfigMaps, CRDs and unknown kinds pass."""
    stream = (
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80}]}\n---\n"
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\nspec: {size: 3}\n---\n"
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  template:\n"
        "    spec:\n      containers:\n      - {name: web, image: x, command: [gunicorn, a],"
        " resources: {limits: {cpu: '2'}}}\n---\n"
        "apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata: {name: r}\n"
        "spec: {workloadRef: {kind: Deployment, name: d}}\n"
    )
    result = run("-f", "-", "--no-registry", stdin=stream)
    assert result.returncode == 0, result.stderr
    docs = list(yaml.safe_load_all(result.stdout))
    originals = list(yaml.safe_load_all(stream))
    assert [d["kind"] for d in docs] == ["Service", "Widget", "Deployment", "Rollout"]
    assert docs[0] == originals[0]
    assert docs[1] == originals[1]
    assert docs[3] == originals[3]
    env = docs[2]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env[0] == {"name": "WEB_CONCURRENCY", "value": "2"}
    assert docs[2]["spec"]["template"]["metadata"]["annotations"]  # created where it was missing
