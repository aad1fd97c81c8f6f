"""In-place resize (`pods/resize`, UPDATE) through the one handler: a pod the webhook patched at
creation is resized; the answer is allowed, never patched, and warns when the recorded worker
count is stale (webhook/core/resize.py)."""

from __future__ import annotations

import base64
import copy
import json
from decimal import Decimal
from typing import Any

import jsonpatch
import pytest
from prometheus_client import REGISTRY

from tests.podgen import container, gunicorn, pod, review
from webhook.admission.handler import AdmissionHandler, Answer
from webhook.config import Settings

STALE = "concurrency_injector_resize_stale_total"
WARNINGS = "concurrency_injector_warnings_total"
RESTART = "recreate the pod (kubectl rollout restart) to get"


def created(p: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The pod as the API server stores it after the webhook's CREATE patch."""
    answer = AdmissionHandler(settings, record=False).handle_now(review(p))
    patch = json.loads(base64.b64decode(answer.response.get("patch") or "W10="))
    return jsonpatch.apply_patch(p, patch)  # type: ignore[no-any-return]


def resize_review(p: dict[str, Any], old: dict[str, Any], uid: str = "r-1") -> dict[str, Any]:
    """The review kube-apiserver sends for `kubectl patch pod --subresource resize`."""
    r = review(p, operation="UPDATE", uid=uid)
    r["request"]["subResource"] = "resize"
    r["request"]["oldObject"] = old
    return r


def resized(p: dict[str, Any], cpu: str | None, *, name: str = "web") -> dict[str, Any]:
    out = copy.deepcopy(p)
    for c in out["spec"]["containers"]:
        if c["name"] == name:
            limits = c.setdefault("resources", {}).setdefault("limits", {})
            if cpu is None:
                limits.pop("cpu", None)
            else:
                limits["cpu"] = cpu
    return out


def answer_resize(
    p: dict[str, Any], cpu: str | None, settings: Settings | None = None, *, name: str = "web"
) -> Answer:
    settings = settings or Settings()
    before = created(p, settings)
    after = resized(before, cpu, name=name)
    return AdmissionHandler(settings).handle_now(resize_review(after, before))


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


CASES = [
    ("more-cpu", pod(gunicorn(cpu="2")), "4", Settings(),
     [f"resize: 'web' keeps WEB_CONCURRENCY=2; {RESTART} 4"]),
    ("less-cpu", pod(gunicorn(cpu="4")), "1", Settings(),
     [f"resize: 'web' keeps WEB_CONCURRENCY=4; {RESTART} 1"]),
    ("same-count-floor", pod(gunicorn(cpu="2")), "2500m", Settings(), []),
    ("same-cpu", pod(gunicorn(cpu="2")), "2", Settings(), []),
    ("limit-removed", pod(gunicorn(cpu="2")), None, Settings(),
     ["resize: 'web' keeps WEB_CONCURRENCY=2; it has no CPU limit now, so a new pod would get none"]),
    ("workers-per-cpu", pod(gunicorn(cpu="1")), "3", Settings(workers_per_cpu=Decimal(2)),
     [f"resize: 'web' keeps WEB_CONCURRENCY=2; {RESTART} 6"]),
    ("max-workers-holds", pod(gunicorn(cpu="4")), "8", Settings(max_workers=4), []),
    ("max-workers-annotation", pod(gunicorn(cpu="2"), annotations={
        "concurrency-injector.io/max-workers": "3"}), "8", Settings(),
     [f"resize: 'web' keeps WEB_CONCURRENCY=2; {RESTART} 3"]),
    ("memory-guard-holds", pod(gunicorn(cpu="2", memory="400Mi")), "4",
     Settings(memory_per_worker=Decimal(200 * 1024 * 1024)), []),
    ("other-variable", pod(container("web", command=["granian", "app:app"], cpu="1")), "3",
     Settings(), [f"resize: 'web' keeps GRANIAN_WORKERS=1; {RESTART} 3"]),
    ("uvicorn-cli", pod(container("web", command=["uvicorn", "app:app"], cpu="1")), "2",
     Settings(), [f"resize: 'web' keeps WEB_CONCURRENCY=1; {RESTART} 2"]),
    ("uvicorn-run-app-capped", pod(container("web", command=["python", "main.py"], cpu="1"),
        annotations={"concurrency-injector.io/runtime": "uvicorn"}), "4", Settings(), []),
    ("user-set-count", pod(gunicorn(cpu="2", env=[{"name": "WEB_CONCURRENCY", "value": "9"}])),
     "4", Settings(), []),
    ("reads-no-variable", pod(container("web", command=["hypercorn", "app:app"], cpu="1")), "4",
     Settings(), []),
    ("long-name", pod(gunicorn("a-container-name-that-is-long-" + "x" * 33, cpu="2")), "16",
     Settings(),
     [f"resize: 'a-container-name-that-i…' keeps WEB_CONCURRENCY=2; {RESTART} 16"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("p", "cpu", "settings", "warnings"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_a_resize_warns_exactly_when_the_recorded_count_is_stale(
    p: dict[str, Any], cpu: str | None, settings: Settings, warnings: list[str]
) -> None:
    name = p["spec"]["containers"][0]["name"]
    answer = answer_resize(p, cpu, settings, name=name)
    assert answer.response == {"uid": "r-1", "allowed": True, **({"warnings": warnings} if warnings else {})}
    assert answer.patch == []
    assert answer.outcome == "unchanged"
    assert all(len(w) <= 120 for w in answer.warnings)


def test_a_stale_resize_is_counted_by_runtime_and_as_warnings() -> None:
    stale, warned = sample(STALE, runtime="gunicorn"), sample(WARNINGS, kind="resize-stale")
    answer_resize(pod(gunicorn(cpu="2"), gunicorn("web2", cpu="2")), "6")
    assert sample(STALE, runtime="gunicorn") == stale + 1
    assert sample(WARNINGS, kind="resize-stale") == warned + 1
    answer_resize(pod(gunicorn(cpu="2")), "2")  # keeps the count: nothing counted
    assert sample(STALE, runtime="gunicorn") == stale + 1
    assert sample(WARNINGS, kind="resize-stale") == warned + 1


def test_two_stale_containers_get_one_warning_each() -> None:
    settings = Settings()
    before = created(pod(gunicorn(cpu="2"), gunicorn("api", cpu="1")), settings)
    after = resized(resized(before, "3"), "4", name="api")
    answer = AdmissionHandler(settings, record=False).handle_now(resize_review(after, before))
    assert answer.warnings == [
        f"resize: 'web' keeps WEB_CONCURRENCY=2; {RESTART} 3",
        f"resize: 'api' keeps WEB_CONCURRENCY=1; {RESTART} 4",
    ]


@pytest.mark.parametrize(
    "after",
    [
        pod(gunicorn(cpu="4")),  # never patched at creation: no status annotation
        pod(gunicorn(cpu="4"), annotations={"concurrency-injector.io/status": "not json"}),
        pod(gunicorn(cpu="4"), annotations={"concurrency-injector.io/status": "[1]"}),
    ],
    ids=["no-status", "unreadable-status", "status-not-an-object"],
)
def test_a_resize_of_a_pod_the_webhook_did_not_patch_is_ignored(after: dict[str, Any]) -> None:
    answer = AdmissionHandler(Settings()).handle_now(resize_review(after, after))
    assert (answer.response, answer.outcome) == ({"uid": "r-1", "allowed": True}, "ignored")


@pytest.mark.parametrize(
    "cpu",
    ["abc", "1.5.5", "NaN", "-"],
    ids=["word", "two-points", "nan", "dash"],
)
def test_a_malformed_resized_limit_is_allowed_without_a_warning(cpu: str) -> None:
    answer = answer_resize(pod(gunicorn(cpu="2")), cpu)
    assert answer.response == {"uid": "r-1", "allowed": True}


@pytest.mark.parametrize(
    "resources",
    [[1], {"limits": [1]}, {"limits": {"cpu": [1]}}, "2"],
    ids=["list", "limits-list", "cpu-list", "string"],
)
def test_malformed_resources_in_a_resize_never_deny(resources: Any) -> None:
    settings = Settings()
    before = created(pod(gunicorn(cpu="2")), settings)
    after = copy.deepcopy(before)
    after["spec"]["containers"][0]["resources"] = resources
    answer = AdmissionHandler(settings, record=False).handle_now(resize_review(after, before))
    assert answer.response["allowed"] is True
    assert "patch" not in answer.response


def test_a_resize_in_audit_mode_sees_no_status_and_says_nothing() -> None:
    answer = answer_resize(pod(gunicorn(cpu="2")), "4", Settings(mode="audit"))
    assert (answer.response, answer.outcome) == ({"uid": "r-1", "allowed": True}, "ignored")


def test_other_pod_updates_are_still_ignored() -> None:
    settings = Settings()
    before = created(pod(gunicorn(cpu="2")), settings)
    after = resized(before, "4")
    r = resize_review(after, before)
    r["request"]["subResource"] = "status"
    answer = AdmissionHandler(settings).handle_now(r)
    assert (answer.response, answer.outcome) == ({"uid": "r-1", "allowed": True}, "ignored")
