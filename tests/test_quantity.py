"""The core's quantity parser against the official client's `parse_quantity`: the same value,
or the same error, on generated quantities (importing `kubernetes` is fine here, not in core)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from kubernetes.utils import parse_quantity as official

from webhook.core.quantity import parse_quantity, quantity

SUFFIXES = [
    "",
    "n",
    "u",
    "m",
    "k",
    "K",
    "M",
    "G",
    "T",
    "P",
    "E",
    "Ki",
    "Mi",
    "Gi",
    "Ti",
    "Pi",
    "Ei",
    "ki",
    "mi",
    "ni",
    "i",
    "x",
    "e3",
    "E3",
    "e",
    "Z",
]
numbers = st.one_of(
    st.integers(-(10**30), 10**30).map(str),
    st.decimals(allow_nan=False, allow_infinity=False, places=4).map(str),
    st.sampled_from(
        [
            "",
            "-",
            "+1",
            ".5",
            "1.",
            "1e2",
            "0x10",
            "1_000",
            " 2",
            "NaN",
            "Infinity",
            "-Infinity",
            "sNaN",
            "1/2",
            "\u0661",  # an Arabic-Indic digit: Decimal reads it
        ]
    ),
)
quantities = st.one_of(
    st.builds(lambda n, s: n + s, numbers, st.sampled_from(SUFFIXES)),
    st.text(max_size=12),
)


def outcome(parse: Any, value: Any) -> tuple[str, Any]:
    try:
        return "value", str(parse(value))  # the exact digits and exponent, NaNs included
    except Exception as exc:  # the type is what must agree; messages are our own
        return "error", type(exc)


@settings(max_examples=3000, deadline=None)
@given(quantities)
@example("500m")
@example("1Gi")
@example("2ki")
@example("1mi")
@example("sNaN")
@example("1E")
def test_the_same_as_the_official_client_on_strings(value: str) -> None:
    assert outcome(parse_quantity, value) == outcome(official, value)


@given(st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans()))
def test_the_same_as_the_official_client_on_numbers(value: Any) -> None:
    assert parse_quantity(value) == official(value)  # type: ignore[no-untyped-call]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("500m", Decimal("0.5")),
        ("2", Decimal(2)),
        (2, Decimal(2)),
        ("1Gi", Decimal(2**30)),
        ("200Mi", Decimal(200 * 2**20)),
        ("1.5k", Decimal(1500)),
    ],
    ids=["milli", "whole", "number", "gibi", "mebi", "kilo"],
)
def test_finite_quantities(raw: Any, expected: Decimal) -> None:
    assert quantity(raw) == expected


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity", "abc", "2ki"])
def test_what_no_quantity_is(raw: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message is not the contract
        quantity(raw)
