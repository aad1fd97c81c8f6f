"""Decide and apply: which env a pod's targets get, as a JSON Patch derived by diff. Pure.

The pod is never edited in place: the parts the webhook may change (its status annotation, and
the `env` and `resizePolicy` of target containers, at their indexes) are copied, changed, and
`jsonpatch.make_patch` derives the patch from the two. Diffing only those parts keeps the
admission path fast: a whole Pod is dozens of nested objects the webhook never touches.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import jsonpatch
import orjson

from webhook import keys
from webhook.config import Settings
from webhook.detection import Source, Target, containers_of, opted_out, select_targets
from webhook.policy import (
    WorkerPolicy,
    cpu_limit,
    cpu_text,
    flag_warnings,
    memory_limit,
    pod_policy,
    python_cpu_count,
    worker_count,
)
from webhook.types import ImageConfig, Obj, Runtime

MAX_WARNING = 120
CPU_LIMIT_MARK = "limits.cpu"  # how the status annotation records the downward-API CPU_LIMIT
RESIZE_POLICY = {"resourceName": "cpu", "restartPolicy": "RestartContainer"}
MUTABLE_FIELDS = ("env", "resizePolicy")  # all the webhook ever changes in a container


@dataclass(frozen=True)
class ContainerResult:
    """What happened to one target container."""

    name: str
    runtime: Runtime
    source: Source
    cpu: str | None = None
    cpu_from: str | None = None
    set: dict[str, str] = field(default_factory=dict)
    kept: tuple[str, ...] = ()
    skipped: str | None = None

    def status(self) -> Obj:
        entry: Obj = {"runtime": self.runtime, "source": self.source}
        if self.skipped:
            entry["skipped"] = self.skipped
        else:
            entry.update(cpu=self.cpu, cpuFrom=self.cpu_from, set=self.set)
        if self.kept:
            entry["kept"] = list(self.kept)
        return entry


@dataclass(frozen=True)
class Decision:
    """The outcome for one pod: the patch (empty for no change), warnings and what was decided."""

    patch: list[Obj]
    warnings: list[str]
    containers: list[ContainerResult]
    audit: bool = False
    reason: str | None = None  # why nothing was injected, when nothing was

    @property
    def injected(self) -> list[ContainerResult]:
        return [c for c in self.containers if c.set]

    # Cached: a decision may answer many identical reviews (see webhook/cache.py).
    @cached_property
    def status(self) -> dict[str, Obj]:
        """Per container, what was set and why (the status annotation's content, for logs)."""
        return {c.name: c.status() for c in self.containers}

    @cached_property
    def outcome(self) -> str:
        """patched, unchanged, or audit (would have patched)."""
        if self.audit and self.injected:
            return "audit"
        return "patched" if self.patch else "unchanged"

    @cached_property
    def summary_json(self) -> bytes:
        """The decision as a JSON object for the log line of every review it answers."""
        return orjson.dumps(
            {
                "outcome": self.outcome,
                "reason": self.reason,
                "containers": self.status,
                "warnings": self.warnings,
            }
        )

    @cached_property
    def encoded_patch(self) -> str:
        """The patch as the AdmissionResponse carries it: base64 of its JSON."""
        return base64.b64encode(orjson.dumps(self.patch)).decode() if self.patch else ""


def configmaps_to_read(pod: Obj) -> list[str]:
    """ConfigMaps named by any container's envFrom (the only ones that could hide a user value)."""
    names: list[str] = []
    for container, _ in containers_of(pod):
        for source in container.get("envFrom") or []:
            name = (source.get("configMapRef") or {}).get("name")
            if name and name not in names:
                names.append(name)
    return names


def decide(
    pod: Obj,
    settings: Settings,
    *,
    images: Mapping[str, ImageConfig] | None = None,
    configmaps: Mapping[str, frozenset[str]] | None = None,
) -> Decision:
    """Everything the webhook does to a Pod at CREATE, as data."""
    images = images or {}
    annotations: Mapping[str, Any] = (pod.get("metadata") or {}).get("annotations") or {}
    audit = settings.mode == "audit" or str(annotations.get(keys.MODE, "")).lower() == "audit"
    if opted_out(annotations):
        return Decision([], [], [], audit, "opted-out")
    targets, warnings = select_targets(pod, images)
    if not targets:
        return Decision([], _clean(warnings), [], audit, "no-target")

    policy, more = pod_policy(settings, annotations)
    warnings += more
    before = _projection(pod, {t.name for t in targets})
    after = orjson.loads(orjson.dumps(before))  # a deep copy; JSON data copies fastest this way
    containers = [c for c, _ in containers_of(pod)]
    names = [c.get("name") for c in containers]
    originals = dict(zip(names, containers, strict=True))
    writable = dict(zip(names, _containers(after), strict=True))
    env_context = _EnvContext(
        previous=_previous_status(annotations),
        override=str(annotations.get(keys.OVERRIDE, "")).strip().lower() == "true",
        configmaps=configmaps or {},
    )
    results = []
    for target in targets:
        container = originals[target.name]
        result, found = _apply(
            pod, container, writable[target.name], target, policy, settings, env_context
        )
        results.append(result)
        warnings += found
        image = images.get(container.get("image", ""))
        warnings += flag_warnings(target.name, target.server, _plain_env(container, image))

    status = {r.name: r.status() for r in results}
    after["metadata"]["annotations"] = {
        keys.STATUS: orjson.dumps(status, option=orjson.OPT_SORT_KEYS).decode(),
    }
    injected = [r for r in results if r.set]
    reason = None if injected else "no-cpu-limit"
    if audit:
        for r in injected:
            values = ", ".join(f"{k}={v}" for k, v in r.set.items())
            warnings.append(f"audit: would set {values} in {r.name!r}")
        return Decision([], _clean(warnings), results, True, reason)
    patch = in_document_order(jsonpatch.make_patch(before, after).patch)
    return Decision(patch, _clean(warnings), results, False, reason)


def in_document_order(patch: list[Obj]) -> list[Obj]:
    """Annotations first, then each container's ops, so the same change reads the same each time.

    jsonpatch visits sibling dict keys in set order, which varies between processes; ops on
    different keys are independent, and the stable sort keeps each array's ops in sequence.
    Works at any depth (a Pod, or the pod template of a workload).
    """

    def place(op: Obj) -> tuple[int, str, int, str]:
        parts = op["path"].split("/")
        for i, part in enumerate(parts[:-2]):
            if part in ("containers", "initContainers") and parts[i + 1].isdigit():
                return (1, "/".join(parts[: i + 1]), int(parts[i + 1]), parts[i + 2])
        return (0, op["path"], 0, "")

    return sorted(patch, key=place)


@dataclass(frozen=True)
class _EnvContext:
    previous: Mapping[str, Obj]
    override: bool
    configmaps: Mapping[str, frozenset[str]]


def _projection(pod: Obj, targets: set[str]) -> Obj:
    """The parts of the pod the webhook may change, at the same paths, mirroring which keys exist.

    Each target container is cut to its `env` and `resizePolicy`, every other container to `{}`
    (kept, so that indexes in the patch are the pod's).
    """
    spec = pod.get("spec") or {}

    def cut(containers: list[Obj]) -> list[Obj]:
        return [
            {k: c[k] for k in MUTABLE_FIELDS if k in c} if c.get("name") in targets else {}
            for c in containers
        ]

    projected: Obj = {"metadata": {}, "spec": {"containers": cut(spec.get("containers") or [])}}
    metadata = pod.get("metadata") or {}
    if "annotations" in metadata:  # only the status annotation is ever written
        annotations = metadata["annotations"]
        projected["metadata"]["annotations"] = (
            None
            if annotations is None
            else {k: v for k, v in annotations.items() if k == keys.STATUS}
        )
    if "initContainers" in spec:
        projected["spec"]["initContainers"] = cut(spec["initContainers"] or [])
    return projected


def _containers(projection: Obj) -> list[Obj]:
    spec = projection["spec"]
    return [*(spec.get("initContainers") or []), *spec["containers"]]


def _previous_status(annotations: Mapping[str, Any]) -> Mapping[str, Obj]:
    """The status this webhook wrote on an earlier pass, to recognise its own env entries."""
    raw = annotations.get(keys.STATUS)
    if not isinstance(raw, str):
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _cpu_limit_entry(container_name: str) -> Obj:
    return {
        "name": keys.CPU_LIMIT,
        "valueFrom": {
            "resourceFieldRef": {
                "containerName": container_name,
                "resource": "limits.cpu",
                "divisor": "1",
            }
        },
    }


def _entry(name: str, value: str, container_name: str) -> Obj:
    if value == CPU_LIMIT_MARK:
        return _cpu_limit_entry(container_name)
    return {"name": name, "value": value}


def _apply(
    pod: Obj,
    container: Obj,
    writable: Obj,
    target: Target,
    policy: WorkerPolicy,
    settings: Settings,
    ctx: _EnvContext,
) -> tuple[ContainerResult, list[str]]:
    """Decide from the original `container`; write env and resizePolicy into its `writable` copy."""
    cpu, why = cpu_limit(pod, container)
    if cpu is None:
        _remove_own(writable, target.name, ctx)
        return ContainerResult(target.name, target.runtime, target.source, skipped=why), [why or ""]
    warnings = []
    workers = worker_count(cpu.value, policy, memory=memory_limit(container))
    if workers.memory_cap is not None:
        warnings.append(
            f"container {target.name!r}: memory limit caps WEB_CONCURRENCY at {workers.count}"
            " (memory-per-worker)"
        )
    desired = {keys.WEB_CONCURRENCY: str(workers.count)}
    if cpu.source == "container":
        desired[keys.CPU_LIMIT] = CPU_LIMIT_MARK
    if settings.python_cpu_count:
        desired[keys.PYTHON_CPU_COUNT] = str(python_cpu_count(cpu.value))

    ours = (ctx.previous.get(target.name) or {}).get("set") or {}
    env: list[Obj] = writable.setdefault("env", [])
    applied: dict[str, str] = {}
    kept: list[str] = []
    unread: dict[str, list[str]] = {}  # envFrom source that could not be read -> names skipped
    for name in keys.INJECTED_ENV:
        index = next((i for i, e in enumerate(env) if e.get("name") == name), None)
        mine = index is not None and _is_own(env[index], ours, target.name)
        blocked, unreadable = _user_owns(container, name, index, mine=mine, ctx=ctx)
        if name not in desired or blocked:
            if mine and index is not None:
                del env[index]
            if blocked and name in desired:
                kept.append(name)
                if unreadable:
                    unread.setdefault(unreadable, []).append(name)
            continue
        entry = _entry(name, desired[name], target.name)
        if index is None:
            env.append(entry)
        else:
            env[index] = entry
        applied[name] = desired[name]
    if not env:
        del writable["env"]
    for source, names in unread.items():
        warnings.append(f"{target.name!r}: {source} not read; {', '.join(names)} not set")
    if settings.resize_restart and not target.init and keys.WEB_CONCURRENCY in applied:
        _add_resize_policy(writable)
    result = ContainerResult(
        target.name,
        target.runtime,
        target.source,
        cpu_text(cpu.value),
        cpu.source,
        applied,
        tuple(kept),
    )
    return result, warnings


def _user_owns(
    container: Obj, name: str, index: int | None, *, mine: bool, ctx: _EnvContext
) -> tuple[bool, str | None]:
    """Whether the user set (or may have set) `name`; the second item names an unread source.

    Kubernetes gives an `env` entry precedence over `envFrom`, so adding one would silently
    replace a value the user provides through a ConfigMap or Secret.
    """
    if ctx.override:
        return False, None
    if index is not None and not mine:
        return True, None
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix") or ""
        if not name.startswith(prefix):
            continue
        key = name[len(prefix) :]
        if "secretRef" in source:
            secret = (source["secretRef"] or {}).get("name")
            return True, f"envFrom Secret {secret!r}"
        configmap = (source.get("configMapRef") or {}).get("name")
        if not isinstance(configmap, str) or configmap not in ctx.configmaps:
            return True, f"envFrom ConfigMap {configmap!r}"
        if key in ctx.configmaps[configmap]:
            return True, None
    return False, None


def _remove_own(container: Obj, name: str, ctx: _EnvContext) -> None:
    """A target that lost its CPU limit since an earlier pass loses the env set then."""
    ours = (ctx.previous.get(name) or {}).get("set") or {}
    env = container.get("env")
    if not ours or not env:
        return
    container["env"] = [e for e in env if not _is_own(e, ours, name)]
    if not container["env"]:
        del container["env"]


def _is_own(entry: Obj, ours: Mapping[str, str], container_name: str) -> bool:
    """Whether an env entry is exactly what an earlier pass recorded setting (so it is ours)."""
    name = entry.get("name")
    return (
        isinstance(name, str) and name in ours and entry == _entry(name, ours[name], container_name)
    )


def _add_resize_policy(container: Obj) -> None:
    policies: list[Obj] = container.setdefault("resizePolicy", [])
    if not any(p.get("resourceName") == "cpu" for p in policies):
        policies.append(dict(RESIZE_POLICY))


def _plain_env(container: Obj, image: ImageConfig | None) -> dict[str, str]:
    """Literal env values the container will see (image Env, then the container's `value`s)."""
    env: dict[str, str] = {}
    for item in image["env"] if image else []:
        name, _, value = str(item).partition("=")
        env[name] = value
    for entry in container.get("env") or []:
        if "value" in entry:
            env[str(entry.get("name"))] = str(entry["value"])
    return env


def _clean(warnings: list[str]) -> list[str]:
    """Unique, non-empty, at most 120 characters each (kubectl shows them one per line)."""
    out = []
    for w in dict.fromkeys(warnings):
        if w:
            out.append(w if len(w) <= MAX_WARNING else w[: MAX_WARNING - 1] + "…")
    return out
