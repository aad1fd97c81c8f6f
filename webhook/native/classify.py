"""Which containers the native policy decides: its CEL (webhook/native/cel.py) in Python. Pure.

The API server suite holds this equal to the marker the real policy writes, and holds the env
the policy stores equal to the webhook's on every container this names.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Mapping
from typing import Any

from webhook.core import keys
from webhook.core.commands import RUN_SUBCOMMANDS
from webhook.core.options import Options
from webhook.core.profiles import GENERIC, Profile
from webhook.core.quantity import quantity
from webhook.core.types import Obj
from webhook.native.cel import (
    CPU_DECIMAL,
    CPU_MILLI,
    CPU_WHOLE,
    POD_RULE_ANNOTATIONS,
    PYTHON_RE,
    Forms,
)

PYTHON = re.compile(PYTHON_RE)


def _word(annotations: Mapping[str, Any], key: str) -> str:
    return str(annotations.get(key, "")).strip().lower()


def considered(pod: Obj, *, caps: tuple[int, int, int] = (100, 5000, 256 * 1024)) -> bool:
    """The policy's matchConditions: whether it looks at this pod at all."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    spec = pod.get("spec") or {}
    every = [
        c
        for f in ("containers", "initContainers", "ephemeralContainers")
        for c in spec.get(f) or []
    ]
    return (
        "kubernetes.io/config.mirror" not in annotations
        and _word(annotations, keys.INJECT) != "false"
        and not annotations.get(keys.CONTAINERS)
        and _word(annotations, keys.MODE) != "audit"
        and _word(annotations, keys.OVERRIDE) != "true"
        and not any(k in annotations for k in POD_RULE_ANNOTATIONS)
        and len(every) <= caps[0]
        and sum(len(c.get("env") or []) for c in every) <= caps[1]
        and sum(len(k) + len(v) for k, v in annotations.items()) <= caps[2]
    )


def read(argv: list[str], forms: Forms) -> str:
    """The profile CEL reads in an exec-form argv, or ''."""
    if not argv:
        return ""
    program = posixpath.basename(argv[0])
    offset = 0
    if program in forms.runners and len(argv) > 1 and argv[1] in RUN_SUBCOMMANDS:
        offset = 3 if len(argv) > 2 and argv[2] == "--" else 2
    elif program in forms.wrappers:
        offset = 2 if len(argv) > 1 and argv[1] == "--" else 1
    a = argv[offset:]
    if not a:
        return ""
    program = posixpath.basename(a[0])
    operands = [w for w in a if not w.startswith("-")]
    profile = forms.executables.get(program)
    if profile is not None and _subcommand(profile, operands, 1):
        return profile.name
    for words, launched in forms.launchers.get(program, ()):
        if tuple(operands[1 : 1 + len(words)]) == words:
            return launched.name
    if PYTHON.match(program) and program == program.rstrip("\n") and len(a) > 2 and a[1] == "-m":
        module = a[2]
        if module in forms.modules:
            p = forms.modules[module]
            return p.name if _subcommand(p, operands, 2) else ""
        for words, launched in forms.launchers.get(module, ()):
            if tuple(operands[2 : 2 + len(words)]) == words:
                return launched.name
    return ""


def _subcommand(profile: Profile, operands: list[str], first: int) -> bool:
    return not profile.subcommands or any(
        w in profile.subcommands for w in operands[first : first + 3]
    )


def _limit(container: Obj, resource: str) -> str | None:
    value = ((container.get("resources") or {}).get("limits") or {}).get(resource)
    return None if value is None else str(value)


def millis(cpu: str | None) -> int:
    """Millicores CEL reads from a canonical quantity: 0 without one, -1 when it cannot."""
    if cpu is None:
        return 0
    if re.fullmatch(CPU_WHOLE.strip("^$"), cpu):
        return int(cpu) * 1000
    if re.fullmatch(CPU_MILLI.strip("^$"), cpu):
        return int(cpu[:-1])
    if re.fullmatch(CPU_DECIMAL.strip("^$"), cpu):
        whole, fraction = cpu.split(".")
        return int(whole) * 1000 + int(fraction.ljust(3, "0"))
    return -1


def decided(pod: Obj, options: Options, *, disabled: Iterable[str] = ()) -> dict[str, str]:
    """The containers the policy decides, by name, with the runtime it decides them as.

    `options` holds the profiles before any is disabled (as the policy's tables do), and
    `disabled` the names turned off.
    """
    if not considered(pod):
        return {}
    profiles = options.profiles
    forms = Forms.of(profiles)
    off = set(disabled)
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    spec = pod.get("spec") or {}
    containers = spec.get("containers") or []
    names = [c.get("name") for c in containers]
    runtime_word = _word(annotations, keys.RUNTIME)
    annotated = runtime_word == GENERIC or (
        runtime_word in profiles.profiles and runtime_word not in off
    )
    wanted_default = annotations.get(keys.DEFAULT_CONTAINER) or ""
    default = names.index(wanted_default) if wanted_default in names else 0
    pod_cpu = _limit(spec, "cpu") is not None
    cli_only = {n for n, p in profiles.profiles.items() if p.cli_workers_only}
    out: dict[str, str] = {}
    for i, c in enumerate(containers):
        argv = [*(c.get("command") or []), *(c.get("args") or [])]
        detected = read(argv, forms)
        runtime = (runtime_word if i == default else "") if annotated else detected
        if not runtime or (runtime in off and not annotated):
            continue
        m = millis(_limit(c, "cpu"))
        cap = _memory_cap(c, options)
        if c.get("envFrom") or m < 0 or (m == 0 and _limit(c, "cpu") is None and pod_cpu):
            continue
        if cap < 0:
            continue
        if annotated and runtime in cli_only and _word(annotations, keys.MULTI_WORKER) != "true":
            workers = _workers(m, options, cap)
            if detected != runtime and workers > 1:
                continue
        out[str(c.get("name"))] = runtime
    return out


def _memory_cap(container: Obj, options: Options) -> int:
    mpw = options.memory_per_worker
    memory = _limit(container, "memory")
    if mpw is None or memory is None:
        return 0
    value = quantity(memory)
    if mpw != mpw.to_integral_value() or value != value.to_integral_value():
        return -1
    return max(1, int(value) // int(mpw))


def _workers(m: int, options: Options, cap: int) -> int:
    num, den = options.workers_per_cpu.as_integer_ratio()
    a, b = m * num, 1000 * den
    raw = {"ceil": (a + b - 1) // b, "round": (2 * a + b) // (2 * b)}.get(options.rounding, a // b)
    count = min(max(raw, options.min_workers, 1), 4096)
    count = min(count, options.max_workers) if options.max_workers else count
    return min(count, cap) if cap > 0 else count
