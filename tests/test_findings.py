"""Every warning has a kind (the warnings metric's label): pods that give each kind, the corpus."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from tests.podgen import container, gunicorn, pod
from webhook.cli import main
from webhook.config import Settings
from webhook.core.decision import decide
from webhook.core.findings import KINDS, OTHER, kind_of
from webhook.core.resize import Stale

CORPUS = Path(__file__).resolve().parent / "corpus"
CASE_SCRIPT = 'case "$1" in a) exec gunicorn app;; b) exec celery -A p worker;; esac'

CASES: list[tuple[str, dict[str, Any]]] = [
    ("no-cpu-limit", pod(gunicorn(cpu=None))),
    ("invalid-limit", pod(gunicorn(cpu="abc"))),
    ("capped", pod(gunicorn(cpu="8"), annotations={"concurrency-injector.io/max-workers": "4"})),
    ("overridden", pod(gunicorn(args=["-w", "2"]))),
    ("above-cpu-limit", pod(container(command=["hypercorn", "-w", "8", "app:app"], cpu="1"))),
    ("no-worker-variable", pod(container(command=["hypercorn", "app:app"]))),
    ("undecided", pod(container(command=["sh", "-c", CASE_SCRIPT]))),
    ("envfrom-unread", pod(gunicorn(envFrom=[{"secretRef": {"name": "s"}}]))),
    ("annotation", pod(gunicorn(), annotations={"concurrency-injector.io/runtime": "nope"})),
    ("audit", pod(gunicorn(), annotations={"concurrency-injector.io/mode": "audit"})),
]


@pytest.mark.parametrize(("kind", "p"), CASES, ids=[k for k, _ in CASES])
def test_a_pod_gives_a_warning_of_each_kind(kind: str, p: dict[str, Any]) -> None:
    warnings = decide(p, Settings(no_registry=True).options).warnings
    assert kind in [kind_of(w) for w in warnings], warnings
    assert OTHER not in [kind_of(w) for w in warnings], warnings


def test_every_kind_of_the_table_is_given_by_some_warning() -> None:
    stale = Stale("web", "gunicorn", "WEB_CONCURRENCY", "1", "2").warning
    given = {k for k, _ in CASES} | {kind_of(stale)}
    assert given == {kind for kind, _ in KINDS}


def _mutate_stderr(path: Path) -> str:
    """`mutate` in this process; its environment and logging set-up undone."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    err = io.StringIO()
    try:
        with mock.patch.dict(os.environ), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(err):
            main(["mutate", "-f", str(path), "--no-registry", "-o", "json"])
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    return err.getvalue()


def test_no_warning_over_the_corpus_is_of_no_kind() -> None:
    """Every warning `mutate` prints for the real manifests of tests/corpus has a kind."""
    seen = 0
    for path in sorted([*CORPUS.glob("manifests/*.yaml"), *CORPUS.glob("charts/*.yaml")]):
        warnings = re.findall(r"^Warning: (.*)$", _mutate_stderr(path), re.MULTILINE)
        seen += len(warnings)
        assert [w for w in warnings if kind_of(w) == OTHER] == [], path.name
    assert seen >= 5  # 8 today: the test must see warnings to mean anything
