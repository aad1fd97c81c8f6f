from __future__ import annotations

import base64
import io
import json
import logging
import sys
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from tests.podgen import container, gunicorn, pod, review
from webhook import logs
from webhook.admission.handler import AdmissionHandler, mutate_review
from webhook.admission.review import (
    FAIL_OPEN_WARNING,
    ReviewError,
    fail_open,
    parse_review,
)
from webhook.config import Settings
from webhook.serving.app import request_budget


def response_of(r: dict[str, Any]) -> dict[str, Any]:
    out = mutate_review(r, Settings())
    assert (out["apiVersion"], out["kind"]) == ("admission.k8s.io/v1", "AdmissionReview")
    return out["response"]  # type: ignore[no-any-return]


def test_pod_create_gets_a_base64_json_patch() -> None:
    resp = response_of(review(pod(gunicorn(cpu="2")), uid="abc"))
    assert resp["uid"] == "abc"
    assert resp["allowed"] is True
    assert resp["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(resp["patch"]))
    assert [op["path"] for op in ops] == ["/metadata/annotations", "/spec/containers/0/env"]
    assert resp["auditAnnotations"] == {"injected-web": "2"}
    assert "warnings" not in resp


def test_non_target_has_no_patch_type() -> None:
    assert response_of(review(pod(container("db", command=["postgres"])))) == {
        "uid": "u-1",
        "allowed": True,
    }


@pytest.mark.parametrize(
    "r",
    [
        review(pod(gunicorn()), operation="UPDATE"),
        review(pod(gunicorn()), operation="DELETE"),
        review({"kind": "Deployment"}, kind="Deployment"),
        {
            **review(pod(gunicorn())),
            "request": {**review(pod(gunicorn()))["request"], "subResource": "status"},
        },
        review(None),
    ],
    ids=["update", "delete", "not-a-pod", "subresource", "no-object"],
)
def test_everything_else_is_allowed_unchanged(r: dict[str, Any]) -> None:
    assert response_of(r) == {"uid": "u-1", "allowed": True}


def test_warnings_are_returned() -> None:
    resp = response_of(review(pod(gunicorn(cpu=None))))
    assert resp["warnings"] == ["container 'web' has no CPU limit; nothing injected"]


def test_audit_response() -> None:
    out = mutate_review(review(pod(gunicorn(cpu="1"))), Settings(mode="audit"))["response"]
    assert "patch" not in out
    assert out["auditAnnotations"] == {"injected-web": "1", "mode": "audit"}
    assert out["warnings"] == [
        "audit: would set WEB_CONCURRENCY=1, CPU_LIMIT=limits.cpu, PYTHON_CPU_COUNT=1 in 'web'"
    ]


def test_fail_open_allows_with_a_warning() -> None:
    assert fail_open("x") == {"uid": "x", "allowed": True, "warnings": [FAIL_OPEN_WARNING]}


GOOD = review(pod(gunicorn()))


def _with(path: list[str], value: Any) -> bytes:
    data = json.loads(json.dumps(GOOD))
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return orjson.dumps(data)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "body is not valid JSON"),
        (b"[1, 2]", "body is not a JSON object"),
        (b'{"kind": "Pod", "apiVersion": "v1"}', "kind must be AdmissionReview, got 'Pod'"),
        (
            _with(["apiVersion"], "admission.k8s.io/v1beta1"),
            "apiVersion must be admission.k8s.io/v1",
        ),
        (_with(["request"], None), "request is missing or not an object"),
        (_with(["request", "uid"], 7), "request.uid is missing or not a string"),
        (_with(["request", "operation"], "PATCH"), "request.operation is not one of"),
        (_with(["request", "kind"], "Pod"), "request.kind is missing or not an object"),
        (_with(["request", "object"], "pod"), "request.object is not an object"),
    ],
    ids=[
        "not-json",
        "array",
        "wrong-kind",
        "old-version",
        "no-request",
        "uid-type",
        "operation",
        "kind-type",
        "object-type",
    ],
)
def test_malformed_reviews_name_the_problem(body: bytes, message: str) -> None:
    with pytest.raises(ReviewError, match=message.replace("(", r"\(")):
        parse_review(body)


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"metadata": {}}, "pod has no spec object"),
        ({"spec": {"containers": "web"}}, "pod spec.containers is missing or empty"),
        (
            {"spec": {"containers": [{"image": "x"}]}},
            r"spec.containers\[0\] is not a container with a name",
        ),
        (
            {"spec": {"containers": [{"name": "w", "env": {"A": 1}}]}},
            r"spec.containers\[0\].env is not a list",
        ),
        (
            {"metadata": {"annotations": ["x"]}, "spec": {"containers": [{"name": "w"}]}},
            "pod metadata.annotations is not an object",
        ),
        ({"spec": {"containers": [{"name": "w", "env": ["A=1"]}]}}, r"spec.containers\[0\].env has items that are not objects"),
        ({"spec": {"containers": [{"name": "w", "env": [{"value": "1"}]}]}}, "env has an entry without a name"),
        ({"spec": {"containers": [{"name": "w", "command": ["gunicorn", 4]}]}}, "command has items that are not strings"),
        ({"spec": {"containers": [{"name": "w", "resources": {"limits": "2"}}]}}, "resources is not an object of limits and requests"),
        ({"spec": {"containers": [{"name": "w"}], "initContainers": {"name": "i"}}}, "spec.initContainers is not a list"),
        ({"spec": {"containers": [{"name": "w"}], "resources": "2"}}, "pod spec.resources is not an object"),
    ],
    ids=["no-spec", "containers-string", "no-name", "env-dict", "annotations-list", "env-strings",
         "env-no-name", "command-number", "limits-string", "init-dict", "pod-resources"],
)
def test_malformed_pods_are_review_errors(obj: dict[str, Any], message: str) -> None:
    with pytest.raises(ReviewError, match=message):
        mutate_review(review(obj), Settings())


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"", 2.0),
        (b"timeout=10s", 2.0),
        (b"timeout=2s", 1.5),
        (b"timeout=500ms", 0.05),
        (b"timeout=1.5s&x=1", 1.0),
        (b"timeout=bogus", 2.0),
    ],
    ids=["none", "long", "short", "tiny", "fractional", "bad"],
)
def test_request_budget_stays_inside_the_api_server_timeout(query: bytes, expected: float) -> None:
    assert request_budget(Settings(), query) == pytest.approx(expected)


