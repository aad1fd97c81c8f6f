"""Offline input: find the pod specs in Pods, workloads, Lists and AdmissionReviews. Pure."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from webhook.admission import ReviewError, brief, check_pod, check_review
from webhook.types import Obj

# Where each kind keeps the pod it runs, as a path of keys.
TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "PodTemplate": ("template",),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


class InputError(ValueError):
    """Input that is not something `mutate` can work on; the message names the problem."""


@dataclass(frozen=True)
class PodSlot:
    """A pod (or pod template) inside a document, found by its path of keys."""

    path: tuple[str | int, ...]
    pod: Obj


def pod_slots(document: Any, *, where: str) -> Iterator[PodSlot]:
    """Every pod spec in one document; InputError for anything without one."""
    if not isinstance(document, dict):
        raise InputError(f"{where}: expected a Kubernetes object, got {type(document).__name__}")
    kind = document.get("kind")
    if kind == "List" or (isinstance(kind, str) and kind.endswith("List") and "items" in document):
        items = document.get("items")
        if not isinstance(items, list):
            raise InputError(f"{where}: a List needs an items array")
        for i, item in enumerate(items):
            for slot in pod_slots(item, where=f"{where} items[{i}]"):
                yield PodSlot(("items", i, *slot.path), slot.pod)
        return
    if kind == "AdmissionReview":
        raise InputError(f"{where}: an AdmissionReview is handled whole, not as a pod")
    if kind not in TEMPLATE_PATHS:
        raise InputError(
            f"{where}: kind {brief(kind)} has no pod template "
            f"(expected one of {', '.join(TEMPLATE_PATHS)}, List or AdmissionReview)"
        )
    pod: Any = document
    for key in TEMPLATE_PATHS[kind]:
        pod = pod.get(key) if isinstance(pod, dict) else None
    if not isinstance(pod, dict):
        raise InputError(f"{where}: {kind} has no {'.'.join(TEMPLATE_PATHS[kind])}")
    try:
        check_pod(pod)
    except ReviewError as exc:
        raise InputError(f"{where}: {kind} {_name(document)}: {exc}") from None
    yield PodSlot(TEMPLATE_PATHS[kind], pod)


def review_pod(document: Obj, *, where: str) -> Obj | None:
    """The pod of an AdmissionReview document (None when it is not a Pod CREATE)."""
    try:
        review = check_review(document)
    except ReviewError as exc:
        raise InputError(f"{where}: {exc}") from None
    return review["request"].get("object")


def _name(document: Obj) -> str:
    metadata = document.get("metadata") or {}
    return str(metadata.get("name") or metadata.get("generateName") or "(unnamed)")


def namespace_of(document: Obj) -> str:
    return str((document.get("metadata") or {}).get("namespace") or "")
