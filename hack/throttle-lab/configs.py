"""The server configurations the lab compares, at a given CPU quota. Pure.

- `injected`: what the webhook sets, WEB_CONCURRENCY from its own policy (floor of the limit,
  at least 1) and one thread, passed through the environment as in a patched pod;
- `trap-host`: `2 * cpu_count() + 1` computed from this host's cores, as a gunicorn.conf.py
  copied from a tutorial does (os.cpu_count() inside a container sees the node);
- `trap-64core`: the same formula on a 64-core node, 129 workers, started explicitly;
- `gthread-1x8`: one worker with 8 threads;
- `gthread-2x4`: two workers with 4 threads each.

uvicorn has no threads: it runs the first three.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from webhook.config import Settings
from webhook.core.workers import pod_policy, worker_count

Server = Literal["gunicorn", "uvicorn"]
SERVERS: tuple[Server, ...] = ("gunicorn", "uvicorn")
NODE_CORES = 64
NAMES = ("injected", "trap-host", "trap-64core", "gthread-1x8", "gthread-2x4")
THREADED = ("gthread-1x8", "gthread-2x4")


@dataclass(frozen=True)
class Config:
    name: str
    server: Server
    workers: int
    threads: int
    via_env: bool  # WEB_CONCURRENCY in the environment, not a --workers flag

    @property
    def label(self) -> str:
        return f"{self.server} {self.name}"

    @property
    def shape(self) -> str:
        return f"{self.workers}x{self.threads}" if self.threads > 1 else f"{self.workers}"


def injected_workers(cpus: float) -> int:
    """The webhook's WEB_CONCURRENCY for a container limited to `cpus`, by its default policy."""
    policy, _ = pod_policy(Settings().options, {})
    return worker_count(Decimal(str(cpus)), policy).count


def trap_workers(cores: int) -> int:
    return 2 * cores + 1


def build(name: str, server: Server, cpus: float, *, host_cores: int | None = None) -> Config:
    cores = host_cores if host_cores is not None else (os.cpu_count() or 1)
    if name == "injected":
        return Config(name, server, injected_workers(cpus), 1, via_env=True)
    if name == "trap-host":
        return Config(name, server, trap_workers(cores), 1, via_env=False)
    if name == "trap-64core":
        return Config(name, server, trap_workers(NODE_CORES), 1, via_env=False)
    if name == "gthread-1x8":
        return Config(name, server, 1, 8, via_env=False)
    if name == "gthread-2x4":
        return Config(name, server, 2, 4, via_env=False)
    raise ValueError(f"unknown configuration {name!r}; known: {', '.join(NAMES)}")


def matrix(names: tuple[str, ...], servers: tuple[Server, ...], cpus: float) -> list[Config]:
    """Every (server, configuration) pair that exists: uvicorn has no threaded ones."""
    return [build(name, server, cpus) for server in servers for name in names
            if not (server == "uvicorn" and name in THREADED)]


def command(config: Config, *, port: int, python: str) -> tuple[list[str], dict[str, str]]:
    """argv and extra environment that start `config` on 127.0.0.1:`port` (app from apps.py)."""
    env: dict[str, str] = {}
    if config.via_env:
        env["WEB_CONCURRENCY"] = str(config.workers)
    if config.server == "gunicorn":
        argv = [python, "-m", "gunicorn", "apps:application", "--bind", f"127.0.0.1:{port}"]
        if config.threads > 1:
            argv += ["--worker-class", "gthread", "--threads", str(config.threads)]
    else:
        argv = [python, "-m", "uvicorn", "apps:app", "--host", "127.0.0.1", "--port", str(port),
                "--no-access-log", "--log-level", "warning"]
    if not config.via_env:
        argv += ["--workers", str(config.workers)]
    return argv, env
