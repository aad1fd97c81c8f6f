"""The throttle lab (hack/throttle-lab): its pure parts, and a reduced quick run where a
CPU-quota cgroup can be made (root and a writable /sys/fs/cgroup), skipped with the reason
otherwise. The run checks that the harness works, never timings."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
LAB = REPO / "hack" / "throttle-lab"
EXIT_NO_CGROUP = 3
SMOKE_TIMEOUT_SECONDS = 150


def _module(name: str) -> ModuleType:
    """A lab module by file (hack/throttle-lab is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"throttle_lab_{name}", LAB / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


cgroup = _module("cgroup")
configs = _module("configs")

V1_STAT = "nr_periods 200\nnr_throttled 150\nthrottled_time 18500000000\nnr_bursts 0\nburst_time 0\n"
V2_STAT = (
    "usage_usec 9000000\nuser_usec 8000000\nsystem_usec 1000000\nnr_periods 200\n"
    "nr_throttled 150\nthrottled_usec 18500000\nnr_bursts 0\nburst_usec 0\n"
)


@pytest.mark.parametrize(
    ("text", "acct_ns", "usage_s"),
    [
        (V1_STAT, 9_000_000_000, 9.0),
        (V1_STAT, None, None),
        (V2_STAT, None, 9.0),
    ],
    ids=["v1-with-cpuacct", "v1-without-cpuacct", "v2"],
)
def test_cpu_stat_is_read_in_common_units(text: str, acct_ns: int | None, usage_s: float | None) -> None:
    stat = cgroup.parse_cpu_stat(text, acct_ns=acct_ns)
    assert (stat.nr_periods, stat.nr_throttled, stat.throttled_s, stat.usage_s) == (200, 150, 18.5, usage_s)


def test_cpu_stat_difference() -> None:
    before = cgroup.CpuStat(10, 4, 1.5, 2.0)
    after = cgroup.CpuStat(60, 54, 6.5, 7.0)
    assert after.minus(before) == cgroup.CpuStat(50, 50, 5.0, 5.0)


@pytest.mark.parametrize(
    ("name", "cpus", "shape", "via_env"),
    [
        ("injected", 0.5, "1", True),
        ("injected", 1, "1", True),
        ("injected", 2, "2", True),
        ("trap-host", 1, "5", False),
        ("trap-64core", 1, "129", False),
        ("gthread-1x8", 1, "1x8", False),
        ("gthread-2x4", 2, "2x4", False),
    ],
    ids=["injected-0.5", "injected-1", "injected-2", "trap-host", "trap-64core", "gthread-1x8", "gthread-2x4"],
)
def test_configurations(name: str, cpus: float, shape: str, via_env: bool) -> None:
    config = configs.build(name, "gunicorn", cpus, host_cores=2)
    assert (config.shape, config.via_env) == (shape, via_env)


def test_injected_setting_reaches_the_server_through_the_environment() -> None:
    config = configs.build("injected", "gunicorn", 2, host_cores=2)
    argv, env = configs.command(config, port=8000, python="python3")
    assert env == {"WEB_CONCURRENCY": "2"}
    assert "--workers" not in argv


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        ("gunicorn", ["--workers", "129"]),
        ("uvicorn", ["--workers", "129"]),
    ],
    ids=["gunicorn", "uvicorn"],
)
def test_trap_is_started_explicitly(server: str, expected: list[str]) -> None:
    config = configs.build("trap-64core", server, 1, host_cores=2)
    argv, env = configs.command(config, port=8000, python="python3")
    assert argv[-2:] == expected
    assert env == {}


def test_uvicorn_runs_no_threaded_configuration() -> None:
    names = [c.label for c in configs.matrix(configs.NAMES, configs.SERVERS, 1)]
    assert names == [
        "gunicorn injected", "gunicorn trap-host", "gunicorn trap-64core", "gunicorn gthread-1x8",
        "gunicorn gthread-2x4", "uvicorn injected", "uvicorn trap-host", "uvicorn trap-64core",
    ]


def _lab(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(LAB / "lab.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.slow
def test_quick_run_produces_table_json_and_plots(tmp_path: Path) -> None:
    check = _lab("--check", timeout=30)
    if check.returncode == EXIT_NO_CGROUP:
        pytest.skip(f"no CPU-quota cgroup here: {check.stderr.strip()}")
    assert check.returncode == 0, check.stderr
    pytest.importorskip("matplotlib", reason="the lab's plots need matplotlib")

    done = _lab("--quick", "--quotas", "1", "--configs", "injected,trap-host", "--endpoints", "cpu",
                "--duration", "1", "--repeats", "2", "--warmup", "0", "--out", str(tmp_path),
                timeout=SMOKE_TIMEOUT_SECONDS)

    assert done.returncode == 0, done.stdout + done.stderr
    results: dict[str, Any] = json.loads((tmp_path / "results.json").read_text())
    runs = results["runs"]
    # 2 servers x 2 configurations x 1 endpoint x 2 levels x 2 repeats
    assert len(runs) == 16
    for run in runs:
        assert run["requests"] > 0, run
        assert run["errors"] == 0, run
        assert run["nr_periods"] > 0, run
        assert run["pss_mib"] > 0, run
        assert run["workers_seen"] == run["workers"], run
    assert {(r["config"], r["workers"]) for r in runs} == {
        ("injected", 1), ("trap-host", 2 * (os.cpu_count() or 1) + 1)}
    table = (tmp_path / "results.md").read_text()
    assert "| 1 | gunicorn | trap-host |" in table
    for plot in ("light.png", "saturated.png"):
        assert (tmp_path / plot).read_bytes().startswith(b"\x89PNG")
