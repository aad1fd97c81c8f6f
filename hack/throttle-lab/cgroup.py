"""A CPU-quota cgroup for the server under test: the mechanism Kubernetes uses for `limits.cpu`.

The kubelet turns a CPU limit into a CFS bandwidth quota: `cpu.max` ("QUOTA PERIOD", cgroup v2)
or `cpu.cfs_quota_us`/`cpu.cfs_period_us` (cgroup v1), with a 100 ms period. The version is
detected at run time from /sys/fs/cgroup. Creating a cgroup needs root (or a delegated subtree).

`cpu.stat` gives `nr_periods` (periods in which the group had runnable tasks), `nr_throttled`
(periods in which it ran out of quota) and the throttled time. The throttled time is summed over
the CPUs whose run queues were stalled, so on a 2-core machine it can reach 2 s per second.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000  # the kubelet's CFS period
# A high CPU weight (100x the default) for the lab's groups, so that on a shared machine the
# quota, not other work, is what limits the server (as a CPU request does for a pod).
SHARES_V1 = 102_400
WEIGHT_V2 = 10_000
EMPTY_WAIT_SECONDS = 10.0

Version = Literal["v1", "v2"]


class CgroupError(Exception):
    """No CPU-quota cgroup can be made here; the message says why and what to do."""


@dataclass(frozen=True)
class CpuStat:
    """What `cpu.stat` (and, on v1, `cpuacct.usage`) says, in common units."""

    nr_periods: int
    nr_throttled: int
    throttled_s: float
    usage_s: float | None  # CPU time used by the group; None where it cannot be read

    def minus(self, before: CpuStat) -> CpuStat:
        usage = (None if self.usage_s is None or before.usage_s is None
                 else self.usage_s - before.usage_s)
        return CpuStat(self.nr_periods - before.nr_periods,
                       self.nr_throttled - before.nr_throttled,
                       self.throttled_s - before.throttled_s, usage)


def parse_cpu_stat(text: str, *, acct_ns: int | None = None) -> CpuStat:
    """`cpu.stat` of either version (v1: `throttled_time` in ns; v2: `throttled_usec` and
    `usage_usec`); `acct_ns` is v1's `cpuacct.usage`, which v1's cpu.stat does not carry."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            fields[key] = int(value)
    if "throttled_usec" in fields:
        throttled = fields["throttled_usec"] / 1e6
    else:
        throttled = fields.get("throttled_time", 0) / 1e9
    if "usage_usec" in fields:
        usage: float | None = fields["usage_usec"] / 1e6
    else:
        usage = None if acct_ns is None else acct_ns / 1e9
    return CpuStat(fields.get("nr_periods", 0), fields.get("nr_throttled", 0), throttled, usage)


def detect(root: Path = ROOT) -> Version:
    """v2 when the unified hierarchy is mounted at `root` with the cpu controller available,
    v1 when a cpu controller hierarchy with CFS bandwidth files is; CgroupError otherwise."""
    controllers = root / "cgroup.controllers"
    if controllers.exists():
        if "cpu" in controllers.read_text().split():
            return "v2"
        raise CgroupError(f"cgroup v2 at {root}, but the cpu controller is not available there "
                          f"({controllers}: {controllers.read_text().strip()!r})")
    if (root / "cpu" / "cpu.cfs_quota_us").exists():
        return "v1"
    raise CgroupError(f"no cgroup with CPU bandwidth control under {root} (neither a v2 "
                      "cpu controller nor a v1 cpu hierarchy with cpu.cfs_quota_us)")


class Cgroup:
    """One cgroup made for the lab, removed by `remove()` (or on leaving the `with` block)."""

    def __init__(self, name: str, root: Path = ROOT) -> None:
        self.version = detect(root)
        self.name = name
        if self.version == "v2":
            self.cpu_dir = root / name
            self.acct_dir: Path | None = None
        else:
            self.cpu_dir = (root / "cpu").resolve() / name
            acct_root = root / "cpuacct"
            # cpu and cpuacct are often one hierarchy (cpu,cpuacct); here they may be two.
            same = acct_root.exists() and acct_root.resolve() == (root / "cpu").resolve()
            self.acct_dir = (None if not acct_root.exists() else
                             self.cpu_dir if same else acct_root.resolve() / name)
        self.dirs = [d for d in (self.cpu_dir, self.acct_dir) if d is not None]
        self.dirs = list(dict.fromkeys(self.dirs))
        self._create(root)

    def _create(self, root: Path) -> None:
        if os.geteuid() != 0:
            raise CgroupError("the throttle lab needs root to create a cgroup "
                              f"(under {root}); run it with sudo")
        try:
            if self.version == "v2":
                self._enable_cpu_controller(root)
            for directory in self.dirs:
                directory.mkdir(exist_ok=True)
            self.set_quota(None)
            self._set_weight()
        except OSError as err:
            self.remove()
            raise CgroupError(f"cannot create a CPU-quota cgroup at {self.cpu_dir}: {err} "
                              "(read-only /sys/fs/cgroup, as in an unprivileged container?)"
                              ) from err

    @staticmethod
    def _enable_cpu_controller(root: Path) -> None:
        control = root / "cgroup.subtree_control"
        if "cpu" not in control.read_text().split():
            control.write_text("+cpu")

    def _set_weight(self) -> None:
        if self.version == "v2":
            (self.cpu_dir / "cpu.weight").write_text(str(WEIGHT_V2))
        else:
            (self.cpu_dir / "cpu.shares").write_text(str(SHARES_V1))

    def set_quota(self, cpus: float | None) -> None:
        """A quota of `cpus` CPUs per 100 ms period; None removes it."""
        if self.version == "v2":
            quota = "max" if cpus is None else str(round(cpus * PERIOD_US))
            (self.cpu_dir / "cpu.max").write_text(f"{quota} {PERIOD_US}")
        else:
            (self.cpu_dir / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            quota = "-1" if cpus is None else str(round(cpus * PERIOD_US))
            (self.cpu_dir / "cpu.cfs_quota_us").write_text(quota)

    def attach(self, pid: int) -> None:
        """Move `pid` into the group (its children inherit it)."""
        for directory in self.dirs:
            (directory / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        text = (self.cpu_dir / "cgroup.procs").read_text()
        return [int(line) for line in text.split()]

    def cpu_stat(self) -> CpuStat:
        acct_ns = None
        if self.acct_dir is not None and (self.acct_dir / "cpuacct.usage").exists():
            acct_ns = int((self.acct_dir / "cpuacct.usage").read_text())
        return parse_cpu_stat((self.cpu_dir / "cpu.stat").read_text(), acct_ns=acct_ns)

    def remove(self) -> None:
        """Remove the group once the processes in it are gone (they are the lab's own)."""
        deadline = time.monotonic() + EMPTY_WAIT_SECONDS
        for directory in reversed(self.dirs):
            while directory.exists():
                try:
                    directory.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)

    def __enter__(self) -> Cgroup:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self.remove()
