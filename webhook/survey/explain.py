"""`explain`: every container of every pod template, with the decision and every reason.

Each pod goes through the webhook's own handler as the Pod CREATE review the API server would
send (as `mutate` does), so the decision explained is the server's. Targets come with their
runtime, CPU, what is set or kept, and the warnings that name them; every other container with
why it is not a target (the core records that reason beside the decision).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, TextIO

import orjson

from webhook.admission.handler import AdmissionHandler, Answer
from webhook.admission.review import ReviewError, pod_create_review
from webhook.core import keys
from webhook.core.decision import ContainerResult, Decision
from webhook.core.detection import containers_of
from webhook.core.env import CPU_LIMIT_MARK
from webhook.core.types import Obj
from webhook.workloads import InputError, pod_slots

SOURCES = {
    "command": "its command line",
    "image-label": f"its image's {keys.IMAGE_RUNTIME_LABEL} label",
    "image-command": "its image's Entrypoint and Cmd",
    "image-name": "its image's name",
    "annotation": "the pod's annotations",
}


@dataclass(frozen=True)
class Workload:
    """One pod (or pod template) found in the input, and the object that holds it."""

    kind: str
    namespace: str
    name: str
    pod: Obj

    @property
    def label(self) -> str:
        """`Kind namespace/name`, as messages name objects."""
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{self.kind} {where}"


@dataclass(frozen=True)
class Explained:
    """One container's decision and every reason for it."""

    object: str
    kind: str
    namespace: str
    name: str
    container: str
    init: bool
    decision: str  # target, not-target, or unchanged (the handler decided nothing)
    runtime: str | None
    reasons: list[str]

    @property
    def label(self) -> str:
        return f"{self.object} container {self.container!r}"


def workloads(documents: list[Any]) -> Iterator[Workload]:
    """Every pod spec in the documents, with its object's kind, namespace and name."""
    for n, document in enumerate(documents, 1):
        for item in _flat(document):
            kind = str(item.get("kind") or "")
            metadata = item.get("metadata") or {}
            if kind == "AdmissionReview":
                request = item.get("request") or {}
                pod = request.get("object") or {}
                pod_meta = pod.get("metadata") or {}
                namespace = str(request.get("namespace") or pod_meta.get("namespace") or "")
                yield Workload("Pod", namespace, str(pod_meta.get("name") or "(unnamed)"), pod)
                continue
            for slot in pod_slots(item, where=f"document {n}"):
                name = metadata.get("name") or metadata.get("generateName") or "(unnamed)"
                inner = (slot.pod.get("metadata") or {}).get("namespace")
                where = str(metadata.get("namespace") or inner or "")
                yield Workload(kind, where, str(name), slot.pod)


def _flat(document: Any) -> list[Obj]:
    if not isinstance(document, dict):
        pod_slots(document, where="document")  # raises InputError naming the problem
        return []
    kind = str(document.get("kind") or "")
    items = document.get("items")
    if kind.endswith("List") and isinstance(items, list):
        return [i for item in items for i in _flat(item)]
    return [document]


async def decide(handler: AdmissionHandler, workload: Workload) -> Answer:
    """The server's answer for creating this workload's pod."""
    review = pod_create_review(workload.pod, namespace=workload.namespace, uid="explain")
    try:
        return await handler.handle(review)
    except ReviewError as exc:
        raise InputError(f"{workload.label}: {exc}") from None


def explain(workload: Workload, answer: Answer) -> list[Explained]:
    """Every container of the workload's pod, in pod order (init containers first)."""
    decision = answer.decision
    out = []
    for container, init in containers_of(workload.pod):
        name = str(container.get("name"))
        if decision is None:
            reasons = answer.warnings or [f"the webhook decides nothing here ({answer.outcome})"]
            out.append(_explained(workload, name, init, "unchanged", None, reasons))
            continue
        result = next((c for c in decision.containers if c.name == name), None)
        if result is not None:
            reasons = _target_reasons(result, decision)
            out.append(_explained(workload, name, init, "target", result.runtime, reasons))
            continue
        other = next((o for o in decision.others if o.name == name), None)
        reason = other.reason if other is not None else "not a target"
        reasons = [reason, *_warnings_about(name, decision)]
        out.append(_explained(workload, name, init, "not-target", None, reasons))
    return out


def _explained(
    workload: Workload,
    container: str,
    init: bool,
    decision: str,
    runtime: str | None,
    reasons: list[str],
) -> Explained:
    return Explained(
        workload.label,
        workload.kind,
        workload.namespace,
        workload.name,
        container,
        init,
        decision,
        runtime,
        reasons,
    )


def _target_reasons(result: ContainerResult, decision: Decision) -> list[str]:
    reasons = [f"runs {result.runtime}, known from {SOURCES.get(result.source, result.source)}"]
    if result.skipped:
        reasons.append(f"nothing set: {result.skipped}")
    else:
        origin = "its own limit" if result.cpu_from == "container" else "the pod-level limit"
        reasons.append(f"CPU limit {result.cpu} ({origin})")
        if result.set:
            verb = "would set (audit mode)" if decision.audit else "sets"
            reasons.append(f"{verb} {_values(result.set)}")
        if result.kept:
            reasons.append(f"keeps the value the container sets itself: {', '.join(result.kept)}")
        if result.unread:
            reasons.append(f"envFrom not read, may set a variable: {', '.join(result.unread)}")
        if result.workers == "none":
            reasons.append(f"{result.runtime} reads no worker variable: none is set")
    return [*reasons, *_warnings_about(result.name, decision)]


def _values(values: dict[str, str]) -> str:
    return ", ".join(
        f"{k} from the downward API (limits.cpu)" if v == CPU_LIMIT_MARK else f"{k}={v}"
        for k, v in values.items()
    )


def _warnings_about(name: str, decision: Decision) -> list[str]:
    """The response's warnings that name this container, and those that name none."""
    quoted = repr(name)
    names = [repr(c.name) for c in decision.containers] + [repr(o.name) for o in decision.others]
    return [
        f"warning: {w}" for w in decision.warnings if quoted in w or not any(n in w for n in names)
    ]


def write(explained: list[Explained], output: str, stream: TextIO) -> None:
    if output == "json":
        value = {"containers": [asdict(e) for e in explained]}
        stream.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    for e in explained:
        what = f"target ({e.runtime})" if e.decision == "target" else e.decision
        init = " (init)" if e.init else ""
        stream.write(f"{e.label}{init}: {what}\n")
        for reason in e.reasons:
            stream.write(f"  - {reason}\n")
