"""`mutate`'s input: bytes to YAML (or JSON) documents, built one at a time and within bounds.

The input is held as bytes (its own size) and documents are built from it one at a time, so
memory follows the largest document, not the whole stream (a 20 MB stream of 109,000 pods once
took 1 GB as objects). What a few bytes could otherwise cost is bounded here, each refusal an
`InputError` that names the file and the line:
- UTF-8 only (YAML's own encoding for Kubernetes): other bytes name their offset;
- nesting at most MAX_DEPTH deep (no Kubernetes object comes close; JSON output and the patch
  machinery recurse);
- aliases: a "billion laughs" document of a few lines expands to 10^9 nodes when it is written
  as JSON or walked; aliases may add at most MAX_ALIAS_NODES nodes to a document, and may not
  refer to themselves.
The scanner and parser are libyaml's where it is installed; the composer is PyYAML's Python one,
bounded here (libyaml's own composer recurses in C and crashes the process on deep nesting).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, SequenceNode
from yaml.resolver import Resolver

from webhook.workloads import InputError

MAX_DEPTH = 200
MAX_ALIAS_NODES = 100_000

try:
    from yaml._yaml import CParser as _Parser

    _C_PARSER = True
except ImportError:  # PyYAML without libyaml: the pure Python reader, scanner and parser
    _C_PARSER = False


@dataclass(frozen=True)
class Document:
    """One document of the input and the line it starts on (1-based), for messages."""

    value: Any
    line: int


def read_input(filename: str, stdin: BinaryIO) -> bytes:
    """The bytes of FILE, or of standard input for `-`; InputError names an unreadable file."""
    try:
        if filename == "-":
            return stdin.read()
        with open(filename, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise InputError(f"cannot read {filename}: {exc.strerror}") from None


def check_text(data: bytes, source: str) -> None:
    """InputError unless the bytes are UTF-8 text (a leading byte-order mark is allowed)."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{source} is not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start} "
            f"({exc.reason}); save it as UTF-8"
        ) from None


def documents(data: bytes, source: str) -> Iterator[Document]:
    """Every non-empty document of a UTF-8 YAML or JSON stream, built as it is reached."""
    check_text(data, source)
    loader = _BoundedLoader(data, source)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            value = loader.construct_document(node)
            if value is not None:
                yield Document(value, node.start_mark.line + 1)
    except yaml.YAMLError as exc:
        raise InputError(f"{source} is not valid YAML or JSON: {exc}") from None
    finally:
        loader.dispose()


if _C_PARSER:

    class _Base(Composer, _Parser, SafeConstructor, Resolver):
        def __init__(self, stream: bytes) -> None:
            _Parser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

else:  # pragma: no cover - libyaml is part of PyYAML's wheels

    class _Base(yaml.SafeLoader):  # type: ignore[no-redef]
        pass


class _BoundedLoader(_Base):
    """PyYAML's safe loader with its composer bounded in depth and in alias expansion."""

    def __init__(self, stream: bytes, source: str) -> None:
        super().__init__(stream)
        self.source = source
        self.depth = 0
        self.aliased = False

    def compose_document(self) -> Node | None:
        self.aliased = False
        node: Node | None = super().compose_document()
        if node is not None and self.aliased:
            _check_expansion(node, self.source)
        return node

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        if self.check_event(AliasEvent):
            self.aliased = True
        elif self.depth >= MAX_DEPTH:
            mark = getattr(self.peek_event(), "start_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            raise InputError(f"{self.source}{line}: nested more than {MAX_DEPTH} levels deep")
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_expansion(root: Node, source: str) -> None:
    """InputError when aliases add more than MAX_ALIAS_NODES nodes, or refer to themselves.

    Sizes are counted once per distinct node (an alias is the same node object as its anchor),
    so this takes time in the written size, not in the expanded one.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # the nodes on the path being counted
    stack: list[tuple[Node, bool]] = [(root, False)]
    line = root.start_mark.line + 1
    while stack:
        node, counted = stack.pop()
        key = id(node)
        if counted:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            continue
        if key in sizes:
            continue
        open_nodes.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in open_nodes:
                raise InputError(f"{source}:{line}: a YAML alias refers to itself; refused")
            if id(child) not in sizes:
                stack.append((child, False))
    added = sizes[id(root)] - len(sizes)
    if added > MAX_ALIAS_NODES:
        raise InputError(
            f"{source}:{line}: YAML aliases expand this document by {added} nodes, over the "
            f"{MAX_ALIAS_NODES} allowed (an alias bomb?); refused"
        )
