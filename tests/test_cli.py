"""The `mutate` command, run as users run it: a real subprocess on files and stdin."""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonpatch
import orjson
import pytest
import yaml

from tests.podgen import gunicorn, pod, review
from webhook.cli import build_parser
from webhook.config import Settings
from webhook.core.decision import decide
from webhook.documents import Document, documents
from webhook.mutate import run_mutate
from webhook.workloads import InputError

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
    assert "Warning: <stdin>:1: AdmissionReview Pod default/p: container 'web' has no CPU limit" in result.stderr


def test_warnings_go_to_stderr() -> None:
    p = pod(gunicorn(cpu="2", args=["-w", "2"]))
    result = run("-f", "-", "--no-registry", stdin=json.dumps(p))
    assert result.stderr == (
        "Warning: <stdin>:1: Pod default/p: container 'web': --workers 2 in args overrides WEB_CONCURRENCY\n"
    )
    assert "WEB_CONCURRENCY" in result.stdout


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        ("", "<stdin> holds no document"),
        ("a: [unclosed", "<stdin> is not valid YAML or JSON"),
        ("- 1\n- 2\n", "<stdin>:1: expected a Kubernetes object, got list"),
        ("kind: Job\nmetadata: {name: j}\nspec: {template: []}\n", "<stdin>:1: Job j has no spec.template"),
        ("kind: Deployment\nmetadata: {name: d}\n", "<stdin>:1: Deployment d has no spec.template"),
        ("kind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n", "<stdin>:1: Pod p: pod spec.containers is missing or empty"),
        ("kind: List\nitems: {}\n", "<stdin>:1: a List needs an items array"),
        ("kind: AdmissionReview\napiVersion: admission.k8s.io/v1\n", "<stdin>:1: AdmissionReview: request is missing"),
        ("kind: Secret\n---\nkind: StatefulSet\nspec: {template: {spec: {}}}\n", "<stdin>:3: StatefulSet (unnamed): pod spec.containers"),
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


# --- bad input: exit 2 with a message naming the file and the object, never a traceback ---------


def run_limited(*args: str, memory: int) -> subprocess.CompletedProcess[str]:
    """`run` with the address space limited to `memory` bytes (RLIMIT_AS), as a container is."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    return subprocess.run(
        [sys.executable, "-m", "webhook", "mutate", *args],
        capture_output=True, text=True, timeout=120, check=False, preexec_fn=limit,
    )


def test_latin1_text_exits_2_naming_the_byte_and_its_offset(tmp_path: Path) -> None:
    source = tmp_path / "latin1.yaml"
    source.write_bytes("kind: Pod\nmetadata: {name: café}\n".encode("latin-1"))
    result = run("-f", str(source))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"concurrency-injector: {source} is not UTF-8 text: byte 0xe9 at offset 30 "
        "(invalid continuation byte); save it as UTF-8\n"
    )


def test_binary_data_exits_2_naming_the_byte_and_its_offset(tmp_path: Path) -> None:
    source = tmp_path / "image.png"
    source.write_bytes(bytes(range(256)))
    result = run("-f", str(source), "-o", "json")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"concurrency-injector: {source} is not UTF-8 text: byte 0x80 at offset 128 "
        "(invalid start byte); save it as UTF-8\n"
    )


# Nine levels of nine aliases: about 4 * 10^8 nodes written out, from 9 lines.
BILLION_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)


def test_an_alias_bomb_is_refused_under_a_memory_limit(tmp_path: Path) -> None:
    source = tmp_path / "bomb.yaml"
    source.write_text(BILLION_LAUGHS)
    result = run_limited("-f", str(source), "-o", "json", memory=512 << 20)
    assert (result.returncode, result.stdout) == (2, ""), result.stderr[-2000:]
    assert result.stderr == (
        f"concurrency-injector: {source}:1: YAML aliases expand this document by 490329036 "
        "nodes, over the 100000 allowed (an alias bomb?); refused\n"
    )


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        (BILLION_LAUGHS, "<stdin>:1: YAML aliases expand this document by 490329036 nodes"),
        ("kind: Service\n---\na: &a [*a]\n", "<stdin>:3: a YAML alias refers to itself; refused"),
        ("kind: Service\n---\n" + "[" * 300 + "]" * 300, "<stdin>:3: nested more than 200 levels deep"),
        ("a: !!python/object:os.system {}\n", "could not determine a constructor for the tag"),
    ],
    ids=["alias-bomb", "recursive-alias", "deep", "python-tag"],
)
def test_input_past_a_bound_exits_2(stdin: str, message: str) -> None:
    result = run("-f", "-", stdin=stdin)
    assert (result.returncode, result.stdout) == (2, "")
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_few_aliases_are_fine() -> None:
    stream = (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n"
        "  - &web {name: web, image: x, command: [gunicorn, a], resources: {limits: {cpu: '2'}}}\n"
        "  - <<: *web\n    name: web2\n"
    )
    result = run("-f", "-", "--no-registry", "-o", "json", stdin=stream)
    assert result.returncode == 0, result.stderr
    containers = json.loads(result.stdout)["spec"]["containers"]
    assert [c["env"][0] for c in containers] == [{"name": "WEB_CONCURRENCY", "value": "2"}] * 2


WORKLOAD = """\
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: shop}}
spec:
  template:
    spec:
      containers:
      - name: web
        image: registry.example/app:1
        command: [gunicorn, app:app]
        resources: {{limits: {{cpu: {cpu}}}}}
