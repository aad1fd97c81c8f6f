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
from dataclasses import dataclass, field, replace
from typing import Literal

import orjson

from webhook.core import keys
from webhook.core.annotations import annotations_of, boolean, unknown_words, word
from webhook.core.annotations import status as status_of
from webhook.core.detection import (
    NotTarget,
    Source,
    Target,
    containers_of,
    opted_out,
    select,
)
from webhook.core.env import (
    CPU_LIMIT_MARK,
    EnvContext,
    plain_env,
    reconcile,
    remove_own,
    unread_warnings,
)
from webhook.core.flags import flag_warnings, kept_warnings, sets_workers_itself, threads_of
from webhook.core.once import once
from webhook.core.options import Options
from webhook.core.patch import ArrayEdit, Path, op
from webhook.core.profiles import GENERIC_PROFILE, Profile
from webhook.core.types import ImageConfig, Obj
from webhook.core.workers import (
    CpuLimit,
    InvalidValue,
    WorkerPolicy,
    cpu_limit,
    cpu_text,
    has_memory_limit,
    memory_limit,
    pod_policy,
    python_cpu_count,
    worker_count,
)

MAX_WARNING = 120
# Why a target got nothing: no usable CPU limit, or a script whose server is not known.
SkipReason = Literal["no-cpu-limit", "undecided"]
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
    skip_reason: SkipReason | None = None  # why it got nothing, as a metrics label
    unread: tuple[str, ...] = ()  # envFrom sources never read that might set a variable
    workers: str | None = None  # "none": the runtime reads no worker variable
    threads: str | None = None  # threads per worker its command line sets (recorded, not warned)
    # The wanted names an unread envFrom source may set, with the sources (for the warning).
    unread_names: Mapping[str, list[str]] = field(default_factory=dict, compare=False, repr=False)
    # Skipped over a value the API server itself would refuse (`cpu: abc`): `mutate` exits 2.
    invalid: bool = field(default=False, compare=False)

    @once
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
        if self.threads:
            entry["threads"] = self.threads
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
    # Every container that is not a target, with why (for `explain`; no part of the response).
    others: tuple[NotTarget, ...] = ()

    @once
    def injected(self) -> list[ContainerResult]:
        return [c for c in self.containers if c.set]

    @property
    def invalid(self) -> bool:
        """Whether a target held a value the API server would refuse (warned, never blocked)."""
        return any(c.invalid for c in self.containers)

    # Cached: a decision may answer many identical reviews (see webhook/admission/cache.py).
    @once
    def status(self) -> dict[str, Obj]:
        """Per container, what was set and why (the status annotation's content, for logs)."""
        return {c.name: c.status() for c in self.containers}

    @once
    def outcome(self) -> str:
        """What the answer does: the requests metric's label and the log line's `outcome`.

        `patched` edits a container (env or resizePolicy); `annotated` writes only the status
        annotation (every target was skipped or kept the user's values, e.g. no CPU limit);
        `unchanged` carries no patch; `audit` would have set something.
        """
        if self.audit and self.injected:
            return "audit"
        if not self.patch:
            return "unchanged"
        edits_containers = any(not o["path"].startswith("/metadata") for o in self.patch)
        return "patched" if edits_containers else "annotated"

    @once
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

    @once
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
    options: Options,
    *,
    images: Mapping[str, ImageConfig] | None = None,
    configmaps: Mapping[str, frozenset[str]] | None = None,
) -> Decision:
    """Everything the webhook does to a Pod at CREATE, as data."""
    images = images or {}
    annotations = annotations_of(pod)
    audit = options.mode == "audit" or word(annotations, keys.MODE) == "audit"
    profiles = options.profiles
    chosen = select(pod, images, profiles)
    targets, warnings, others = chosen.targets, chosen.warnings, tuple(chosen.others)
    if opted_out(annotations):
        return Decision([], [], [], audit, "opted-out", others=others)
    if not targets:
        return Decision([], _clean(warnings), [], audit, "no-target", others=others)

    policy, more = pod_policy(options, annotations)
    warnings += more
    warnings += unknown_words(annotations)
    located = _locate(pod)
    env_context = EnvContext(
        previous=status_of(annotations),
        override=boolean(annotations, keys.OVERRIDE) is True,
        configmaps=configmaps or {},
        env_from_unknown=options.env_from_unknown,
    )
    multi = boolean(annotations, keys.MULTI_WORKER) is True
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
        wanted = _wanted(pod, container, target, policy, options, profile=profile, multi=multi)
        result = _apply(container, edit, target, wanted, options, env_context, profile=profile)
        image = images.get(container.get("image", ""))
        env = plain_env(container, image)
        threads = threads_of(profile, target.server, env)
        if threads is not None:
            result = replace(result, threads=threads)
        results.append(result)
        edits.append(edit)
        warnings += wanted.warnings
        warnings += unread_warnings(target.name, result.unread_names, result.set)
        cpu = wanted.cpu.value if wanted.cpu is not None else None
        warnings += flag_warnings(target.name, profile, target.server, env, cpu=cpu)
        warnings += kept_warnings(target.name, profile, result.kept, env, cpu=cpu)

    status = orjson.dumps({r.name: r.status() for r in results}, option=orjson.OPT_SORT_KEYS)
    injected = [r for r in results if r.set]
    reason = None if injected else _why_nothing(results)
    if audit:
        for r in injected:
            values = ", ".join(f"{k}={v}" for k, v in r.set.items())
            warnings.append(f"audit: would set {values} in {r.name!r}")
        return Decision([], _clean(warnings), results, True, reason, others=others)
    edits.sort(key=lambda e: e.path)
    patch = _status_ops(pod, status.decode())
    for edit in edits:
        patch += edit.env.ops() + edit.resize.ops()
    return Decision(patch, _clean(warnings), results, False, reason, tuple(edits), others)


