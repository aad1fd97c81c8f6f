"""Fuzzing `mutate -f`'s input parsing: whatever the file holds, exit 0 or 2, never a traceback.

Three kinds of input: arbitrary bytes; YAML-ish text (the characters that make YAML's syntax:
anchors, aliases, tags, flow and block collections, document markers); and workloads (Pods,
Deployments, Lists, AdmissionReviews from ordinary generated pods) with wrong types, odd
numbers, deep nesting and YAML-only values put at random places, written as JSON or YAML.
Invariants: `main(["mutate", "-f", FILE])` returns 0 or 2 (or exits with them), never raises
anything else; bad input is never the internal-error fail-open; output 0 prints parses.

The bulk runs in-process; a few go to the real command, whose stderr must hold no traceback.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import io
import os
import subprocess
import sys
import tempfile
from typing import Any
from unittest import mock

import orjson
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.strategies import crowded_pods, places
from webhook.admission.review import FAIL_OPEN_WARNING
from webhook.cli import main

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEW = settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
OUTPUTS = st.sampled_from(["yaml", "json", "patch"])

yamlish = st.lists(
    st.sampled_from([*"-:&*![]{}|>'\"#%@`,?~=<.\\ \n\t\r", *"abcxyz019", "\x00", "é",
                     "\ufeff", "kind: ", "Pod", "---\n", "...\n", "!!binary ", "!!set ",
                     "&a ", "*a", "<<: ", "2024-01-01", "cpu: "]),
    max_size=80,
).map("".join)


def deep(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value] if depth % 2 else {"a": value}
    return value


odd_values = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
    st.text(max_size=10),
    st.sampled_from(["abc", "1e9", "1e100000", "NaN", "-1", "1Qi", "100m", "", "\x00\u202e",
                     b"\x00\xff", dt.date(2024, 1, 1)]),
    st.just(0).map(lambda _: {"x"}),  # YAML !!set: a set, which JSON cannot hold
    st.sampled_from([[], {}, [1, None], {"name": 5}, {1: "x"}, [[[]]]]).map(copy.deepcopy),
    st.integers(5, 260).map(deep),
)


def _wrap(kind: str, p: dict[str, Any]) -> Any:
    if kind == "Pod":
        return p
    if kind == "Deployment":
        return {"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "d", "namespace": "shop"}, "spec": {"template": p}}
    if kind == "List":
        return {"apiVersion": "v1", "kind": "List", "items": [p, {"kind": "Service"}]}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                        "resource": {"group": "", "version": "v1", "resource": "pods"},
                        "operation": "CREATE", "namespace": "shop", "object": p}}


@st.composite
def workload_files(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["Pod", "Deployment", "List", "AdmissionReview"]))
    document = _wrap(kind, copy.deepcopy(draw(crowded_pods)))
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from([p for p in places(document, depth=10) if p]))
        target = document
        for key in path[:-1]:
            target = target[key]
        if draw(st.booleans()):
            target[path[-1]] = draw(odd_values)
        else:
            del target[path[-1]]
    documents = [document] * draw(st.integers(1, 2))
    if draw(st.booleans()):
        return yaml.safe_dump_all(documents).encode()
    try:
        return b"\n".join(orjson.dumps(d, option=orjson.OPT_NON_STR_KEYS) for d in documents)
    except TypeError:  # a value JSON cannot hold (bytes, a set): YAML holds it
        return yaml.safe_dump_all(documents).encode()


inputs = st.one_of(st.binary(max_size=600), yamlish.map(str.encode), workload_files())


def mutate_in_process(data: bytes, output: str) -> tuple[int, str, str]:
    """`main(["mutate", "-f", FILE, ...])` in this process; its environment changes undone."""
    with tempfile.NamedTemporaryFile(suffix=".yaml") as source:
        source.write(data)
        source.flush()
        out, err = io.StringIO(), io.StringIO()
        with mock.patch.dict(os.environ), contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err):
            try:
                code = main(["mutate", "-f", source.name, "-o", output, "--no-registry"])
            except SystemExit as exc:
                code = exc.code  # type: ignore[assignment]
    return code, out.getvalue(), err.getvalue()


@FUZZ
@given(data=inputs, output=OUTPUTS)
def test_any_input_exits_0_or_2(data: bytes, output: str) -> None:
    code, out, err = mutate_in_process(data, output)
    event(f"exit {code}")
    assert code in (0, 2), (code, err)
    assert FAIL_OPEN_WARNING not in err, err
    if code == 0 and output != "yaml":
        orjson.loads(out)
    if code == 0:
        assert out


@FEW
@given(data=inputs, output=OUTPUTS)
def test_the_real_command_prints_no_traceback(data: bytes, output: str) -> None:
    with tempfile.NamedTemporaryFile(suffix=".yaml") as source:
        source.write(data)
        source.flush()
        done = subprocess.run(
            [sys.executable, "-m", "webhook", "mutate", "-f", source.name, "-o", output,
             "--no-registry"],
            capture_output=True, text=True, timeout=120, check=False,
        )
    assert done.returncode in (0, 2), done.stderr
    assert "Traceback" not in done.stderr, done.stderr
