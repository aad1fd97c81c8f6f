"""Identical pods get identical decisions: remember them.

A Deployment's replicas reach the webhook as the same pod spec over and over (the review's uid
differs; the pod's name is not even assigned yet), and deciding includes deriving a JSON Patch,
the costliest step of the admission path. The key is every input `decide` reads, so a hit is
exactly the decision a fresh call would make.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Mapping

import orjson

from webhook.mutation import Decision
from webhook.types import ImageConfig, Obj

DEFAULT_SIZE = 1024
# Keys are digests of the inputs, not the inputs: a pod spec can be tens of kilobytes.
DIGEST_BYTES = 16


def decision_key(
    pod: Obj,
    images: Mapping[str, ImageConfig],
    configmaps: Mapping[str, frozenset[str]],
) -> bytes:
    """A digest of everything `decide` reads from its inputs (settings are fixed per process)."""
    spec = pod.get("spec") or {}
    serialised = orjson.dumps(
        [
            (pod.get("metadata") or {}).get("annotations"),
            spec.get("containers"),
            spec.get("initContainers"),
            spec.get("resources"),
            images or None,
            {name: sorted(keys) for name, keys in configmaps.items()} or None,
        ]
    )
    return hashlib.blake2b(serialised, digest_size=DIGEST_BYTES).digest()


class DecisionCache:
    """A bounded LRU of decisions by `decision_key`; size 0 turns it off."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self.size = size
        self._entries: OrderedDict[bytes, Decision] = OrderedDict()
        self.hits = 0

    def get_or_decide(
        self,
        pod: Obj,
        images: Mapping[str, ImageConfig],
        configmaps: Mapping[str, frozenset[str]],
        decide: Callable[[], Decision],
    ) -> Decision:
        if self.size <= 0:
            return decide()
        key = decision_key(pod, images, configmaps)
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            return found
        decision = decide()
        self._entries[key] = decision
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return decision

    def __len__(self) -> int:
        return len(self._entries)
