"""The settings the decision reads, and the bounded parsers that check them. Pure.

The server's settings (`webhook.config.Settings`) hold far more: ports, TLS, registry and cluster
access. The core sees only this object, so what can change a decision is listed in one place.
The parsers serve both the server's settings and the pod annotations that override them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from decimal import Decimal, InvalidOperation
from typing import Literal

from webhook.core.profiles import ProfileSet, active
from webhook.core.quantity import quantity

Mode = Literal["enforce", "audit"]
Rounding = Literal["floor", "ceil", "round"]
EnvFromUnknown = Literal["skip", "set"]

MODES: tuple[Mode, ...] = ("enforce", "audit")
ROUNDINGS: tuple[Rounding, ...] = ("floor", "ceil", "round")
ENV_FROM_UNKNOWN: tuple[EnvFromUnknown, ...] = ("skip", "set")
# Past these a value is a typo, not a plan (pod annotations are held to them too).
MAX_WORKERS_PER_CPU = 100
MAX_WORKER_COUNT = 4096


@dataclass(frozen=True)
class Policy:
    """The policy settings: what targets get. Defaults follow the SPEC.

    The server's settings extend it (webhook/config.py), so a policy setting is declared once.
    """

    mode: Mode = "enforce"
    rounding: Rounding = "floor"
    workers_per_cpu: Decimal = Decimal(1)
    min_workers: int = 1
    max_workers: int | None = None
    memory_per_worker: Decimal | None = None
    resize_restart: bool = False
    python_cpu_count: bool = True
    # The worker variable of a container whose envFrom Secret (or unreadable ConfigMap) might
    # set it: `skip` it with a warning, or `set` it with a warning.
    env_from_unknown: EnvFromUnknown = "skip"


@dataclass(frozen=True)
class Options(Policy):
    """Everything a decision reads: the policy and the active profiles."""

    # The active runtime profiles, compiled once (webhook/core/profiles.py).
    profiles: ProfileSet = field(default_factory=active, compare=False)

    @classmethod
    def of(cls, policy: Policy, profiles: ProfileSet) -> Options:
        """The options for a policy (or settings that extend one) and its profiles."""
        return cls(**{f.name: getattr(policy, f.name) for f in fields(Policy)}, profiles=profiles)


def parse_workers_per_cpu(raw: str) -> Decimal:
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ValueError("expected a number") from None
    if not value.is_finite() or not 0 < value <= MAX_WORKERS_PER_CPU:
        raise ValueError(f"expected a number above 0 and at most {MAX_WORKERS_PER_CPU}")
    return value


def positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("expected a whole number of at least 1")
    return value


def parse_worker_count(raw: str) -> int:
    value = positive_int(raw)
    if value > MAX_WORKER_COUNT:
        raise ValueError(f"expected at most {MAX_WORKER_COUNT}")
    return value


def parse_positive_quantity(raw: str) -> Decimal:
    value = quantity(raw)
    if value <= 0:
        raise ValueError("expected a quantity above 0, such as 200Mi")
    return value