@dataclass(slots=True)  # built on every review: not frozen, whose setattr costs ~1 µs a build
class ContainerEdit:
    """The edits to one target container's arrays, at the container's path in the pod."""

    path: Path
    env: ArrayEdit
    resize: ArrayEdit


@dataclass(slots=True)  # built on every review: not frozen, whose setattr costs ~1 µs a build
class Wanted:
    """What one target should get, before it meets the env the user wrote."""

    values: dict[str, str]  # variable -> value (CPU_LIMIT_MARK for the downward API)
    cpu: CpuLimit | None = None
    skipped: str | None = None  # why it gets nothing
    skip_reason: SkipReason | None = None
    warnings: tuple[str, ...] = ()
    invalid: bool = False  # skipped over a value the API server would refuse


def _why_nothing(results: list[ContainerResult]) -> str:
    """Why no target got anything: a missing CPU limit first, then an undecided script."""
    for reason in ("no-cpu-limit", "undecided"):
        if any(r.skip_reason == reason for r in results):
            return reason
    return "user-set"  # every value was already set by the user (or none to set)


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


def _wanted(
    pod: Obj,
    container: Obj,
    target: Target,
    policy: WorkerPolicy,
    options: Options,
    *,
    profile: Profile,
    multi: bool,
) -> Wanted:
    """What this target should get: its worker variable, CPU_LIMIT and PYTHON_CPU_COUNT."""
    if target.undecided:
        return Wanted(
            {},
            skipped=f"runs {' or '.join(target.undecided)} by its arguments; not decided",
            skip_reason="undecided",
        )
    cpu, why = cpu_limit(pod, container)
    if cpu is None:
        # An invalid limit (`cpu: abc`) is, for the worker count, no usable limit.
        invalid = isinstance(why, InvalidValue)
        return Wanted(
            {}, skipped=why, skip_reason="no-cpu-limit", warnings=(why or "",), invalid=invalid
        )
    warnings = []
    memory = memory_limit(container)
    invalid = (
        memory is None and has_memory_limit(container) and policy.memory_per_worker is not None
    )
    if invalid and profile.env:  # the guard reads the limit: the same rule as for cpu
        warnings.append(
            f"container {target.name!r} has an invalid memory limit; memory guard not applied"
        )
    workers = worker_count(cpu.value, policy, memory=memory)
    count = workers.count
    if profile.env and workers.capped_from is not None:
        warnings.append(
            f"container {target.name!r}: {profile.env[0]} {workers.capped_from} for "
            f"{cpu_text(cpu.value)} CPU capped to {workers.cap}"
        )
    if profile.env and workers.memory_cap is not None:
        warnings.append(
            f"container {target.name!r}: memory limit caps {profile.env[0]} at {count}"
            " (memory-per-worker)"
        )
    if count > 1 and profile.cli_workers_only and not _started_by_cli(target) and not multi:
        warnings.append(
            f"container {target.name!r}: {profile.name} not run by its CLI: 1 worker, not {count}; "
            f"opt in: {keys.MULTI_WORKER}"  # 120 characters: names up to 17
        )
        count = 1
    if not profile.env and not sets_workers_itself(profile, target.server):
        warnings.append(
            f"container {target.name!r}: {profile.name} reads no worker variable; {profile.hint}"
        )
    values = dict.fromkeys(profile.env, str(count))
    if cpu.source == "container":
        values[keys.CPU_LIMIT] = CPU_LIMIT_MARK
    if options.python_cpu_count:
        values[keys.PYTHON_CPU_COUNT] = str(python_cpu_count(cpu.value))
    return Wanted(values, cpu, warnings=tuple(warnings), invalid=invalid and bool(profile.env))


