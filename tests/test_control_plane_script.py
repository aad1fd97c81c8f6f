"""hack/kube/control-plane.sh and the API server suite where Go or the module proxy is missing:
a one-line reason and exit status 3 from the script, a skip (not a pass) from the suite."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "hack" / "kube" / "control-plane.sh"
CANNOT_BUILD = 3


def without_go() -> dict[str, str]:
    """This environment with every PATH entry that holds a `go` removed."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join(
        d for d in env.get("PATH", "").split(os.pathsep) if d and not (Path(d) / "go").exists()
    )
    return env


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_no_go_is_a_clear_message_and_status_3() -> None:
    done = run("build", "1.37.2", env=without_go())
    assert done.returncode == CANNOT_BUILD
    assert done.stderr.strip() == (
        "control-plane: cannot build: Go is not installed (install Go 1.26 or newer, then run this again)"
    )


@pytest.mark.skipif(shutil.which("go") is None, reason="needs Go to reach the proxy check")
def test_no_module_proxy_is_a_clear_message_and_status_3(tmp_path: Path) -> None:
    env = {**os.environ, "GOPROXY": "off", "GOMODCACHE": str(tmp_path / "mod"), "GOFLAGS": ""}
    env["KUBE_CACHE"] = str(tmp_path / "cache")  # nothing built yet
    done = run("build", "1.37.2", env=env)
    assert done.returncode == CANNOT_BUILD
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "control-plane: cannot build: the Go module proxy (off) could not provide the modules for k8s-v1.37.2"
    ), done.stderr
    assert "Traceback" not in done.stderr
    assert "panic" not in done.stderr


def test_starting_a_version_that_is_not_built_says_how_to_build_it(tmp_path: Path) -> None:
    env = {**os.environ, "KUBE_CACHE": str(tmp_path / "cache")}
    done = run("start", "1.35.4", str(tmp_path / "state"), env=env)
    assert done.returncode == CANNOT_BUILD
    assert "Kubernetes 1.35.4 is not built (run: " in done.stderr
    assert "build 1.35.4)" in done.stderr


def test_the_suite_skips_with_the_reason_when_go_is_missing(tmp_path: Path) -> None:
    """Never a vacuous pass: every scenario is reported skipped, with why."""
    env = without_go()
    env.pop("CONCURRENCY_INJECTOR_REQUIRE_APISERVER", None)
    env["KUBE_CACHE"] = str(tmp_path / "cache")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "apiserver", "-p", "no:cacheprovider", "-q", "-rs",
         "tests/apiserver/test_injection.py::test_server_side_dry_run_is_patched_and_stores_nothing"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:]
    assert "1 skipped" in done.stdout
    assert "Go is not installed" in done.stdout


def test_the_suite_fails_when_required_and_go_is_missing(tmp_path: Path) -> None:
    env = without_go()
    env["CONCURRENCY_INJECTOR_REQUIRE_APISERVER"] = "1"
    env["KUBE_CACHE"] = str(tmp_path / "cache")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "apiserver", "-p", "no:cacheprovider", "-q",
         "tests/apiserver/test_injection.py::test_server_side_dry_run_is_patched_and_stores_nothing"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 1, done.stdout[-2000:]
    assert "API server suite required, but: control-plane: cannot build: Go is not installed" in done.stdout
