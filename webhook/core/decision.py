"""Decide and apply: which env a pod's targets get, as a JSON Patch. Pure.

The pod is never edited in place. The webhook only ever writes inside three places: its status
annotation, and the `env` and `resizePolicy` arrays of target containers, addressed by the
container's index. Each edit to those arrays is logged as the patch op that makes it
(`webhook.core.patch.ArrayEdit`), so the patch applies in order by construction and cannot touch a
container as a whole; tests hold it equal to `jsonpatch.make_patch` of the edited pod.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import orjson

from webhook.config import Settings
from webhook.core import keys
from webhook.core.detection import Source, Target, containers_of, opted_out, select_targets
from webhook.core.patch import ArrayEdit, Path, op
from webhook.core.profiles import GENERIC_PROFILE, Profile
from webhook.core.types import ImageConfig, Obj
from webhook.core.workers import (
    WorkerPolicy,
    cpu_limit,
    cpu_text,
    flag_warnings,
    memory_limit,
    option,
    pod_policy,
    python_cpu_count,
    worker_count,
)

MAX_WARNING = 120
CPU_LIMIT_MARK = "limits.cpu"  # how the status annotation records the downward-API CPU_LIMIT
RESIZE_POLICY = {"resourceName": "cpu", "restartPolicy": "RestartContainer"}


@dataclass(frozen=True)
class ContainerResult:
    """What happened to one target container."""

    name: str
    runtime: str
    source: Source
    cpu: str | None = None
    cpu_from: str | None = None
    set: dict[str, str] = field(default_factory=dict)
    kept: tuple[str, ...] = ()
    skipped: str | None = None
    unread: tuple[str, ...] = ()  # envFrom sources never read that might set a variable
    workers: str | None = None  # "none": the runtime reads no worker variable

    @property
    def worker_count(self) -> str:
        """The worker count set (its runtime's variable), or `none` where none was set."""
        return next((v for k, v in self.set.items() if k not in keys.FACTS), "none")

    def status(self) -> Obj:
        entry: Obj = {"runtime": self.runtime, "source": self.source}
        if self.skipped:
            entry["skipped"] = self.skipped
        else:
            entry.update(cpu=self.cpu, cpuFrom=self.cpu_from, set=self.set)
        if self.kept:
            entry["kept"] = list(self.kept)
        if self.unread:
            entry["unread"] = list(self.unread)
        if self.workers:
            entry["workers"] = self.workers
        return entry


@dataclass(frozen=True)
class Decision:
    """The outcome for one pod: the patch (empty for no change), warnings and what was decided."""

    patch: list[Obj]
    warnings: list[str]
    containers: list[ContainerResult]
    audit: bool = False
    reason: str | None = None  # why nothing was injected, when nothing was
    edits: tuple[ContainerEdit, ...] = ()  # the arrays the patch edits, as they end up

    @property
    def injected(self) -> list[ContainerResult]:
        return [c for c in self.containers if c.set]

    # Cached: a decision may answer many identical reviews (see webhook/admission/cache.py).
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
    profiles = settings.profiles()
    targets, warnings = select_targets(pod, images, profiles)
    if not targets:
        return Decision([], _clean(warnings), [], audit, "no-target")

    policy, more = pod_policy(settings, annotations)
    warnings += more
    located = _locate(pod)
    env_context = _EnvContext(
        previous=_previous_status(annotations),
        override=str(annotations.get(keys.OVERRIDE, "")).strip().lower() == "true",
        configmaps=configmaps or {},
        multi=str(annotations.get(keys.MULTI_WORKER, "")).strip().lower() == "true",
    )
    results = []
    seen: set[str] = set()
    edits = []
    for target in targets:
        if target.name in seen:  # a repeated name (an invalid pod): edit its first container once
            continue
        seen.add(target.name)
        path, container = located[target.name]
        edit = ContainerEdit(
            path,
            ArrayEdit((*path, "env"), container.get("env")),
            ArrayEdit((*path, "resizePolicy"), container.get("resizePolicy")),
        )
        profile = profiles.get(target.runtime) or GENERIC_PROFILE
        result, found = _apply(
            pod, container, edit, target, policy, settings, env_context, profile=profile
        )
        results.append(result)
        edits.append(edit)
        warnings += found
        image = images.get(container.get("image", ""))
        warnings += flag_warnings(target.name, profile, target.server, _plain_env(container, image))

    status = orjson.dumps({r.name: r.status() for r in results}, option=orjson.OPT_SORT_KEYS)
    injected = [r for r in results if r.set]
    reason = None if injected else "no-cpu-limit"
    if audit:
        for r in injected:
            values = ", ".join(f"{k}={v}" for k, v in r.set.items())
            warnings.append(f"audit: would set {values} in {r.name!r}")
        return Decision([], _clean(warnings), results, True, reason)
    edits.sort(key=lambda e: e.path)
    patch = _status_ops(pod, status.decode())
    for edit in edits:
        patch += edit.env.ops() + edit.resize.ops()
    return Decision(patch, _clean(warnings), results, False, reason, tuple(edits))


@dataclass(frozen=True)
class ContainerEdit:
    """The edits to one target container's arrays, at the container's path in the pod."""

    path: Path
    env: ArrayEdit
    resize: ArrayEdit


@dataclass(frozen=True)
class _EnvContext:
    previous: Mapping[str, Obj]
    override: bool
    configmaps: Mapping[str, frozenset[str]]
    multi: bool  # the pod opted in to more than one worker where a runtime risks a crash


def _locate(pod: Obj) -> dict[str, tuple[Path, Obj]]:
    """Each container by name, with its path in the pod (the first, if a name repeats)."""
    spec = pod.get("spec") or {}
    found: dict[str, tuple[Path, Obj]] = {}
    for field_name in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(field_name) or []):
            name = container.get("name") if isinstance(container, dict) else None
            if isinstance(name, str) and name not in found:
                found[name] = (("spec", field_name, index), container)
    return found


