"""A pod's annotations, read one way everywhere. Pure.

Annotation values are strings the user typed: every word the webhook compares is read with
surrounding space removed and case ignored (`" True"` is true, `"AUDIT"` is audit).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from webhook.core import keys
from webhook.core.types import Obj

NONE: Mapping[str, Any] = {}


def annotations_of(pod: Obj) -> Mapping[str, Any]:
    """The pod's annotations, or an empty mapping where it has none (or a malformed one)."""
    metadata = pod.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    return annotations if isinstance(annotations, dict) else NONE


def word(annotations: Mapping[str, Any], key: str) -> str:
    """An annotation's value as a word: stripped and lower case; empty when absent."""
    value = annotations.get(key)
    return str(value).strip().lower() if value is not None else ""


def boolean(annotations: Mapping[str, Any], key: str) -> bool | None:
    """A boolean annotation: True for `true`, False for `false`, None when absent or neither."""
    value = word(annotations, key)
    return True if value == "true" else False if value == "false" else None


# The annotations read as one of a few words, and those words.
WORDS: dict[str, tuple[str, ...]] = {
    keys.INJECT: ("true", "false"),
    keys.OVERRIDE: ("true", "false"),
    keys.MULTI_WORKER: ("true", "false"),
    keys.MODE: ("audit", "enforce"),
}


def unknown_words(annotations: Mapping[str, Any]) -> list[str]:
    """A warning for each of WORDS' annotations set to none of its words (then unset, as if
    absent): `override: "yes"` would otherwise be ignored without a word."""
    found = []
    for key, allowed in WORDS.items():
        raw = annotations.get(key)
        if raw is not None and word(annotations, key) not in allowed:
            found.append(f"{key}={raw!r} is not valid ({' or '.join(allowed)}); using the default")
    return found


def status(annotations: Mapping[str, Any]) -> Mapping[str, Obj]:
    """The status annotation an earlier pass wrote, per container; empty when absent or bad."""
    raw = annotations.get(keys.STATUS)
    if not isinstance(raw, str):
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
