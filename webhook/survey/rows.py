"""Survey rows: one Python container, the workers it runs today and the verdict. Pure.

The decision (target, runtime, CPU, what would be set) is the handler's. This module adds what
the decision does not need: the worker count the container runs with *today*, read the way its
runtime reads it (a flag, then a variable in `env`, then one from an `envFrom` ConfigMap, then
the runtime's own default from its profile, where `cpu_count` means the node's CPUs), and the
verdict: `trapped` when more busy workers than CPUs, `under-used` when fewer workers than whole
CPUs, `ok`, or `unknown` with the reason.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any, Literal

from webhook.core.commands import find_server
from webhook.core.decision import ContainerResult, Decision
from webhook.core.detection import containers_of
from webhook.core.profiles import CPU_COUNT, GENERIC_PROFILE, Profile, ProfileSet

Verdict = Literal["trapped", "under-used", "ok", "unknown"]
VERDICTS: tuple[Verdict, ...] = ("trapped", "under-used", "ok", "unknown")
# `$(NAME)` in args: Kubernetes expands it from the container's env.
DEPENDENT = re.compile(r"^\$\(([A-Za-z_][A-Za-z0-9_]*)\)$")


@dataclass(frozen=True)
class Row:
    """One Python container of one workload (the keys of `survey -o json`)."""

    namespace: str
    kind: str
    name: str
    container: str
    runtime: str
    cpuLimit: str | None  # the JSON keys are camelCase, as SPEC names them
    currentWorkers: int | None
    workersSource: str
    wouldSet: str
    verdict: Verdict
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Nodes:
    """The CPU count a process sees on the nodes a workload's pods run on (`cpu_count()`)."""

    cpus: int | None
    where: str  # e.g. "node n1", "largest node n2 (unscheduled)", "--node-cpus"


@dataclass(frozen=True)
class ConfigMapValues:
    """What a survey could read of the ConfigMaps behind `envFrom`: values, or why not."""

    values: Mapping[str, Mapping[str, str] | None] = field(default_factory=dict)
    # name -> data; None: it exists but could not be read (forbidden); absent: not found.
    unreadable: Mapping[str, str] = field(default_factory=dict)  # name -> why


@dataclass(frozen=True)
class Workers:
    count: int | None
    source: str
    unknown: str | None = None  # why the count is not known


def rows_for(
    *,
    namespace: str,
    kind: str,
    name: str,
    pod: Mapping[str, Any],
    decision: Decision,
    profiles: ProfileSet,
    configmaps: ConfigMapValues,
    nodes: Nodes,
) -> list[Row]:
    """One row per target of the decision (a Python container), in pod order."""
    by_name = {str(c.get("name")): c for c, _ in containers_of(dict(pod))}
    rows = []
    for result in decision.containers:
        container = by_name.get(result.name) or {}
        profile = profiles.get(result.runtime) or (
            GENERIC_PROFILE if result.runtime == GENERIC_PROFILE.name else None
        )
        workers = (
            current_workers(
                container, profile, profiles=profiles, configmaps=configmaps, nodes=nodes
            )
            if profile is not None
            else Workers(None, "unknown", f"runs {result.runtime}: not decided")
        )
        verdict, reason = judge(result, workers)
        rows.append(
            Row(
                namespace,
                kind,
                name,
                result.name,
                result.runtime,
                None if result.skipped else result.cpu,
                workers.count,
                workers.source,
                would_set(result, profile),
                verdict,
                reason,
            )
        )
    return rows


def current_workers(
    container: Mapping[str, Any],
    profile: Profile,
    *,
    profiles: ProfileSet,
    configmaps: ConfigMapValues,
    nodes: Nodes,
) -> Workers:
    """The worker count this container runs with today, and where it comes from."""
    env = _Env(container, configmaps)
    argv = [str(w) for w in [*(container.get("command") or []), *(container.get("args") or [])]]
    server = find_server(argv, profiles) if argv else None
    args = server.args if server is not None and server.runtime == profile.name else ()
    for flag in profile.solo_flags:
        if flag in args:
            return Workers(1, f"flag {flag}")
    found = _flag_value(profile, args, env)
    if found is not None:
        return found
    for variable in profile.flag_env:
        text, where, why = env.get(variable)
        if why:
            return Workers(None, where, why)
        if text is not None:
            try:
                words = tuple(shlex.split(text))
            except ValueError:
                words = tuple(text.split())
            value = _flag_value(profile, words, env, where=where)
            if value is not None:
                return value
    for variable in (*profile.override_env, *profile.env):
        text, where, why = env.get(variable)
        if why:
            return Workers(None, where, why)
        if text is not None:
            return _count(text, where)
    read = profile.flag_reader.read(args)
    for flag in profile.config_flags:
        config = read.get(flag)
        if config is not None:
            return Workers(None, f"config file {config[:40]}", "a config file may set it")
    return _default(profile, nodes, env.unread)


