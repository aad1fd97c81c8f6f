"""Native mode without a cluster: the `policy` command, the classifier, the webhook's side of
hybrid mode. The API server suite (tests/apiserver/test_native.py) proves the CEL itself."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
import yaml

from tests.podgen import container, pod
from webhook.cli import build_parser
from webhook.config import Settings
from webhook.core.decision import decide
from webhook.native import command
from webhook.native.classify import decided, millis

NATIVE = "concurrency-injector.io/native"


def run_policy(*args: str, settings: Settings | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    parsed = build_parser().parse_args(["policy", *args])
    code = command.run(parsed, settings or Settings(), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(
    ("version", "api"),
    [
        ("1.34", "admissionregistration.k8s.io/v1beta1"),
        ("1.35.4", "admissionregistration.k8s.io/v1beta1"),
        ("1.36", "admissionregistration.k8s.io/v1"),
        ("v1.37.2", "admissionregistration.k8s.io/v1"),
    ],
    ids=["1.34", "1.35.4", "1.36", "v1.37.2"],
)
def test_api_version_follows_the_kubernetes_version(version: str, api: str) -> None:
    code, out, _ = run_policy("--kube-version", version)
    docs = list(yaml.safe_load_all(out))
    assert code == 0
    assert [d["kind"] for d in docs] == [
        "MutatingAdmissionPolicy",
        "MutatingAdmissionPolicyBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ]
    assert {d["apiVersion"] for d in docs[:2]} == {api}
    assert docs[0]["spec"]["failurePolicy"] == "Ignore"
    assert docs[0]["spec"]["reinvocationPolicy"] == "IfNeeded"
    assert docs[3]["spec"]["validationActions"] == ["Warn"]


@pytest.mark.parametrize(
    "version", ["1.33", "1.20", "one.two", ""], ids=["1.33", "1.20", "words", "empty"]
)
def test_an_unsupported_kube_version_exits_2(version: str) -> None:
    code, out, err = run_policy("--kube-version", version)
    assert (code, out) == (2, "")
    assert err.startswith("concurrency-injector: --kube-version")


def test_audit_mode_has_no_policy() -> None:
    code, _, err = run_policy(settings=Settings(mode="audit"))
    assert code == 2
    assert "audit" in err


def test_the_command_line_prints_json_with_exit_0() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "webhook", "policy", "-o", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert '"kind": "List"' in done.stdout


def test_the_settings_are_literal_variables_the_chart_can_replace() -> None:
    settings = Settings(
        workers_per_cpu=__import__("decimal").Decimal("1.5"), max_workers=8, rounding="ceil"
    )
    _, out, _ = run_policy(settings=settings)
    variables = {
        v["name"]: v["expression"] for v in next(yaml.safe_load_all(out))["spec"]["variables"]
    }
    assert variables["workersPerCpu"] == '"1.5"'
    assert variables["maxWorkers"] == "8"
    assert variables["rounding"] == '"ceil"'


@pytest.mark.parametrize(
    ("cpu", "expected"),
    [(None, 0), ("2", 2000), ("500m", 500), ("1.5", 1500), ("0.25", 250), ("100u", -1), ("1k", -1)],
    ids=["none", "whole", "milli", "decimal", "two-decimals", "micro", "kilo"],
)
def test_millicores_cel_reads(cpu: str | None, expected: int) -> None:
    assert millis(cpu) == expected


FORMS = [
    (["gunicorn", "app:app"], "gunicorn"),
    (["/usr/local/bin/uvicorn", "m:a"], "uvicorn"),
    (["python3.12", "-m", "gunicorn", "a"], "gunicorn"),
    (["celery", "-A", "proj", "worker"], "celery"),
    (["celery", "-A", "proj", "beat"], ""),
    (["python", "-m", "celery", "worker"], "celery"),
    (["fastapi", "run", "main.py"], "uvicorn"),
    (["sentry", "run", "web"], "sentry"),
    (["tini", "--", "granian", "m:a"], "granian"),
    (["uv", "run", "--", "python", "-m", "uvicorn", "a"], "uvicorn"),
    (["dumb-init", "uwsgi", "--http", ":80"], "uwsgi"),
    (["tini", "-s", "--", "gunicorn", "a"], ""),
    (["sh", "-c", "exec gunicorn a"], ""),
    (["docker-entrypoint.sh", "gunicorn", "a"], ""),
    (["python", "-u", "-m", "gunicorn"], ""),
    (["FOO=1", "gunicorn"], ""),
]


@pytest.mark.parametrize(("argv", "runtime"), FORMS, ids=[" ".join(a) for a, _ in FORMS])
def test_the_forms_cel_decides(argv: list[str], runtime: str) -> None:
    found = decided(pod(container(command=argv)), Settings().options)
    assert found == ({"web": runtime} if runtime else {})
    if runtime:  # every form CEL decides is one the webhook decides the same way
        status = decide(pod(container(command=argv)), Settings().options).status
        assert status["web"]["runtime"] == runtime


@pytest.mark.parametrize(
    "changed",
    [
        {"annotations": {"concurrency-injector.io/containers": "web"}},
        {"annotations": {"concurrency-injector.io/workers-per-cpu": "2"}},
        {"annotations": {"concurrency-injector.io/mode": " Audit"}},
        {"envFrom": [{"configMapRef": {"name": "cfg"}}]},
        {"pod_cpu": "2", "cpu": None},
        {"cpu": "100u"},
    ],
    ids=["listed", "pod-settings", "audit", "envFrom", "pod-level-cpu", "micro-cores"],
)
def test_what_is_left_to_the_webhook(changed: dict[str, object]) -> None:
    annotations = changed.pop("annotations", None)
    pod_cpu = changed.pop("pod_cpu", None)
    c = container(command=["gunicorn", "a"], **{"cpu": "2", **changed})  # type: ignore[arg-type]
    assert decided(pod(c, annotations=annotations, pod_cpu=pod_cpu), Settings().options) == {}  # type: ignore[arg-type]


def test_the_webhook_leaves_containers_the_policy_marked() -> None:
    p = pod(
        container("web", command=["gunicorn", "a"]),
        container("job", command=["sh", "-c", "exec celery -A p worker"]),
        annotations={NATIVE: "web"},
    )
    result = decide(p, Settings().options)
    assert [c.name for c in result.containers] == ["job"]


def test_the_webhook_leaves_a_marked_annotated_container() -> None:
    p = pod(
        container("web", command=["app"]),
        annotations={NATIVE: "web", "concurrency-injector.io/runtime": "python"},
    )
    assert decide(p, Settings().options).containers == []
