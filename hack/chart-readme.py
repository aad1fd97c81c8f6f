#!/usr/bin/env python3
"""Writes (or checks) the chart README's table of every value, from values.yaml.

Each leaf of values.yaml (a scalar, a list, or an empty map) gets one row: its dotted key, its
default, and the comment written above its key (every value is documented there; a leaf without
a comment is an error). The table sits between two markers in charts/concurrency-injector/README.md:

    <!-- values:begin (hack/chart-readme.py writes this table) -->
    <!-- values:end -->

    hack/chart-readme.py           rewrite the table
    hack/chart-readme.py --check   exit 1, with the difference, when the table is not current
"""

from __future__ import annotations

import difflib
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parent.parent / "charts" / "concurrency-injector"
BEGIN = "<!-- values:begin (hack/chart-readme.py writes this table) -->"
END = "<!-- values:end -->"
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_]+):")


def comments(text: str) -> dict[str, str]:
    """Each key's dotted path -> the comment block right above it (joined into one line)."""
    found: dict[str, str] = {}
    stack: list[tuple[int, str]] = []  # (indent, key) of the keys enclosing the current line
    block: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            block.append(stripped.lstrip("#").strip())
            continue
        match = KEY.match(line)
        if match is None:
            block = []  # a blank line or a list item: a comment above it is not a key's
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        found[".".join(key for _, key in stack)] = " ".join(block)
        block = []
    return found


def leaves(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every leaf: scalars, lists and empty maps."""
    if isinstance(node, dict) and node:
        out: list[tuple[str, Any]] = []
        for key, value in node.items():
            out += leaves(value, f"{prefix}.{key}" if prefix else str(key))
        return out
    return [(prefix, node)]


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def table(values_text: str) -> str:
    notes = comments(values_text)
    rows = ["| value | default | description |", "|---|---|---|"]
    missing = []
    for key, value in leaves(yaml.safe_load(values_text)):
        note = notes.get(key, "")
        if not note:
            missing.append(key)
        default = json.dumps(value, separators=(", ", ": "))
        rows.append(f"| `{key}` | `{cell(default)}` | {cell(note)} |")
    if missing:
        raise SystemExit(f"values.yaml: no comment above {', '.join(missing)}")
    return "\n".join(rows)


def render(readme: str, values_text: str) -> str:
    """The README with its table replaced by the one values.yaml gives."""
    head, begin, rest = readme.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise SystemExit(f"{CHART / 'README.md'}: markers {BEGIN} ... {END} not found")
    return f"{head}{BEGIN}\n{table(values_text)}\n{END}{tail}"


def main(argv: list[str]) -> int:
    readme_path = CHART / "README.md"
    readme = readme_path.read_text()
    wanted = render(readme, (CHART / "values.yaml").read_text())
    if argv[1:] == ["--check"]:
        if wanted == readme:
            return 0
        diff = difflib.unified_diff(
            readme.splitlines(), wanted.splitlines(), "README.md", "wanted", lineterm=""
        )
        print("\n".join(diff))
        print("the chart README's values table is not current: run hack/chart-readme.py")
        return 1
    if argv[1:]:
        print(__doc__)
        return 2
    readme_path.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
