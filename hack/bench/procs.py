"""Processes the bench starts: pinned, in their own process group, always cleaned up.

Also what /proc says about a server's process tree: CPU time (utime+stime) and resident memory.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from tests.servers import stop_group

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
STOP_GRACE_SECONDS = 5.0


class Group:
    """A command started in a new session (its own process group), pinned to one CPU.

    Used as a context manager: leaving it always ends the whole group, SIGTERM first, then
    SIGKILL after a grace period, whatever happened inside.
    """

    def __init__(self, argv: Sequence[str], *, cpu: int, log: Path,
                 env: Mapping[str, str] | None = None, cwd: Path | None = None) -> None:
        self.argv = ["taskset", "-c", str(cpu), *argv]
        self.log = log
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> Group:
        with self.log.open("ab") as log:
            log.write(f"$ {' '.join(self.argv)}\n".encode())
            log.flush()
            self.started_at = time.monotonic()
            # taskset execs the command, so the pid is the server's own.
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd,
                                         start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self) -> None:
        """SIGTERM to the group, then SIGKILL to stragglers (a gunicorn worker, a pool's child)."""
        if self.proc is not None:
            stop_group(self.proc, timeout=STOP_GRACE_SECONDS)

    def __enter__(self) -> Group:
        """Start the command, unless it is started already (then only own its cleanup)."""
        return self if self.proc is not None else self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _stat_fields(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    # The command name is in parentheses and may hold spaces: split after its closing one.
    return raw[raw.rindex(")") + 2:].split()


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants, from /proc (one scan)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry.name))[1])
        except (OSError, ValueError):
            continue  # gone meanwhile
        parents.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, []))
    return tree


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process tree, in seconds."""
    total = 0
    for member in process_tree(pid):
        try:
            fields = _stat_fields(member)
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLOCK_TICKS


def rss_mb(pid: int) -> float:
    """VmRSS of one process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def tree_rss_mb(pid: int) -> tuple[float, float]:
    """(sum of VmRSS over the tree, largest VmRSS of a worker), in MiB.

    A worker is a process of the tree with no children of its own (gunicorn's worker, not its
    arbiter); a single-process server is its own worker.
    """
    tree = process_tree(pid)
    sizes: dict[int, float] = {}
    for member in tree:
        try:
            sizes[member] = rss_mb(member)
        except OSError:
            continue
    parents = set()
    for member in tree:
        try:
            parents.add(int(_stat_fields(member)[1]))
        except OSError:
            continue
    workers = [size for member, size in sizes.items() if member not in parents] or [0.0]
    return sum(sizes.values()), max(workers)
