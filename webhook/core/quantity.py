"""Kubernetes resource quantities (`500m`, `2`, `1Gi`) as exact Decimals. Pure.

The same reading as the official client's `kubernetes.utils.parse_quantity` (a test holds the
two equal on generated quantities), without importing the client: that import alone cost the
core most of its start-up.
"""

from __future__ import annotations

import functools
from decimal import Decimal, InvalidOperation
from typing import Any

# Suffix letter -> power of the base (1000, or 1024 with a trailing `i`).
# The largest quantity taken: Kubernetes stores one as an int64 count of its unit.
MAX_QUANTITY = Decimal(2**63 - 1)
POWERS = {"n": -3, "u": -2, "m": -1, "K": 1, "k": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}


def parse_quantity(value: Any) -> Decimal:
    """A quantity as a Decimal; numbers as they are (YAML writes `cpu: 2` as a number).

    ValueError on anything else, as the official client's parser raises.
    """
    if isinstance(value, int | float | Decimal):
        return Decimal(value)
    text = str(value)
    number, suffix = text, ""
    if len(text) >= 2 and text[-1] == "i":
        if text[-2] in POWERS:
            number, suffix = text[:-2], text[-2:]
    elif text and text[-1] in POWERS:
        number, suffix = text[:-1], text[-1]
    try:
        parsed = Decimal(number)
    except InvalidOperation:
        raise ValueError(f"invalid number format: {number}") from None
    if not suffix:
        return parsed
    if suffix == "ki":  # binary kilo is `Ki` only
        raise ValueError(f"{text} has unknown suffix")
    base = 1024 if suffix[-1] == "i" else 1000
    return parsed * (base ** Decimal(POWERS[suffix[0]]))


def quantity(value: Any) -> Decimal:
    """A quantity a Pod can hold: finite, at most MAX_QUANTITY, not a boolean.

    The parser takes `NaN`, `Infinity` and `true` (as Decimal and the official client do); the
    API server refuses them, and a value past what it stores (`1e100000`) would only overflow
    the arithmetic that follows.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise ValueError(f"a {type(value).__name__} is not a quantity")  # nor is its repr
    parsed = _text_quantity(value) if type(value) is str else parse_quantity(value)
    if not parsed.is_finite() or abs(parsed) > MAX_QUANTITY:
        raise ValueError(f"{value!r} is not a finite quantity of at most {MAX_QUANTITY}")
    return parsed


@functools.lru_cache(maxsize=1024)
def _text_quantity(text: str) -> Decimal:
    """Quantities as pods spell them (`500m`, `1Gi`) repeat: each is parsed once (Decimals are
    immutable, so one answer serves every pod)."""
    return parse_quantity(text)