def _flag_value(
    profile: Profile, args: tuple[str, ...], env: _Env, *, where: str = ""
) -> Workers | None:
    if not args:
        return None
    found = profile.flag_reader.read(args)
    for flag in profile.flags:
        value = found.get(flag)
        if value is None:
            continue
        source = f"flag {flag}" + (f" in {where}" if where else "")
        dependent = DEPENDENT.match(value)
        if dependent:  # `--workers $(WORKERS)`: Kubernetes expands it from env
            text, origin, why = env.get(dependent.group(1))
            if text is None:
                return Workers(None, source, why or f"{value} is not set in env")
            return _count(text, f"{source} from {origin}")
        return _count(value, source)
    return None


def _count(text: str, source: str) -> Workers:
    text = text.strip()
    if text.isdigit() and int(text) > 0:
        return Workers(int(text), source)
    return Workers(None, source, f"{source} is {text[:20]!r}, not a count")


def _default(profile: Profile, nodes: Nodes, unread: list[str]) -> Workers:
    if unread:
        return Workers(None, "unknown", f"{' and '.join(unread)} not read; it may set the count")
    default = profile.default_workers
    if default is None:
        return Workers(None, "unknown", f"{profile.name} decides its own count; none is known")
    if default == CPU_COUNT:
        if nodes.cpus is None:
            return Workers(None, "node CPU count", "defaults to the node's CPUs; no node known")
        return Workers(nodes.cpus, f"node CPU count ({nodes.where})")
    return Workers(int(default), f"{profile.name} default")


class _Env:
    """A container's variables as the kubelet would give them: `env` over `envFrom`."""

    def __init__(self, container: Mapping[str, Any], configmaps: ConfigMapValues) -> None:
        self.container = container
        self.configmaps = configmaps
        self.unread: list[str] = []
        for source in container.get("envFrom") or []:
            if "secretRef" in source:
                self.unread.append(f"envFrom Secret {(source['secretRef'] or {}).get('name')!r}")
            name = str((source.get("configMapRef") or {}).get("name"))
            if name in configmaps.unreadable:
                self.unread.append(f"envFrom ConfigMap {name!r} ({configmaps.unreadable[name]})")

    def get(self, variable: str) -> tuple[str | None, str, str | None]:
        """(value, where it comes from, why it is unknown) for one variable."""
        for entry in self.container.get("env") or []:
            if entry.get("name") != variable:
                continue
            if "value" in entry:
                return str(entry.get("value") or ""), f"env {variable}", None
            return None, f"env {variable}", f"env {variable} comes from valueFrom"
        found: tuple[str | None, str, str | None] = (None, "", None)
        for source in self.container.get("envFrom") or []:  # the last source that has it wins
            prefix = source.get("prefix") or ""
            if not variable.startswith(prefix):
                continue
            key = variable[len(prefix) :]
            if "configMapRef" in source:
                name = str((source.get("configMapRef") or {}).get("name"))
                data = self.configmaps.values.get(name)
                if data is not None and key in data:
                    found = (str(data[key]), f"envFrom ConfigMap {name} {variable}", None)
        return found


def judge(result: ContainerResult, workers: Workers) -> tuple[Verdict, str]:
    """trapped, under-used, ok or unknown, with the reason in words."""
    if result.skipped:
        return "unknown", result.skipped
    if workers.count is None:
        return "unknown", workers.unknown or "worker count unknown"
    cpu = Decimal(str(result.cpu))
    count = workers.count
    cpus = f"{result.cpu} CPU{'' if cpu == 1 else 's'}"
    workers_text = f"{count} worker{'' if count == 1 else 's'}"
    if count > cpu:
        return "trapped", f"{workers_text} on {cpus}: throttled when busy"
    if count < max(1, math.floor(cpu)):
        return "under-used", f"{workers_text} for {cpus}"
    return "ok", f"{workers_text} for {cpus}"


def would_set(result: ContainerResult, profile: Profile | None) -> str:
    """What the webhook would set for the worker count, as VARIABLE=value, or why nothing."""
    if result.skipped:
        return "nothing"
    names = profile.env if profile is not None else ()
    values = [f"{k}={v}" for k, v in result.set.items() if k in names]
    if values:
        return ", ".join(values)
    if any(k in names for k in result.kept):
        return "nothing (the container sets it)"
    if not names:
        return "nothing (reads no variable)"
    return "nothing"


@dataclass
class Summary:
    """Totals over every row, and what could not be read."""

    workloads: int = 0
    containers: int = 0
    verdicts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(VERDICTS, 0))
    forbidden: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, rows: list[Row]) -> None:
        if rows:
            self.workloads += 1
        for row in rows:
            self.containers += 1
            self.verdicts[row.verdict] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "workloads": self.workloads,
            "containers": self.containers,
            **self.verdicts,
            "forbidden": list(self.forbidden),
            "notes": list(self.notes),
        }

    def line(self) -> str:
        counts = ", ".join(f"{v} {k}" for k, v in self.verdicts.items())
        text = (
            f"{self.containers} Python container{'s' if self.containers != 1 else ''} "
            f"in {self.workloads} workload{'s' if self.workloads != 1 else ''}: {counts}"
        )
        if self.forbidden:
            text += f"; not readable (403): {', '.join(self.forbidden)}"
        return text
