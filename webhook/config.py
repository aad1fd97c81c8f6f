"""Server and policy settings, built once from an environment mapping and checked at start-up.

Every setting is an environment variable `CONCURRENCY_INJECTOR_<NAME>`; command-line flags are
applied as those variables, so worker processes and the chart see one source of truth.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from decimal import Decimal
from functools import cached_property
from typing import Literal, TypeVar, cast

from webhook.core import profiles
from webhook.core.keys import ENV_PREFIX
from webhook.core.options import (
    ENV_FROM_UNKNOWN,
    MODES,
    ROUNDINGS,
    Options,
    Policy,
    parse_positive_quantity,
    parse_worker_count,
    parse_workers_per_cpu,
    positive_int,
)
from webhook.core.profiles import ProfileError, ProfileSet

LogFormat = Literal["json", "text", "auto"]

LOG_FORMATS: tuple[LogFormat, ...] = ("json", "text", "auto")
LOG_LEVELS = ("debug", "info", "warning", "error")
# Seconds: a serving certificate shorter-lived than this would be renewed before it is served.
MIN_CERT_LIFETIME = 60
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off", "")

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting has a bad value; the message names the variable and the value."""


@dataclass(frozen=True)
class Settings(Policy):
    """Everything the server and the CLI are configured with. Defaults follow the SPEC.

    The policy fields come from `webhook.core.options.Policy`; the decision sees them, with the
    active profiles, as `options`.
    """

    # Runtime profiles (webhook/core/profiles.py): more or replaced ones (YAML or JSON), names off.
    extra_profiles: str = ""
    disabled_profiles: tuple[str, ...] = ()
    # Image metadata from registries.
    no_registry: bool = False
    insecure_registry: tuple[str, ...] = ()
    registry_timeout: float = 2.0
    platform: str = "linux/amd64"
    docker_config: str | None = None
    registry_ca_file: str | None = None
    # envFrom ConfigMaps, read in-cluster.
    read_configmaps: bool = False
    # Serving.
    cert_file: str | None = None
    key_file: str | None = None
    host: str = "0.0.0.0"
    port: int = 8443
    max_body_bytes: int = 4 * 1024 * 1024
    decision_cache_size: int = 256
    cert_reload_seconds: float = 10.0
    log_level: str = "info"
    log_format: LogFormat = "auto"
    # Connection bounds, per worker (webhook/serving/protocol.py).
    max_connections: int = 1000
    first_request_seconds: float = 10.0
    request_read_seconds: float = 10.0
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    # Shutdown: seconds of drain after SIGTERM (/readyz 503, `Connection: close`), then at most
    # this long for in-flight reviews.
    drain_seconds: float = 2.0
    shutdown_timeout: float = 10.0
    # Work per review: past these the pod is admitted unchanged with a warning
    # (webhook/admission/caps.py).
    max_containers: int = 100
    max_env_entries: int = 5000
    max_annotation_bytes: int = 256 * 1024
    # Self-managed TLS in-cluster (the chart's default TLS mode).
    tls_self_managed: bool = False
    tls_secret: str | None = None
    webhook_config: str | None = None
    service_name: str | None = None
    namespace: str | None = None
    # Lifetime of the self-managed serving certificate (renewed at 2/3 of it), and how often
    # every replica re-reads the Secret. Short values are for tests of the renewal.
    tls_cert_lifetime: float = 365 * 24 * 3600.0
    tls_resync_seconds: float = 60.0
    # Outside a cluster only: a kubeconfig for the Kubernetes API calls (ConfigMap reads,
    # self-managed TLS) instead of the pod's service account.
    kubeconfig: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read `CONCURRENCY_INJECTOR_*` variables; raise ConfigError naming any bad one."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            key = env_name(f.name)
            raw = env.get(key)
            if raw is None:
                continue
            parse = _PARSERS.get(f.name, _str_or_none)
            try:
                values[f.name] = parse(raw.strip())
            except (ValueError, ArithmeticError) as exc:
                raise ConfigError(f"{key}={raw!r}: {exc}") from None
        settings = cls(**values)  # type: ignore[arg-type]
        settings.check()
        return settings

    def check(self) -> None:
        """Cross-field rules, so a bad combination fails at start-up, not per request."""
        if self.max_workers is not None and self.max_workers < self.min_workers:
            raise ConfigError(
                f"{env_name('max_workers')}={self.max_workers} is below "
                f"{env_name('min_workers')}={self.min_workers}"
            )
        if not 0 < self.registry_timeout <= 30:
            raise ConfigError(
                f"{env_name('registry_timeout')}={self.registry_timeout}: must be 0 to 30 seconds"
            )
        if self.tls_cert_lifetime < MIN_CERT_LIFETIME:
            raise ConfigError(
                f"{env_name('tls_cert_lifetime')}={self.tls_cert_lifetime:g}: "
                f"must be at least {MIN_CERT_LIFETIME} seconds"
            )
        if "/" not in self.platform:
            raise ConfigError(f"{env_name('platform')}={self.platform!r}: expected os/arch")
        try:
            known = profiles.active(self.extra_profiles).names()
        except ProfileError as exc:
            raise ConfigError(f"{env_name('extra_profiles')}: {exc}") from None
        unknown = [name for name in self.disabled_profiles if name not in known]
        if unknown:
            raise ConfigError(
                f"{env_name('disabled_profiles')}: no profile named {', '.join(unknown)}"
                f" (known: {', '.join(known)})"
            )

    def profiles(self) -> ProfileSet:
        """The active runtime profiles (built once per distinct setting)."""
        return profiles.active(self.extra_profiles, self.disabled_profiles)

    @cached_property
    def options(self) -> Options:
        """What the decision reads of these settings (webhook/core/options.py)."""
        return Options.of(self, self.profiles())