"""


@pytest.mark.parametrize("cpu", ['"abc"', "[1]", "true", "{a: 1}", "1e100000"],
                         ids=["text", "list", "bool", "object", "huge"])
def test_an_invalid_cpu_limit_is_a_warning_and_exit_2_whatever_its_type(cpu: str) -> None:
    """The same rule for every wrong value: the decision skips the container with a warning,
    as the server does (it never blocks a pod); `mutate` prints it and exits 2, because the
    API server would refuse the manifest."""
    result = run("-f", "-", "--no-registry", stdin=WORKLOAD.format(cpu=cpu))
    assert result.returncode == 2
    assert result.stderr == (
        "Warning: <stdin>:5: Deployment shop/web: container 'web' has an invalid CPU limit; "
        "nothing injected\n"
    )
    service, deployment = yaml.safe_load_all(result.stdout)
    assert service["kind"] == "Service"
    assert "env" not in deployment["spec"]["template"]["spec"]["containers"][0]


REVIEW_WITH_INVALID_CPU = """\
apiVersion: admission.k8s.io/v1
kind: AdmissionReview
request:
  uid: u1
  kind: {group: "", version: v1, kind: Pod}
  resource: {group: "", version: v1, resource: pods}
  operation: CREATE
  object:
    metadata: {name: p}
    spec:
      containers: [{name: web, command: [gunicorn, app:app], resources: {limits: {cpu: abc}}}]
