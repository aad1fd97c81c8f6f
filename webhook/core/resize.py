"""An in-place resize (`pods/resize`, UPDATE): which recorded worker counts it leaves stale. Pure.

A resize changes a container's CPU limit, never its env: env is fixed when a container starts,
and the worker variable the webhook wrote at creation is a literal that no restart re-derives
(Kubernetes issue 130801). So a resize is never patched and never denied; where the new limit
gives a different worker count than the status annotation records, the answer says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from webhook.core import keys
from webhook.core.annotations import annotations_of, boolean, status
from webhook.core.commands import find_server
from webhook.core.detection import containers_of
from webhook.core.options import Options
from webhook.core.profiles import GENERIC_PROFILE, Profile
from webhook.core.quantity import quantity
from webhook.core.types import Obj
from webhook.core.workers import WorkerPolicy, cpu_limit, memory_limit, pod_policy, worker_count

MAX_WARNING = 120
NAME_CHARS = 24  # of a container name in a warning, which stays within 120 characters
# Sources for which the runtime's own CLI was found on the command line (so no one-worker cap).
CLI_SOURCES = ("command", "image-command")


@dataclass(frozen=True)
class Stale:
    """One container whose recorded worker count the resized limits no longer give."""

    container: str
    runtime: str
    variable: str
    kept: str  # the value the container keeps (recorded at creation)
    wanted: str  # what a new pod would get: a count, or "none" without a CPU limit

    @property
    def warning(self) -> str:
        """At most 120 characters: what the container keeps, and what applies the new count."""
        name = self.container
        if len(name) > NAME_CHARS:
            name = name[: NAME_CHARS - 1] + "…"
        kept = f"resize: {name!r} keeps {self.variable}={self.kept}"
        if self.wanted == "none":
            text = f"{kept}; it has no CPU limit now, so a new pod would get none"
        else:
            text = f"{kept}; recreate the pod (kubectl rollout restart) to get {self.wanted}"
        return text if len(text) <= MAX_WARNING else text[: MAX_WARNING - 1] + "…"


def recorded_status(pod: Obj) -> Mapping[str, Any]:
    """The status annotation as recorded, per container; empty when absent or unreadable."""
    return status(annotations_of(pod))


def stale_counts(pod: Obj, options: Options) -> list[Stale]:
    """The containers of the resized `pod` whose recorded worker count its limits no longer give.

    Only containers the status annotation records a worker variable for count; the count is
    computed as at creation (the server's options and the pod's annotations, which a resize
    cannot change). A quantity that cannot be read means no finding, never an error.
    """
    recorded = recorded_status(pod)
    if not recorded or not isinstance(pod.get("spec"), dict):
        return []
    annotations = annotations_of(pod)
    policy, _ = pod_policy(options, annotations)
    multi = boolean(annotations, keys.MULTI_WORKER) is True
    found: list[Stale] = []
    for container, _ in containers_of(pod):
        entry = recorded.get(str(container.get("name")))
        if not isinstance(entry, dict):
            continue
        finding = _stale(pod, container, entry, policy, options, multi=multi)
        if finding is not None:
            found.append(finding)
    return found


def _stale(
    pod: Obj,
    container: Obj,
    entry: Mapping[str, Any],
    policy: WorkerPolicy,
    options: Options,
    *,
    multi: bool,
) -> Stale | None:
    values = entry.get("set")
    runtime = entry.get("runtime")
    if not isinstance(values, dict) or not isinstance(runtime, str):
        return None
    profile = options.profiles.get(runtime) or GENERIC_PROFILE
    variable = next((k for k in profile.env if k in values), None)
    if variable is None:  # no worker variable was set (kept by the user, or none read)
        return None
    kept = str(values[variable])
    name = str(container.get("name"))
    try:
        if not _readable(pod):
            return None  # a malformed quantity: the resize is not ours to judge
        cpu, _ = cpu_limit(pod, container)
        if cpu is None:
            return Stale(name, runtime, variable, kept, "none")
        count = worker_count(cpu.value, policy, memory=memory_limit(container)).count
    except (ValueError, ArithmeticError):
        return None
    if count > 1 and _one_worker_cap(container, entry, profile, options, kept=kept, multi=multi):
        count = 1
    return None if str(count) == kept else Stale(name, runtime, variable, kept, str(count))


def _one_worker_cap(
    container: Obj,
    entry: Mapping[str, Any],
    profile: Profile,
    options: Options,
    *,
    kept: str,
    multi: bool,
) -> bool:
    """Whether creation capped this runtime at one worker (not started by its CLI)."""
    if not profile.cli_workers_only or multi or entry.get("source") in CLI_SOURCES:
        return False
    argv = [
        str(a)
        for field_name in ("command", "args")
        if isinstance(container.get(field_name), list)
        for a in container[field_name]
    ]
    server = find_server(argv, options.profiles) if argv else None
    if server is not None and server.runtime == profile.name:
        return False
    return kept == "1"  # a count above 1 was recorded: creation did not cap it


def _readable(pod: Obj) -> bool:
    """Whether every CPU limit the count may depend on is a quantity (the pod's and each
    container's): an API server has validated them; a caller's made-up review may not."""
    spec = pod.get("spec") or {}
    holders = [spec, *(c for c, _ in containers_of(pod))]
    try:
        for holder in holders:
            raw = ((holder.get("resources") or {}).get("limits") or {}).get("cpu")
            if raw is not None:
                quantity(raw)
    except (ValueError, ArithmeticError, AttributeError):
        return False
    return True