def env_name(field_name: str) -> str:
    """The environment variable behind a settings field."""
    return ENV_PREFIX + field_name.upper()


def _str_or_none(raw: str) -> str | None:
    return raw or None


def _bool(raw: str) -> bool:
    low = raw.lower()
    if low in TRUE:
        return True
    if low in FALSE:
        return False
    raise ValueError("expected true or false")


def _choice(choices: tuple[T, ...]) -> Callable[[str], T]:
    def parse(raw: str) -> T:
        if raw.lower() not in cast(tuple[str, ...], choices):
            raise ValueError(f"expected one of {', '.join(map(str, choices))}")
        return cast(T, raw.lower())

    return parse


def _max_workers(raw: str) -> int | None:
    """0 or empty means no maximum."""
    if raw in ("", "0"):
        return None
    return parse_worker_count(raw)


def _quantity_or_none(raw: str) -> Decimal | None:
    return parse_positive_quantity(raw) if raw else None


def _seconds(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("expected seconds above 0")
    return value


def _non_negative_seconds(raw: str) -> float:
    value = float(raw)
    if not value >= 0:
        raise ValueError("expected seconds, 0 or more")
    return value


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 65535:
        raise ValueError("expected a port from 0 to 65535")
    return value


def _hosts(raw: str) -> tuple[str, ...]:
    return tuple(h.strip() for h in raw.split(",") if h.strip())


_PARSERS: dict[str, Callable[[str], object]] = {
    "mode": _choice(MODES),
    "rounding": _choice(ROUNDINGS),
    "workers_per_cpu": parse_workers_per_cpu,
    "min_workers": parse_worker_count,
    "max_workers": _max_workers,
    "memory_per_worker": _quantity_or_none,
    "resize_restart": _bool,
    "python_cpu_count": _bool,
    "extra_profiles": str,
    "disabled_profiles": _hosts,
    "env_from_unknown": _choice(ENV_FROM_UNKNOWN),
    "no_registry": _bool,
    "insecure_registry": _hosts,
    "registry_timeout": _seconds,
    "read_configmaps": _bool,
    "port": _port,
    "max_body_bytes": positive_int,
    "decision_cache_size": int,
    "max_connections": positive_int,
    "first_request_seconds": _seconds,
    "request_read_seconds": _seconds,
    "max_header_bytes": positive_int,
    "max_headers": positive_int,
    "drain_seconds": _non_negative_seconds,
    "shutdown_timeout": _seconds,
    "max_containers": positive_int,
    "max_env_entries": positive_int,
    "max_annotation_bytes": positive_int,
    "cert_reload_seconds": _seconds,
    "log_level": _choice(LOG_LEVELS),
    "log_format": _choice(LOG_FORMATS),
    "tls_self_managed": _bool,
    "tls_cert_lifetime": _seconds,
    "tls_resync_seconds": _seconds,
    "platform": str,
    "host": str,
}