def test_audit_annotation_names_each_runtimes_own_worker_count() -> None:
    p = pod(
        container("web", command=["granian", "main:app"], cpu="3"),
        container("jobs", command=["celery", "-A", "p", "worker"], cpu="2"),
        container("asgi", command=["daphne", "p.asgi:app"], cpu="1"),
    )
    resp = mutate_review(review(p), Settings())["response"]
    assert resp["auditAnnotations"] == {"injected-web": "3", "injected-jobs": "2", "injected-asgi": "none"}


USER_SET = [{"name": n, "value": "3"} for n in ("WEB_CONCURRENCY", "CPU_LIMIT", "PYTHON_CPU_COUNT")]


@pytest.mark.parametrize(
    ("p", "message", "outcome", "reason", "skip"),
    [
        (pod(gunicorn(cpu="2")), "pod mutated", "patched", None, None),
        (pod(gunicorn(cpu=None)), "pod reviewed", "annotated", "no-cpu-limit",
         "container-no-cpu-limit"),
        (pod(gunicorn(cpu="2", env=USER_SET)), "pod reviewed", "annotated", "user-set", None),
        (pod(container("web", command=["sh", "-c", 'case "$1" in a) exec gunicorn app;; '
                                         'b) exec celery -A p worker;; esac'])),
         "pod reviewed", "annotated", "undecided", "container-undecided"),
    ],
    ids=["limit", "no-limit", "user-set", "undecided"],
)
def test_log_line_and_metrics_say_what_the_answer_does(
    p: dict[str, Any],
    message: str,
    outcome: str,
    reason: str | None,
    skip: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only an answer that edits a container is `patched`; a status annotation alone is not."""
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)

    def skips(label: str | None) -> float:
        if label is None:
            return 0.0
        return REGISTRY.get_sample_value(
            "concurrency_injector_skips_total", {"reason": label}
        ) or 0.0

    before = skips(skip), skips(reason)
    try:
        logs.setup("info", "json")
        answer = AdmissionHandler(Settings(no_registry=True)).handle_now(review(p))
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    assert answer.outcome == outcome
    assert answer.patch  # each of them writes at least the status annotation
    entry = json.loads(stream.getvalue())
    assert (entry["msg"], entry["outcome"], entry["reason"]) == (message, outcome, reason)
    if skip is not None:
        assert skips(skip) == before[0] + 1
    if reason is not None:
        assert skips(reason) == before[1] + 1


@pytest.mark.parametrize(
    "cpu", ["abc", [1], True, {"a": 1}, "1e100000", "NaN"],
    ids=["text", "list", "bool", "object", "huge", "nan"],
)
def test_any_invalid_cpu_limit_is_allowed_with_the_same_warning(cpu: object) -> None:
    """One rule whatever the type of the wrong value: the server never blocks a pod (no 400),
    skips that container and says so."""
    resp = response_of(review(pod(gunicorn(cpu=cpu), container("side", cpu=cpu))))  # type: ignore[arg-type]
    assert resp["allowed"] is True
    assert resp["warnings"] == ["container 'web' has an invalid CPU limit; nothing injected"]
    ops = orjson.loads(base64.b64decode(resp["patch"]))
    assert [o["path"] for o in ops] == ["/metadata/annotations"]  # the status: nothing set


def test_a_deeply_nested_cpu_limit_is_invalid_not_an_internal_error() -> None:
    """The endpoint takes JSON 1,024 levels deep; such a value is never even printed."""
    value: Any = "1"
    for _ in range(990):
        value = {"a": value}
    body = review(pod(gunicorn(cpu="2")))
    body["request"]["object"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = value
    resp = mutate_review(body, Settings())["response"]
    assert resp["warnings"] == ["container 'web' has an invalid CPU limit; nothing injected"]
