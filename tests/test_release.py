"""The release's version check (hack/check-version.py), as release.yml runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from webhook import __version__

SCRIPT = Path(__file__).resolve().parents[1] / "hack" / "check-version.py"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=False
    )


def test_the_package_and_the_chart_agree() -> None:
    done = run("--print")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == __version__


@pytest.mark.parametrize(
    ("tag", "returncode"),
    [(f"v{__version__}", 0), (__version__, 1), ("v999.0.0", 1)],
    ids=["v-prefixed", "no-v", "other-version"],
)
def test_the_tag_must_be_v_and_the_package_version(tag: str, returncode: int) -> None:
    done = run("--tag", tag)
    assert done.returncode == returncode, done.stderr
    if returncode:
        assert f"expected 'v{__version__}'" in done.stderr
