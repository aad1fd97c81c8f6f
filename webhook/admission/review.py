"""The AdmissionReview wire format: decode and check a review, build the response. Pure.

Two kinds of error: `ReviewError` is the caller's fault (a malformed review, answered 4xx by
the serving layer); anything else raised while deciding is ours and fails open (see `fail_open`).
"""

from __future__ import annotations

from typing import Any, cast

import orjson

from webhook.admission.types import AdmissionResponse, AdmissionReview
from webhook.core.decision import Decision
from webhook.core.types import Obj

API_VERSION = "admission.k8s.io/v1"
OPERATIONS = ("CREATE", "UPDATE", "DELETE", "CONNECT")
FAIL_OPEN_WARNING = "concurrency-injector: internal error, pod admitted unchanged"
BRIEF = 64  # characters of a caller's value that an error message quotes
AUDIT_NAME = 63 - len("injected-")  # an audit annotation key's name part is at most 63 characters


class ReviewError(ValueError):
    """The request is not a usable AdmissionReview (the caller's fault: HTTP 400)."""


def parse_review(body: bytes) -> AdmissionReview:
    """Decode and check the parts of a review the webhook relies on."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ReviewError(f"body is not valid JSON: {exc}") from None
    return check_review(data)


def brief(value: Any) -> str:
    """A value for an error message: short, never the caller's megabytes or deep nesting."""
    if isinstance(value, str):
        return repr(value if len(value) <= BRIEF else value[:BRIEF] + "...")
    if value is None or isinstance(value, bool | int | float):
        return repr(value)[:BRIEF]
    return "a JSON object" if isinstance(value, dict) else "a JSON array"


def check_review(data: Any) -> AdmissionReview:
    """Check decoded JSON is an AdmissionReview v1 request; ReviewError names what is wrong."""
    if not isinstance(data, dict):
        raise ReviewError("body is not a JSON object")
    if data.get("kind") != "AdmissionReview":
        raise ReviewError(f"kind must be AdmissionReview, got {brief(data.get('kind'))}")
    if data.get("apiVersion") != API_VERSION:
        raise ReviewError(f"apiVersion must be {API_VERSION}, got {brief(data.get('apiVersion'))}")
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
    for name in ("namespace", "name", "subResource"):
        _optional(request.get(name), str, f"request.{name}")
    obj = request.get("object")
    if obj is not None and not isinstance(obj, dict):
        raise ReviewError("request.object is not an object")
    return cast(AdmissionReview, data)


def is_pod_create(review: AdmissionReview) -> bool:
    """Only Pod CREATE is patched; every other request is allowed unchanged."""
    return _is_pod(review, "CREATE", None)


def is_pod_resize(review: AdmissionReview) -> bool:
    """An in-place resize (`pods/resize`, UPDATE): checked for a stale count, never patched."""
    return _is_pod(review, "UPDATE", "resize")


def _is_pod(review: AdmissionReview, operation: str, sub_resource: str | None) -> bool:
    request = review["request"]
    kind = request["kind"]
    return (
        request["operation"] == operation
        and kind.get("group") == ""
        and kind.get("kind") == "Pod"
        and (request.get("subResource") or None) == sub_resource
        and isinstance(request.get("object"), dict)
    )


def check_pod(pod: Obj) -> None:
    """Reject shapes no API server would send, before deciding on them.

    Every field the webhook reads is checked for the type the Pod schema gives it, so a
    malformed pod is the caller's fault (400), never an internal error that fails open.
    A pod that `_well_formed` accepts is not walked again; any other is, to name what is wrong.
    """
    if not _well_formed(pod):
        walk_pod(pod)


def walk_pod(pod: Obj) -> None:
    """`check_pod` field by field: raises ReviewError naming the first field that is wrong."""
    metadata = pod.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise ReviewError("pod metadata is not an object")
        for name in ("name", "generateName", "namespace"):
            _optional(metadata.get(name), str, f"pod metadata.{name}")
        annotations = metadata.get("annotations")
        if annotations is not None and not (
            isinstance(annotations, dict) and all(isinstance(v, str) for v in annotations.values())
        ):
            raise ReviewError("pod metadata.annotations is not an object of strings")
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        raise ReviewError("pod has no spec object")
    if not isinstance(spec.get("containers"), list) or not spec["containers"]:
        raise ReviewError("pod spec.containers is missing or empty")
    _optional(spec.get("initContainers"), list, "pod spec.initContainers")
    _check_resources(spec.get("resources"), "pod spec.resources")
    for field_name in ("containers", "initContainers"):
        for i, container in enumerate(spec.get(field_name) or []):
            _check_container(container, f"spec.{field_name}[{i}]")


def _well_formed(pod: Obj) -> bool:
    """The checks of `check_pod` as one lean pass that only answers yes or no.

    Every pod the API server sends passes, and a new pod pays for this pass alone, without the
    error paths' bookkeeping. It is stricter than `check_pod` (exact JSON types), never looser:
    whatever it refuses goes through `check_pod`'s own walk, which raises or accepts.
    """
    metadata = pod.get("metadata")
    if metadata is not None:
        if type(metadata) is not dict:
            return False
        for name in ("name", "generateName", "namespace"):
            value = metadata.get(name)
            if value is not None and type(value) is not str:
                return False
        annotations = metadata.get("annotations")
        if annotations is not None:
            if type(annotations) is not dict:
                return False
            for value in annotations.values():
                if type(value) is not str:
                    return False
    spec = pod.get("spec")
    if type(spec) is not dict:
        return False
    containers = spec.get("containers")
    if type(containers) is not list or not containers:
        return False
    inits = spec.get("initContainers")
    if inits is not None and type(inits) is not list:
        return False
    if not _fine_resources(spec.get("resources")):
        return False
    for container in (*containers, *(inits or ())):
        if type(container) is not dict or not _fine_container(container):
            return False
    return True