def _apply(
    container: Obj,
    edit: ContainerEdit,
    target: Target,
    wanted: Wanted,
    options: Options,
    ctx: EnvContext,
    *,
    profile: Profile,
) -> ContainerResult:
    """Reconcile the target's env (and resizePolicy) with what it should get."""
    if wanted.cpu is None:
        remove_own(edit.env, target.name, ctx)
        return ContainerResult(
            target.name,
            target.runtime,
            target.source,
            skipped=wanted.skipped,
            skip_reason=wanted.skip_reason,
            invalid=wanted.invalid,
        )
    worker_names = frozenset(profile.env)
    done = reconcile(container, edit.env, wanted.values, worker_names=worker_names, ctx=ctx)
    if options.resize_restart and not target.init and worker_names & set(done.applied):
        _add_resize_policy(edit.resize)
    return ContainerResult(
        target.name,
        target.runtime,
        target.source,
        cpu_text(wanted.cpu.value),
        wanted.cpu.source,
        done.applied,
        done.kept,
        unread=_sources(done.unread) if done.unread else (),
        workers=None if profile.env else "none",
        unread_names=done.unread,
        invalid=wanted.invalid,
    )


def _sources(unread: Mapping[str, list[str]]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(s for sources in unread.values() for s in sources))


def _started_by_cli(target: Target) -> bool:
    """Whether the target's own command line is its runtime's CLI (so workers > 1 is safe)."""
    return target.server is not None and target.server.runtime == target.runtime


def _add_resize_policy(policies: ArrayEdit) -> None:
    if not any(p.get("resourceName") == "cpu" for p in policies.items):
        policies.append(dict(RESIZE_POLICY))


def _clean(warnings: list[str]) -> list[str]:
    """Unique, non-empty, at most 120 characters each (kubectl shows them one per line)."""
    out = []
    for w in dict.fromkeys(warnings):
        if w:
            # Plain strings: a reason may be a str subclass (InvalidValue), which YAML can't write.
            out.append(str(w) if len(w) <= MAX_WARNING else w[: MAX_WARNING - 1] + "…")
    return out
