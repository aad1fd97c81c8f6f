"""AdmissionReview in, AdmissionReview out: the wire format around `mutation.decide`. Pure.

Two kinds of error: `ReviewError` is the caller's fault (a malformed review, answered 4xx by
the serving layer); anything else raised while deciding is ours and fails open (see `fail_open`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import orjson

from webhook import keys
from webhook.config import Settings
from webhook.mutation import Decision, decide
from webhook.types import AdmissionResponse, AdmissionReview, ImageConfig, Obj

API_VERSION = "admission.k8s.io/v1"
OPERATIONS = ("CREATE", "UPDATE", "DELETE", "CONNECT")
FAIL_OPEN_WARNING = "concurrency-injector: internal error, pod admitted unchanged"


class ReviewError(ValueError):
    """The request is not a usable AdmissionReview (the caller's fault: HTTP 400)."""


def parse_review(body: bytes) -> AdmissionReview:
    """Decode and check the parts of a review the webhook relies on."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ReviewError(f"body is not valid JSON: {exc}") from None
    return check_review(data)


def check_review(data: Any) -> AdmissionReview:
    """Check decoded JSON is an AdmissionReview v1 request; ReviewError names what is wrong."""
    if not isinstance(data, dict):
        raise ReviewError("body is not a JSON object")
    if data.get("kind") != "AdmissionReview":
        raise ReviewError(f"kind must be AdmissionReview, got {data.get('kind')!r}")
    if data.get("apiVersion") != API_VERSION:
        raise ReviewError(f"apiVersion must be {API_VERSION}, got {data.get('apiVersion')!r}")
    request = data.get("request")
    if not isinstance(request, dict):
        raise ReviewError("request is missing or not an object")
    if not isinstance(request.get("uid"), str) or not request["uid"]:
        raise ReviewError("request.uid is missing or not a string")
    if request.get("operation") not in OPERATIONS:
        raise ReviewError(f"request.operation is not one of {', '.join(OPERATIONS)}")
    for name in ("kind", "resource"):
        if not isinstance(request.get(name), dict):
            raise ReviewError(f"request.{name} is missing or not an object")
    obj = request.get("object")
    if obj is not None and not isinstance(obj, dict):
        raise ReviewError("request.object is not an object")
    return cast(AdmissionReview, data)


def is_pod_create(review: AdmissionReview) -> bool:
    """Only Pod CREATE is patched; every other request is allowed unchanged."""
    request = review["request"]
    kind = request["kind"]
    return (
        request["operation"] == "CREATE"
        and kind.get("group") == ""
        and kind.get("kind") == "Pod"
        and not request.get("subResource")
        and isinstance(request.get("object"), dict)
    )


def check_pod(pod: Obj) -> None:
    """Reject shapes no API server would send, before deciding on them."""
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        raise ReviewError("pod has no spec object")
    if not isinstance(spec.get("containers"), list) or not spec["containers"]:
        raise ReviewError("pod spec.containers is missing or empty")
    if not isinstance(spec.get("initContainers") or [], list):
        raise ReviewError("pod spec.initContainers is not a list")
    if not isinstance(spec.get("resources") or {}, dict):
        raise ReviewError("pod spec.resources is not an object")
    for field_name in ("containers", "initContainers"):
        for i, container in enumerate(spec.get(field_name) or []):
            _check_container(container, f"spec.{field_name}[{i}]")
    metadata = pod.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise ReviewError("pod metadata is not an object")
    if not isinstance((metadata or {}).get("annotations") or {}, dict):
        raise ReviewError("pod metadata.annotations is not an object")


def _check_container(container: Any, where: str) -> None:
    """The container fields the webhook reads have the types the Pod schema gives them."""
    if not isinstance(container, dict) or not isinstance(container.get("name"), str):
        raise ReviewError(f"{where} is not a container with a name")
    for name, item_type in (
        ("command", str),
        ("args", str),
        ("env", dict),
        ("envFrom", dict),
        ("resizePolicy", dict),
    ):
        items = container.get(name)
        if items is None:
            continue
        if not isinstance(items, list):
            raise ReviewError(f"{where}.{name} is not a list")
        if not all(isinstance(item, item_type) for item in items):
            kind = "strings" if item_type is str else "objects"
            raise ReviewError(f"{where}.{name} has items that are not {kind}")
    if not all(isinstance(e.get("name"), str) for e in container.get("env") or []):
        raise ReviewError(f"{where}.env has an entry without a name")
    resources = container.get("resources") or {}
    if not isinstance(resources, dict) or not all(
        isinstance(resources.get(k) or {}, dict) for k in ("limits", "requests")
    ):
        raise ReviewError(f"{where}.resources is not an object of limits and requests")


def pod_of(review: AdmissionReview) -> Obj:
    pod = review["request"].get("object") or {}
    check_pod(pod)
    return pod


def allow(uid: str, *, warnings: list[str] | None = None) -> AdmissionResponse:
    response: AdmissionResponse = {"uid": uid, "allowed": True}
    if warnings:
        response["warnings"] = warnings
    return response


def respond(uid: str, decision: Decision) -> AdmissionResponse:
    """The AdmissionResponse for a decision: a patch only when there is something to change."""
    response = allow(uid, warnings=decision.warnings)
    if decision.patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = decision.encoded_patch
    audit: dict[str, str] = {}
    if decision.injected:
        audit["injected"] = ",".join(
            f"{c.name}={c.set.get(keys.WEB_CONCURRENCY)}" for c in decision.injected
        )
    if decision.audit:
        audit["mode"] = "audit"
    if audit:
        response["auditAnnotations"] = audit
    return response


def fail_open(uid: str) -> AdmissionResponse:
    """Our own failure never blocks a pod: allow it unpatched, with a warning.

    This matches the chart's `failurePolicy: Ignore`: a webhook outage or bug must not stop
    pod creation cluster-wide; the error is logged and counted for SREs to see.
    """
    return allow(uid, warnings=[FAIL_OPEN_WARNING])


def review_of(response: AdmissionResponse) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}


def mutate_review(
    review: Mapping[str, Any],
    settings: Settings,
    *,
    images: Mapping[str, ImageConfig] | None = None,
    configmaps: Mapping[str, frozenset[str]] | None = None,
) -> dict[str, Any]:
    """A whole review to a whole response review, with no I/O (registry results passed in)."""
    checked = check_review(review)
    uid = checked["request"]["uid"]
    if not is_pod_create(checked):
        return review_of(allow(uid))
    decision = decide(pod_of(checked), settings, images=images, configmaps=configmaps)
    return review_of(respond(uid, decision))
