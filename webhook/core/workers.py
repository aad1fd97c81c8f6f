"""Worker policy: a target's CPU limit and the worker count it gives. Pure."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Any, Literal

from webhook.core import keys
from webhook.core.options import (
    MAX_WORKER_COUNT,
    Options,
    Rounding,
    parse_positive_quantity,
    parse_worker_count,
    parse_workers_per_cpu,
)
from webhook.core.quantity import quantity
from webhook.core.types import Obj

CpuSource = Literal["container", "pod"]
ROUNDING_MODES: dict[Rounding, str] = {
    "floor": ROUND_FLOOR,
    "ceil": ROUND_CEILING,
    "round": ROUND_HALF_UP,
}


@dataclass(frozen=True)
class WorkerPolicy:
    """How CPU becomes a worker count, after the pod's annotations are applied."""

    workers_per_cpu: Decimal
    min_workers: int
    max_workers: int | None
    memory_per_worker: Decimal | None
    rounding: Rounding


@dataclass(slots=True)  # built on every review: not frozen, whose setattr costs ~1 µs a build
class CpuLimit:
    value: Decimal
    source: CpuSource


@dataclass(slots=True)  # built on every review: not frozen, whose setattr costs ~1 µs a build
class Workers:
    count: int
    memory_cap: int | None  # set when the memory guard decided the count
    # When max-workers (or the MAX_WORKER_COUNT bound) lowered the count: what it was before,
    # and the cap, e.g. `8 (max-workers)` (each change of a value by a cap is warned about).
    capped_from: int | None = None
    cap: str | None = None


class InvalidValue(str):
    """A reason that is a value the API server itself would refuse, such as `cpu: abc`.

    Still a plain warning for the server (a pod is never blocked); `mutate` exits 2 on it.
    """


@functools.lru_cache(maxsize=256)  # the few limits pods use come back in pod after pod
def cpu_text(value: Decimal) -> str:
    """A CPU amount as plain cores, e.g. `0.5`, `2`."""
    return format(value.normalize(), "f")


# The annotations that override the server's worker policy for one pod: field and parser.
_OVERRIDES: tuple[tuple[str, str, Callable[[str], Any]], ...] = (
    (keys.WORKERS_PER_CPU, "workers_per_cpu", parse_workers_per_cpu),
    (keys.MIN_WORKERS, "min_workers", parse_worker_count),
    (keys.MAX_WORKERS, "max_workers", parse_worker_count),
    (keys.MEMORY_PER_WORKER, "memory_per_worker", parse_positive_quantity),
)
POLICY_KEYS = tuple(key for key, _, _ in _OVERRIDES)


def pod_policy(options: Options, annotations: Mapping[str, Any]) -> tuple[WorkerPolicy, list[str]]:
    """The server's defaults, overridden by the pod's annotations (a bad one is warned, ignored)."""
    for key in POLICY_KEYS:
        if key in annotations:
            return _policy(options, annotations)
    policy, warnings = _server_policy(options)  # most pods override nothing
    return policy, list(warnings)


@functools.lru_cache(maxsize=8)
def _server_policy(options: Options) -> tuple[WorkerPolicy, tuple[str, ...]]:
    policy, warnings = _policy(options, {})
    return policy, tuple(warnings)


def _policy(options: Options, annotations: Mapping[str, Any]) -> tuple[WorkerPolicy, list[str]]:
    policy = WorkerPolicy(
        options.workers_per_cpu,
        options.min_workers,
        options.max_workers,
        options.memory_per_worker,
        options.rounding,
    )
    warnings: list[str] = []
    for key, field_name, parse in _OVERRIDES:
        raw = annotations.get(key)
        if raw is None:
            continue
        try:
            policy = replace(policy, **{field_name: parse(str(raw).strip())})
        except (ValueError, ArithmeticError):
            warnings.append(f"{key}={raw!r} is not valid; using the default")
    if policy.max_workers is not None and policy.max_workers < policy.min_workers:
        warnings.append(
            f"min-workers {policy.min_workers} is above max-workers {policy.max_workers}; "
            f"using {policy.max_workers}"
        )
        policy = replace(policy, min_workers=policy.max_workers)
    return policy, warnings


