"""The kind suite where no cluster can be had: every test skipped with the reason, none passed
(a vacuous pass would hide that nothing ran), and a failure where the e2e workflow requires it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_suite(**env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("E2E_")}
    return subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "tests/e2e", "-m", "e2e"),
            *("-p", "no:cacheprovider", "-rs", "-q"),
        ],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.slow
def test_without_a_cluster_every_e2e_test_is_skipped_with_the_reason() -> None:
    done = run_suite()
    assert done.returncode == 0, done.stdout[-2000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert "skipped" in summary, summary
    assert "passed" not in summary, summary
    assert "failed" not in summary, summary
    reasons = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
    assert reasons, done.stdout[-2000:]
    assert all("hack/e2e-kind.sh" in line for line in reasons), reasons


@pytest.mark.slow
def test_the_e2e_workflow_fails_instead_of_skipping() -> None:
    done = run_suite(E2E_REQUIRE="1", E2E_KUBECONFIG="")
    assert done.returncode == 1, done.stdout[-2000:]
    assert "kind suite required, but:" in done.stdout