def _fine_container(container: Obj) -> bool:
    get = container.get
    if type(get("name")) is not str:
        return False
    for name in ("image", "restartPolicy"):
        value = get(name)
        if value is not None and type(value) is not str:
            return False
    for name in _STRING_LISTS:
        words = get(name)
        if words is not None:
            if type(words) is not list:
                return False
            for word in words:
                if type(word) is not str:
                    return False
    env = get("env")
    if env is not None:
        if type(env) is not list:
            return False
        for entry in env:
            if type(entry) is not dict or type(entry.get("name")) is not str:
                return False
            value, source = entry.get("value"), entry.get("valueFrom")
            if (value is not None and type(value) is not str) or (
                source is not None and type(source) is not dict
            ):
                return False
    for name in ("envFrom", "resizePolicy"):
        items = get(name)
        if items is None:
            continue
        if type(items) is not list:
            return False
        for item in items:
            if type(item) is not dict:
                return False
            for key in _ITEM_STRINGS[name]:
                value = item.get(key)
                if value is not None and type(value) is not str:
                    return False
            if name == "envFrom":
                for key in _ENV_SOURCES:
                    ref = item.get(key)
                    if ref is None:
                        continue
                    if type(ref) is not dict:
                        return False
                    ref_name = ref.get("name")
                    if ref_name is not None and type(ref_name) is not str:
                        return False
    return _fine_resources(get("resources"))


def _fine_resources(resources: Any) -> bool:
    if resources is None:
        return True
    if type(resources) is not dict:
        return False
    for key in ("limits", "requests"):
        values = resources.get(key)
        if values is not None and type(values) is not dict:
            return False
    return True


# The container fields the webhook reads, with the types the Pod schema gives them.
_STRING_LISTS = ("command", "args")
_OBJECT_LISTS = ("env", "envFrom", "resizePolicy")
_ITEM_STRINGS = {
    "env": ("name", "value"),
    "envFrom": ("prefix",),
    "resizePolicy": ("resourceName", "restartPolicy"),
}
_ENV_SOURCES = ("configMapRef", "secretRef")
_TYPE_NAMES: dict[type, str] = {str: "a string", dict: "an object", list: "a list"}


def _check_container(container: Any, where: str) -> None:
    if not isinstance(container, dict) or not isinstance(container.get("name"), str):
        raise ReviewError(f"{where} is not a container with a name")
    for name in ("image", "restartPolicy"):
        _optional(container.get(name), str, f"{where}.{name}")
    for name in (*_STRING_LISTS, *_OBJECT_LISTS):
        items = container.get(name)
        if items is None:
            continue
        if not isinstance(items, list):
            raise ReviewError(f"{where}.{name} is not a list")
        item_type = str if name in _STRING_LISTS else dict
        if not all(isinstance(item, item_type) for item in items):
            kind = "strings" if item_type is str else "objects"
            raise ReviewError(f"{where}.{name} has items that are not {kind}")
        for i, item in enumerate(items if item_type is dict else ()):
            for key in _ITEM_STRINGS[name]:
                _optional(item.get(key), str, f"{where}.{name}[{i}].{key}")
    if not all(isinstance(e.get("name"), str) for e in container.get("env") or []):
        raise ReviewError(f"{where}.env has an entry without a name")
    for i, entry in enumerate(container.get("env") or []):
        _optional(entry.get("valueFrom"), dict, f"{where}.env[{i}].valueFrom")
    for i, source in enumerate(container.get("envFrom") or []):
        for key in _ENV_SOURCES:
            ref = source.get(key)
            _optional(ref, dict, f"{where}.envFrom[{i}].{key}")
            _optional((ref or {}).get("name"), str, f"{where}.envFrom[{i}].{key}.name")
    _check_resources(container.get("resources"), f"{where}.resources")


def _check_resources(resources: Any, where: str) -> None:
    """limits and requests: objects (of quantities).

    A value that is not a quantity (`cpu: abc`, `cpu: [1]`) is not refused here: the decision
    skips that container with a warning, the same for every wrong value (README "Command line").
    """
    if resources is None:
        return
    if not isinstance(resources, dict):
        raise ReviewError(f"{where} is not an object of limits and requests")
    for key in ("limits", "requests"):
        values = resources.get(key)
        if values is not None and not isinstance(values, dict):
            raise ReviewError(f"{where} is not an object of limits and requests")


def _optional(value: Any, kind: type, where: str) -> None:
    """A field that may be absent or null, and otherwise has one JSON type."""
    if value is not None and not isinstance(value, kind):
        expected = _TYPE_NAMES.get(kind, kind.__name__)
        raise ReviewError(f"{where} is not {expected}")


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
    # One key per container: on reinvocation the API server keeps an audit annotation's first
    # value and refuses a changed one, so a single list would lose containers patched later.
    audit: dict[str, str] = {
        f"injected-{c.name[:AUDIT_NAME]}": c.worker_count for c in decision.injected
    }
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


def pod_create_review(pod: Obj, *, namespace: str, uid: str) -> dict[str, Any]:
    """The review kube-apiserver sends for creating `pod` (how `mutate` asks the handler)."""
    return {
        "apiVersion": API_VERSION,
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "namespace": namespace,
            "object": pod,
        },
    }