def _limits(container: Obj) -> Mapping[str, Any]:
    resources = container.get("resources") or {}
    return resources.get("limits") or {}


def own_cpu_limit(container: Obj) -> Decimal | None:
    """The container's own `limits.cpu`; ValueError if it is not a quantity."""
    raw = _limits(container).get("cpu")
    return None if raw is None else quantity(raw)


def cpu_limit(pod: Obj, container: Obj) -> tuple[CpuLimit | None, str | None]:
    """The CPU the container may use, or why it is unknown.

    Without a limit of its own, a pod-level `spec.resources.limits.cpu` less the limits of the
    pod's other long-running containers (app containers and restartable init sidecars) applies;
    if one of those has no limit either, the split is unknown.
    """
    name = container.get("name")
    try:
        own = own_cpu_limit(container)
    except (ValueError, ArithmeticError):
        return None, InvalidValue(f"container {name!r} has an invalid CPU limit; nothing injected")
    if own is not None:
        if own <= 0:
            return None, f"container {name!r} has a CPU limit of {own}; nothing injected"
        return CpuLimit(own, "container"), None
    spec = pod.get("spec") or {}
    pod_cpu = ((spec.get("resources") or {}).get("limits") or {}).get("cpu")
    if pod_cpu is None:
        return None, f"container {name!r} has no CPU limit; nothing injected"
    try:
        remaining = quantity(pod_cpu)
        for other in _long_running(spec):
            if other.get("name") == name:
                continue
            other_cpu = own_cpu_limit(other)
            if other_cpu is None:
                return None, (
                    f"container {name!r} has no CPU limit and {other.get('name')!r} neither: "
                    "pod CPU split unknown"
                )
            remaining -= other_cpu
    except (ValueError, ArithmeticError):
        return None, InvalidValue(
            f"container {name!r}: invalid CPU quantity in the pod; nothing injected"
        )
    if remaining <= 0:
        return None, f"container {name!r}: no pod-level CPU left after other containers' limits"
    return CpuLimit(remaining, "pod"), None


def _long_running(spec: Obj) -> list[Obj]:
    sidecars = [c for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
    return [*sidecars, *(spec.get("containers") or [])]


def has_memory_limit(container: Obj) -> bool:
    return _limits(container).get("memory") is not None


def memory_limit(container: Obj) -> Decimal | None:
    raw = _limits(container).get("memory")
    if raw is None:
        return None
    try:
        return quantity(raw)
    except (ValueError, ArithmeticError):
        return None


def worker_count(cpu: Decimal, policy: WorkerPolicy, *, memory: Decimal | None = None) -> Workers:
    """clamp(round(cpu x workers-per-cpu), min, max), then the memory guard; never below 1."""
    raw = (cpu * policy.workers_per_cpu).to_integral_value(rounding=ROUNDING_MODES[policy.rounding])
    count = max(int(raw), policy.min_workers, 1)
    top, cap = MAX_WORKER_COUNT, f"{MAX_WORKER_COUNT} (the bound)"
    if policy.max_workers is not None and policy.max_workers <= top:
        top, cap = policy.max_workers, f"{policy.max_workers} (max-workers)"
    capped_from = None
    if count > top:
        count, capped_from = top, count
    if policy.memory_per_worker is not None and memory is not None:
        guard = max(1, math.floor(memory / policy.memory_per_worker))
        if guard < count:
            return Workers(guard, guard, capped_from, cap if capped_from else None)
    return Workers(count, None, capped_from, cap if capped_from else None)


def python_cpu_count(cpu: Decimal) -> int:
    """PYTHON_CPU_COUNT: max(1, floor(cpu))."""
    return max(1, math.floor(cpu))
