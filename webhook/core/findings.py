"""The kind of each warning: the label of the warnings metric, so an SRE can graph them by kind.

Warnings are sentences made where each finding is made; their kind is read from the fixed words
of each sentence here, in one table, rather than threaded through every place that makes one.
`tests/test_findings.py` decides pods that give every kind and fails on a warning of no kind.
"""

from __future__ import annotations

import re
from typing import Final

OTHER: Final = "other"
# First match wins: a flag that overrides the variable and is above the limit is "overridden".
KINDS: Final[tuple[tuple[str, re.Pattern[str]], ...]] = tuple(
    (kind, re.compile(pattern))
    for kind, pattern in (
        ("resize-stale", r"^resize: "),
        ("audit", r"^audit: would set "),
        ("invalid-limit", r" has an invalid (CPU|memory) limit"),
        ("no-cpu-limit", r" has no CPU limit"),
        ("capped", r" capped to \d+ \(| memory limit caps | not run by its CLI: "),
        ("overridden", r" overrides | may set the worker count| runs one process; "),
        ("above-cpu-limit", r" is above the CPU limit"),
        ("no-worker-variable", r" reads no worker variable; "),
        ("undecided", r" by its arguments: not a target"),
        ("envfrom-unread", r" not read; "),
        (
            "annotation",
            r" names no active profile| which is not a container of this pod"
            r"| is not valid(?: \([a-z ]+\))?; using the default| is above max-workers",
        ),
    )
)


def kind_of(warning: str) -> str:
    """The kind of one warning (OTHER when no sentence of the table matches)."""
    for kind, pattern in KINDS:
        if pattern.search(warning):
            return kind
    return OTHER