"""


@pytest.mark.parametrize("output", ["yaml", "json"])
def test_a_review_answered_with_an_invalid_value_warning_is_written_in_every_format(
    output: str,
) -> None:
    """The response's warnings are plain strings (a reason that was a str subclass once made
    the YAML writer fail with a traceback)."""
    result = run("-f", "-", "--no-registry", "-o", output, stdin=REVIEW_WITH_INVALID_CPU)
    assert result.returncode == 2, result.stderr
    answer = yaml.safe_load(result.stdout)
    assert answer["response"]["warnings"] == [
        "container 'web' has an invalid CPU limit; nothing injected"
    ]


def test_a_capped_worker_count_is_warned_and_exits_0() -> None:
    result = run("-f", "-", "--no-registry", stdin=WORKLOAD.format(cpu='"1e9"'))
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        "Warning: <stdin>:5: Deployment shop/web: container 'web': WEB_CONCURRENCY 1000000000 "
        "for 1000000000 CPU capped to 4096 (the bound)\n"
    )


def test_messages_name_the_file_line_and_object(tmp_path: Path) -> None:
    source = tmp_path / "app.yaml"
    source.write_text(
        "apiVersion: v1\nkind: List\nitems:\n"
        "- apiVersion: v1\n  kind: Pod\n  metadata: {name: lone}\n"
        "  spec: {containers: [{name: web, image: x, command: [gunicorn, a]}]}\n"
        "---\n" + WORKLOAD.format(cpu="'1'").replace("command: [gunicorn, app:app]",
                                                    "command: [gunicorn, -w, '4', app:app]")
        + "---\nkind: Job\nmetadata: {name: nightly, namespace: ops}\nspec: {template: 3}\n"
    )
    result = run("-f", str(source), "--no-registry")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"Warning: {source}:1: Pod lone: container 'web' has no CPU limit; nothing injected",
        f"Warning: {source}:13: Deployment shop/web: container 'web': --workers 4 in args "
        "overrides WEB_CONCURRENCY, above the CPU limit (1)",
        f"concurrency-injector: {source}:25: Job ops/nightly has no spec.template",
    ]
    assert result.stdout == ""


# --- output: written as documents are read, in the format of the whole list ----------------------


def whole_output(results: list[tuple[Any, list[Any]]], output: str) -> str:
    """The format `mutate` always printed: every result first, then the whole list at once."""
    if output == "yaml":
        return yaml.safe_dump_all([r for r, _ in results], sort_keys=False, default_flow_style=False)
    values = [p for _, p in results] if output == "patch" else [r for r, _ in results]
    if output == "json" and len(values) > 1:
        values = [{"apiVersion": "v1", "kind": "List", "items": values}]
    return orjson.dumps(values[0] if len(values) == 1 else values, option=orjson.OPT_INDENT_2).decode() + "\n"


STREAM = [
    pod(gunicorn(cpu="2")),
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": []}},
    {},
    pod(gunicorn(cpu="1", args=["-w", "2"]), annotations={"a": "é\nb"}),
]


@pytest.mark.parametrize("count", [1, 2, 4])
@pytest.mark.parametrize("output", ["yaml", "json", "patch"])
def test_streamed_output_is_the_whole_list_format(tmp_path: Path, output: str, count: int) -> None:
    source = tmp_path / "in.yaml"
    source.write_text(yaml.safe_dump_all(STREAM[:count]))
    out, err = io.StringIO(), io.StringIO()
    assert run_mutate(str(source), output, Settings(no_registry=True), stdout=out, stderr=err) == 0
    read = list(yaml.safe_load_all(source.read_text()))  # in the file's order of keys
    patches = [decide(d, Settings().options).patch if d.get("kind") == "Pod" else [] for d in read]
    results = [(jsonpatch.apply_patch(d, p) if p else d, p) for d, p in zip(read, patches, strict=True)]
    assert out.getvalue() == whole_output(results, output)


def test_documents_are_built_one_at_a_time() -> None:
    """A document is handed on before the next one is even parsed (memory follows one)."""
    found = documents(b"kind: Service\n---\nkind: [unclosed\n", "x.yaml")
    assert next(found) == Document({"kind": "Service"}, 1)
    with pytest.raises(InputError, match=r"x\.yaml is not valid YAML or JSON"):
        next(found)


# --- --help ----------------------------------------------------------------------------------------


def test_every_option_of_every_command_says_what_it_does() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(commands.choices) >= {"serve", "mutate"}
    for name, sub in [("", parser), *commands.choices.items()]:
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
    for choice in commands._choices_actions:
        assert choice.help, f"{choice.dest} has no help"
    assert parser.epilog is not None
    for text in ("0  done", "2  bad input", "3  the environment", "CONCURRENCY_INJECTOR_"):
        assert text in parser.epilog


def test_help_names_exit_codes_and_each_flags_variable() -> None:
    result = subprocess.run([sys.executable, "-m", "webhook", "mutate", "--help"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0
    assert "exit codes:" in result.stdout
    assert "[CONCURRENCY_INJECTOR_NO_REGISTRY]" in result.stdout
