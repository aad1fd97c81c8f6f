"""Bounded work per review: a pod past these caps is admitted unchanged, with a warning.

The API server accepts pods of any number of containers and env entries inside its 3 MiB
request limit; 32,000 small containers fit, and deciding on them took 14 s of CPU in one
review, longer than the API server waits and long enough to stall every other review and the
probes of the same worker. No real pod comes near these caps (Kubernetes itself holds a pod's
annotations to 256 KiB in total), so past them the webhook stops deciding: it admits the pod
unpatched with a warning and counts it (fail-open, as for an internal error, by decision: a
webhook that denied such pods would be a new way to break pod creation).

The counts are read from the raw review before anything else walks it, in time proportional
to the number of containers, never to what they hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from webhook.config import Settings

WARNING = "concurrency-injector: pod over the {limit} limit ({count} > {cap}), admitted unchanged"


@dataclass(frozen=True)
class OverLimit:
    """Which cap a pod is over, and by how much."""

    limit: str  # containers, env-entries or annotation-bytes
    count: int
    cap: int

    @property
    def warning(self) -> str:
        return WARNING.format(limit=self.limit, count=self.count, cap=self.cap)


def over_limit(pod: Any, settings: Settings) -> OverLimit | None:
    """The first cap that `pod` (unchecked JSON) is over, or None."""
    if not isinstance(pod, dict):
        return None
    spec = pod.get("spec")
    spec = spec if isinstance(spec, dict) else {}
    containers = [
        c
        for key in ("containers", "initContainers", "ephemeralContainers")
        if isinstance(spec.get(key), list)
        for c in spec[key]
    ]
    if len(containers) > settings.max_containers:
        return OverLimit("containers", len(containers), settings.max_containers)
    env = sum(
        len(c["env"]) for c in containers if isinstance(c, dict) and isinstance(c.get("env"), list)
    )
    if env > settings.max_env_entries:
        return OverLimit("env-entries", env, settings.max_env_entries)
    metadata = pod.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    if isinstance(annotations, dict):
        size = sum(
            len(k) + len(v)
            for k, v in annotations.items()
            if isinstance(k, str) and isinstance(v, str)
        )
        if size > settings.max_annotation_bytes:
            return OverLimit("annotation-bytes", size, settings.max_annotation_bytes)
    return None
