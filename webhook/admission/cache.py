"""Identical pods get identical decisions: remember them.

A Deployment's replicas reach the webhook as the same pod spec over and over (the review's uid
differs; the pod's name is not even assigned yet), and deciding includes checking the pod's
shape and deriving a JSON Patch, the costliest steps of the admission path. Keys are digests of
every input `decide` reads, so a hit is exactly the decision a fresh call would make.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping

import orjson

from webhook.core.decision import Decision
from webhook.core.types import ImageConfig, Obj
from webhook.lru import LRU

DEFAULT_SIZE = 256  # about 4 MB when every entry is a distinct 16 KB pod
# Keys are digests of the inputs, not the inputs: a pod spec can be tens of kilobytes.
DIGEST_BYTES = 16


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).digest()


def pod_key(pod: Obj) -> bytes | None:
    """A digest of the parts of a pod that checking and deciding read; None if not a pod shape."""
    metadata = pod.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        return None  # check_pod says so
    metadata = metadata or {}
    try:
        spec = pod.get("spec") or {}
        return _digest(
            orjson.dumps(
                [
                    # The patch creates (or replaces a null) metadata or annotations.
                    "metadata" in pod,
                    pod.get("metadata") is None,
                    "annotations" in metadata,
                    metadata.get("annotations"),
                    # Checked though not decided on: whether the names are strings (or absent).
                    all(
                        isinstance(metadata.get(k), str | None)
                        for k in ("name", "generateName", "namespace")
                    ),
                    spec.get("containers"),
                    spec.get("initContainers"),
                    spec.get("resources"),
                ]
            )
        )
    except (AttributeError, TypeError):  # spec is not an object: check_pod says so
        return None


def decision_key(
    pod: bytes,
    images: Mapping[str, ImageConfig],
    configmaps: Mapping[str, frozenset[str]],
) -> bytes:
    """The pod's key, extended by what registry and ConfigMap lookups returned for it."""
    if not images and not configmaps:
        return pod
    found = orjson.dumps([images, {name: sorted(keys) for name, keys in configmaps.items()}])
    return _digest(pod + found)


class DecisionCache:
    """Bounded LRUs of pods known to be well formed, and of decisions; size 0 turns it off."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self.size = size
        self._checked: LRU[bytes, bool] = LRU(size)
        self._decisions: LRU[bytes, Decision] = LRU(size)
        self.hits = 0

    def checked(self, pod: bytes | None) -> bool:
        """Whether a pod with this key passed the shape check before."""
        return self.size > 0 and pod is not None and self._checked.get(pod) is not None

    def mark_checked(self, pod: bytes | None) -> None:
        if self.size > 0 and pod is not None:
            self._checked.put(pod, True)

    def get_or_decide(self, key: bytes | None, decide: Callable[[], Decision]) -> Decision:
        if self.size <= 0 or key is None:
            return decide()
        found = self._decisions.get(key)
        if found is not None:
            self.hits += 1
            return found
        decision = decide()
        self._decisions.put(key, decision)
        return decision

    def __len__(self) -> int:
        return len(self._decisions)
