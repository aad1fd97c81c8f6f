"""JSON Patch (RFC 6902) built directly, by index, only where the webhook writes. Pure.

A diff of two documents lets a library choose how to get from one to the other, and list diffs
are heuristics: from jsonpatch 1.35 on, `make_patch` pairs equal list items and may move or
replace whole containers. The webhook instead logs each edit it makes to an array as the op that
makes it, at the index the array has at that moment, so the ops apply in order by construction
and never reach outside the array they edit. Tests hold the result equal to the diff.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from webhook.core.once import once
from webhook.core.types import Obj

Path = tuple[str | int, ...]


def pointer(path: Path) -> str:
    """A JSON Pointer (RFC 6901) for a path of keys and indexes: the one place that escapes."""
    text = ""
    for part in path:
        if isinstance(part, str) and ("~" in part or "/" in part):
            part = part.replace("~", "~0").replace("/", "~1")
        text += f"/{part}"
    return text


def op(name: str, path: Path, value: Any = None) -> Obj:
    """One patch operation; `value` for add and replace."""
    if name == "remove":
        return {"op": "remove", "path": pointer(path)}
    return {"op": name, "path": pointer(path), "value": value}


def prefixed(patch: Iterable[Obj], path: Path) -> list[Obj]:
    """A pod's patch moved under `path` (a pod template inside a workload document)."""
    base = pointer(path)
    return [{**o, "path": base + o["path"]} for o in patch]


class ArrayEdit:
    """Edits to one JSON array of a document, each logged as the op that makes it.

    `items` is the array as edited so far. When the array was absent (or null) the result is
    one `add` of the whole array; when every item was removed, one `remove` of the array.
    """

    def __init__(self, path: Path, items: Any) -> None:
        self.path = path
        self.present = isinstance(items, list)
        self.initial = len(items) if isinstance(items, list) else 0
        self.items: list[Any] = list(items) if isinstance(items, list) else []
        self._ops: list[Obj] = []

    def append(self, value: Any) -> None:
        self._ops.append({"op": "add", "path": f"{self.pointer}/{len(self.items)}", "value": value})
        self.items.append(value)

    def replace(self, index: int, value: Any) -> None:
        if self.items[index] != value:
            self._ops.append({"op": "replace", "path": f"{self.pointer}/{index}", "value": value})
            self.items[index] = value

    def delete(self, index: int) -> None:
        self._ops.append({"op": "remove", "path": f"{self.pointer}/{index}"})
        del self.items[index]

    @once
    def pointer(self) -> str:
        """The array's JSON Pointer, escaped once, when the first op needs it."""
        return pointer(self.path)

    @property
    def changed(self) -> bool:
        return bool(self._ops)

    def result(self) -> list[Any] | None:
        """The array after the edits; None when the edits leave no array at all."""
        if not self.items and (not self.present or self.initial):
            return None
        return self.items

    def ops(self) -> list[Obj]:
        if not self._ops:
            return []
        if not self.present:
            return [{"op": "add", "path": self.pointer, "value": self.items}] if self.items else []
        if self.initial and not self.items:
            return [{"op": "remove", "path": self.pointer}]
        return list(self._ops)