def _status_ops(pod: Obj, status: str) -> list[Obj]:
    """Write the status annotation, creating `metadata` or `annotations` where they are missing."""
    metadata = pod.get("metadata")
    if not isinstance(metadata, dict):  # missing, or null (a shape check refused the rest)
        verb = "replace" if "metadata" in pod else "add"
        return [op(verb, ("metadata",), {"annotations": {keys.STATUS: status}})]
    annotations = metadata.get("annotations")
    if not isinstance(annotations, dict):
        verb = "replace" if "annotations" in metadata else "add"
        return [op(verb, ("metadata", "annotations"), {keys.STATUS: status})]
    if annotations.get(keys.STATUS) == status:
        return []
    verb = "replace" if keys.STATUS in annotations else "add"
    return [op(verb, ("metadata", "annotations", keys.STATUS), status)]


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
    edit: ContainerEdit,
    target: Target,
    policy: WorkerPolicy,
    settings: Settings,
    ctx: _EnvContext,
    *,
    profile: Profile,
) -> tuple[ContainerResult, list[str]]:
    """Decide from the original `container`; log the env and resizePolicy changes in `edit`."""
    if target.undecided:
        skipped = f"runs {' or '.join(target.undecided)} by its arguments; not decided"
        _remove_own(edit.env, target.name, ctx)
        return ContainerResult(target.name, target.runtime, target.source, skipped=skipped), []
    cpu, why = cpu_limit(pod, container)
    if cpu is None:
        _remove_own(edit.env, target.name, ctx)
        return ContainerResult(target.name, target.runtime, target.source, skipped=why), [why or ""]
    warnings = []
    workers = worker_count(cpu.value, policy, memory=memory_limit(container))
    count = workers.count
    if profile.env and workers.memory_cap is not None:
        warnings.append(
            f"container {target.name!r}: memory limit caps {profile.env[0]} at {count}"
            " (memory-per-worker)"
        )
    if count > 1 and profile.cli_workers_only and not _started_by_cli(target) and not ctx.multi:
        warnings.append(
            f"{target.name!r}: {profile.name} not run by its CLI: {count} -> 1 worker (run(app) "
            f"exits above 1); opt in: {keys.MULTI_WORKER}"
        )
        count = 1
    if not profile.env and not _sets_workers_itself(target, profile):
        warnings.append(f"{target.name!r}: {profile.name} reads no worker variable; {profile.hint}")
    desired = dict.fromkeys(profile.env, str(count))
    workers_env = set(profile.env)
    if cpu.source == "container":
        desired[keys.CPU_LIMIT] = CPU_LIMIT_MARK
    if settings.python_cpu_count:
        desired[keys.PYTHON_CPU_COUNT] = str(python_cpu_count(cpu.value))

    ours = (ctx.previous.get(target.name) or {}).get("set") or {}
    env = edit.env
    applied: dict[str, str] = {}
    kept: list[str] = []
    unread: dict[str, list[str]] = {}  # names whose value an unread envFrom source may hold
    for name in dict.fromkeys([*desired, *keys.FACTS, *ours]):
        index = next((i for i, e in enumerate(env.items) if e.get("name") == name), None)
        mine = index is not None and _is_own(env.items[index], ours, target.name)
        owned, sources = _user_owns(container, name, index, mine=mine, ctx=ctx)
        if sources and name in desired:
            unread[name] = sources
        # A fact is set over an unread source; a worker variable only if the cluster says so.
        blocked = owned or bool(
            sources and name in workers_env and settings.env_from_unknown == "skip"
        )
        if name not in desired or blocked:
            if mine and index is not None:
                env.delete(index)
            if owned and name in desired:
                kept.append(name)
            continue
        entry = _entry(name, desired[name], target.name)
        if index is None:
            env.append(entry)
        else:
            env.replace(index, entry)
        applied[name] = desired[name]
    warnings += _unread_warnings(target.name, unread, applied)
    if settings.resize_restart and not target.init and workers_env & set(applied):
        _add_resize_policy(edit.resize)
    result = ContainerResult(
        target.name,
        target.runtime,
        target.source,
        cpu_text(cpu.value),
        cpu.source,
        applied,
        tuple(kept),
        unread=tuple(dict.fromkeys(s for sources in unread.values() for s in sources)),
        workers=None if profile.env else "none",
    )
    return result, warnings


