"""Offline input: pod specs in Pods, workloads and Lists, and the ConfigMaps beside them. Pure."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from webhook.core.types import Obj

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
    "Rollout": ("spec", "template"),  # Argo Rollouts (without a workloadRef)
}
# Kinds whose pod template may live elsewhere: without one here, they pass through.
OPTIONAL_TEMPLATE = frozenset({"Rollout"})


class InputError(ValueError):
    """Input that is not something `mutate` can work on; the message names the problem."""


STDIN_NAME = "<stdin>"


def source_name(filename: str) -> str:
    """How messages name an input file (`-` is standard input)."""
    return STDIN_NAME if filename == "-" else filename


@contextlib.contextmanager
def naming_file(filename: str | None) -> Iterator[None]:
    """An InputError raised inside, with its message led by the file it is about (if any)."""
    try:
        yield
    except InputError as exc:
        if filename is None:
            raise
        raise InputError(f"{source_name(filename)}: {exc}") from None


@dataclass(frozen=True)
class PodSlot:
    """A pod (or pod template) inside a document, found by its path of keys."""

    path: tuple[str | int, ...]
    pod: Obj
    owner: str  # `Kind namespace/name` of the object that holds it, for messages


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
                yield PodSlot(("items", i, *slot.path), slot.pod, slot.owner)
        return
    if kind == "AdmissionReview":
        raise InputError(f"{where}: an AdmissionReview is handled whole, not as a pod")
    if not isinstance(kind, str) or kind not in TEMPLATE_PATHS:
        return  # Services, ConfigMaps, CRDs, unknown kinds: passed through unchanged
    if not isinstance(document.get("apiVersion", ""), str):
        raise InputError(f"{where}: {kind} {object_name(document)}: apiVersion must be a string")
    pod: Any = document
    for key in TEMPLATE_PATHS[kind]:
        pod = pod.get(key) if isinstance(pod, dict) else None
    if pod is None and kind in OPTIONAL_TEMPLATE:
        return
    if not isinstance(pod, dict):
        path = ".".join(TEMPLATE_PATHS[kind])
        raise InputError(f"{where}: {kind} {object_name(document)} has no {path}")
    yield PodSlot(TEMPLATE_PATHS[kind], pod, f"{kind} {object_name(document)}")


def object_name(document: Obj) -> str:
    """`namespace/name` of an object, as messages name it (`name` alone without a namespace)."""
    metadata = document.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    name = str(metadata.get("name") or metadata.get("generateName") or "(unnamed)")
    namespace = metadata.get("namespace")
    return f"{namespace}/{name}" if namespace else name


def namespace_of(document: Obj) -> str:
    metadata = document.get("metadata")
    return str(metadata.get("namespace") or "") if isinstance(metadata, dict) else ""


def configmap_keys(documents: Iterable[Any]) -> dict[tuple[str, str], frozenset[str]]:
    """The keys of every ConfigMap in the input, by (namespace, name): offline envFrom answers."""
    found: dict[tuple[str, str], frozenset[str]] = {}
    for document in documents:
        for item in _items(document):
            if item.get("kind") != "ConfigMap" or item.get("apiVersion", "v1") != "v1":
                continue
            metadata = item.get("metadata") or {}
            name = metadata.get("name") if isinstance(metadata, dict) else None
            if not isinstance(name, str):
                continue
            keys = [
                k
                for field_name in ("data", "binaryData")
                if isinstance(item.get(field_name), dict)
                for k in item[field_name]
            ]
            found[(namespace_of(item), name)] = frozenset(map(str, keys))
    return found


def configmaps_for(
    known: dict[tuple[str, str], frozenset[str]], namespace: str
) -> dict[str, frozenset[str]]:
    """The ConfigMaps a pod in `namespace` can use (one without a namespace matches any)."""
    return {
        name: keys
        for (ns, name), keys in known.items()
        if not ns or not namespace or ns == namespace
    }


class DocumentConfigMaps:
    """An `EnvSourceReader` that answers from the ConfigMaps in the input (offline `mutate`)."""

    def __init__(self, documents: Iterable[Any]) -> None:
        self.known = configmap_keys(documents)

    async def configmap_keys(
        self, namespace: str, names: list[str], *, timeout: float
    ) -> dict[str, frozenset[str]]:
        found = configmaps_for(self.known, namespace)
        return {name: found[name] for name in names if name in found}


def _items(document: Any) -> list[Obj]:
    if not isinstance(document, dict):
        return []
    items = document.get("items")
    if isinstance(items, list) and str(document.get("kind", "")).endswith("List"):
        return [i for item in items for i in _items(item)]
    return [document]