def _sets_workers_itself(target: Target, profile: Profile) -> bool:
    """Whether the command line already gives the worker count by a flag."""
    args = target.server.args if target.server is not None else ()
    return any(option(args, flag) is not None for flag in profile.flags)


def _started_by_cli(target: Target) -> bool:
    """Whether the target's own command line is its runtime's CLI (so workers > 1 is safe)."""
    return target.server is not None and target.server.runtime == target.runtime


def _unread_warnings(
    name: str, unread: Mapping[str, list[str]], applied: Mapping[str, str]
) -> list[str]:
    """One warning per container naming every envFrom source that was not read."""
    if not unread:
        return []
    sources = ", ".join(dict.fromkeys(s for found in unread.values() for s in found))
    skipped = [n for n in unread if n not in applied]
    replaced = [n for n in unread if n in applied]
    said = []
    if skipped:
        said.append(f"{', '.join(skipped)} not set")
    if replaced:
        said.append(f"{', '.join(replaced)} set over it")
    return [f"{name!r}: {sources} not read; {'; '.join(said)}"]


def _user_owns(
    container: Obj, name: str, index: int | None, *, mine: bool, ctx: _EnvContext
) -> tuple[bool, list[str]]:
    """Whether the user set `name` (an env entry, a ConfigMap key), and which unread sources may.

    Kubernetes gives an `env` entry precedence over `envFrom`, so adding one would replace a
    value the user provides through a ConfigMap or Secret. A Secret is never read, and a
    ConfigMap only in-cluster: those are named, not claimed as kept.
    """
    if ctx.override:
        return False, []
    if index is not None and not mine:
        return True, []
    owned = False
    unread: list[str] = []
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix") or ""
        if not name.startswith(prefix):
            continue
        key = name[len(prefix) :]
        if source.get("secretRef") is not None:
            unread.append(f"envFrom Secret {(source['secretRef'] or {}).get('name')!r}")
            continue
        configmap = (source.get("configMapRef") or {}).get("name")
        if not isinstance(configmap, str) or configmap not in ctx.configmaps:
            unread.append(f"envFrom ConfigMap {configmap!r}")
        elif key in ctx.configmaps[configmap]:
            owned = True
    return owned, [] if owned else unread


def _remove_own(env: ArrayEdit, name: str, ctx: _EnvContext) -> None:
    """A target that lost its CPU limit since an earlier pass loses the env set then."""
    ours = (ctx.previous.get(name) or {}).get("set") or {}
    if not ours:
        return
    for index in reversed(range(len(env.items))):
        if _is_own(env.items[index], ours, name):
            env.delete(index)


def _is_own(entry: Obj, ours: Mapping[str, str], container_name: str) -> bool:
    """Whether an env entry is exactly what an earlier pass recorded setting (so it is ours)."""
    name = entry.get("name")
    return (
        isinstance(name, str) and name in ours and entry == _entry(name, ours[name], container_name)
    )


def _add_resize_policy(policies: ArrayEdit) -> None:
    if not any(p.get("resourceName") == "cpu" for p in policies.items):
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
