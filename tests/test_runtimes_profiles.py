"""Real granian, uWSGI, Celery, `fastapi run` and `uvicorn.run(app)`, started with the env the
webhook produced for a pod that runs them, count their workers.

Each test builds a pod whose container runs the server's real command with `limits.cpu: "2"`,
asks the real CLI (`concurrency-injector mutate -o json`) for its answer, resolves the env as
the kubelet would (`tests.test_runtimes.kubelet_env`), and starts the server with exactly that
env and no worker flag. Worker processes are counted in /proc. Every process runs in its own
process group on loopback and is killed at the end of its test, whatever happens.

What each server reads, as verified in its own source (file and line for the tested releases):

- granian 2.8: `granian/cli.py` `@option('--workers', ...)` with `cli(auto_envvar_prefix='GRANIAN')`
  in `entrypoint()`: `GRANIAN_WORKERS` fills `--workers`; it never reads `WEB_CONCURRENCY`.
- uWSGI 2.0: `core/utils.c` `parse_sys_envs()` turns every `UWSGI_<OPTION>` into an option,
  before the command line (`core/uwsgi.c`); `workers` is an alias of `processes`.
- Celery 5: `celery/bin/celery.py` `celery(auto_envvar_prefix="CELERY")`: `CELERY_WORKER_CONCURRENCY`
  fills `celery worker --concurrency`; unset, the pool size is `billiard.cpu_count()`.
- fastapi-cli: `fastapi run` calls `uvicorn.run(import_string, workers=None)`, so uvicorn reads
  `WEB_CONCURRENCY` (`uvicorn/config.py`).
- uvicorn: `uvicorn.run(app_object)` with more than one worker logs "You must pass the
  application as an import string ..." and exits with status 3 (`STARTUP_FAILURE`).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import (
    LOOPBACK,
    answers,
    children,
    clean_env,
    cmdline,
    environ_of,
    free_port,
    gunicorn_pod,
    kubelet_env,
    mutate,
    process_group,
    uvicorn_workers,
    wait_until,
)

pytestmark = pytest.mark.slow

START_TIMEOUT = 60.0  # a first Celery start compiles a lot of bytecode
SETTLE_SECONDS = 1.0  # a server that starts too many workers shows them by then
CPU = "2"
# Variables of the servers under test that must not leak in from the shell running pytest.
SERVER_PREFIXES = ("UWSGI_", "GRANIAN_", "CELERY_", "UVICORN_")

WSGI_APP = """\
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
"""
CELERY_APP = """\
from celery import Celery

app = Celery("tasks", broker="memory://", backend=None)
{config}

@app.task
def add(x, y):
    return x + y
"""
# `python main.py`, the way many FastAPI services start: the app object, not an import string.
UVICORN_RUN_APP = """\
import os

import uvicorn


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), log_level="info")
"""
FASTAPI_APP = """\
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

app = FastAPI()


@app.get("/", response_class=PlainTextResponse)
def root() -> str:
    return "ok"
"""


# --- helpers ----------------------------------------------------------------------------------


def script(name: str) -> str:
    """The console script `name` installed next to this interpreter (as a container has it)."""
    path = Path(sys.executable).with_name(name)
    if not path.exists():
        pytest.skip(f"{name} is not installed next to {sys.executable} (pip install -e '.[test]')")
    return str(path)


def webhook_env(command: list[str], tmp_path: Path, *,
                annotations: Mapping[str, str] | None = None) -> dict[str, str]:
    """The env the webhook gives a container running `command` with `limits.cpu: "2"`."""
    pod = gunicorn_pod(cpu=CPU, command=command, annotations=annotations)
    return kubelet_env(mutate(pod, tmp_path), "web")


def server_env(env: Mapping[str, str], **extra: str) -> dict[str, str]:
    """This process's env without our variables or the servers' own, plus `env`."""
    base = {k: v for k, v in clean_env().items() if not k.startswith(SERVER_PREFIXES)}
    return {**base, "PYTHONUNBUFFERED": "1", **env, **extra}


@dataclass(frozen=True)
class Started:
    pid: int
    workdir: Path

    def log(self) -> str:
        return (self.workdir / "server.log").read_text(errors="replace")


@contextlib.contextmanager
def started(command: list[str], env: Mapping[str, str], workdir: Path,
            ready: Callable[[], bool]) -> Iterator[Started]:
    """`command` in its own process group until `ready()`; the group is killed on exit."""
    with process_group(command, env=env, cwd=workdir, log_file=workdir / "server.log") as proc:
        if not wait_until(lambda: proc.poll() is not None or ready(), timeout=START_TIMEOUT,
                          interval=0.1) or proc.poll() is not None:
            pytest.fail(f"{command[0]} did not start; exit code {proc.poll()}")
        yield Started(proc.pid, workdir)


def settled_workers(master: int, expected: int,
                    workers: Callable[[int], list[int]] = children) -> list[int]:
    """The worker pids once `expected` of them are up and a moment has passed."""
    wait_until(lambda: len(workers(master)) >= expected, timeout=START_TIMEOUT)
    time.sleep(SETTLE_SECONDS)
    return workers(master)


def workdir_with(tmp_path: Path, name: str, files: Mapping[str, str]) -> Path:
    workdir = tmp_path / name
    workdir.mkdir()
    for file_name, text in files.items():
        (workdir / file_name).write_text(text)
    return workdir


def describe(pids: list[int]) -> list[str]:
    return [f"{pid}: {cmdline(pid)}" for pid in pids]


# --- granian --------------------------------------------------------------------------------------


def test_granian_runs_the_workers_the_webhook_set(tmp_path: Path) -> None:
    env = webhook_env(["granian", "--interface", "wsgi", "--host", "0.0.0.0", "--port", "8000",
                       "app:app"], tmp_path)
    assert env.get("GRANIAN_WORKERS") == CPU, env
    # granian ignores WEB_CONCURRENCY: the webhook must not give a variable the runtime ignores.
    assert "WEB_CONCURRENCY" not in env, env

    workdir = workdir_with(tmp_path, "granian", {"app.py": WSGI_APP})
    port = free_port()
    command = [script("granian"), "--interface", "wsgi", "--host", LOOPBACK, "--port", str(port),
               "app:app"]
    with started(command, server_env(env), workdir, lambda: answers(port, b"ok")) as server:
        workers = settled_workers(server.pid, int(CPU))
        assert len(workers) == int(CPU), describe(workers)
        for pid in workers:
            assert environ_of(pid).get("GRANIAN_WORKERS") == CPU


# --- uWSGI ----------------------------------------------------------------------------------------


def uwsgi_command(port: int, *flags: str) -> list[str]:
    # --die-on-term: SIGTERM stops uWSGI 2.0 (without it SIGTERM means "reload").
    return [script("uwsgi"), "--http-socket", f"{LOOPBACK}:{port}", "--master", "--die-on-term",
            "--need-app", "--module", "app:app", *flags]


def test_uwsgi_runs_the_processes_the_webhook_set(tmp_path: Path) -> None:
    env = webhook_env(["uwsgi", "--http-socket", ":8000", "--master", "--die-on-term",
                       "--module", "app:app"], tmp_path)
    assert env.get("UWSGI_PROCESSES") == CPU, env
    assert "WEB_CONCURRENCY" not in env, env

    workdir = workdir_with(tmp_path, "uwsgi", {"app.py": WSGI_APP})
    port = free_port()
    with started(uwsgi_command(port), server_env(env), workdir,
                 lambda: answers(port, b"ok")) as server:
        workers = settled_workers(server.pid, int(CPU))
        assert len(workers) == int(CPU), describe(workers)


# What uWSGI itself does with the variable, whoever sets it (these need no webhook): the
# facts the uWSGI profile's override rules rest on.
UWSGI_CASES = [
    # id, env in this order, flags, workers
    ("processes", [("UWSGI_PROCESSES", "2")], [], 2),
    ("workers-is-an-alias", [("UWSGI_WORKERS", "3")], [], 3),
    # Both names set the same option: the later one in the environment wins, so an injected
    # UWSGI_PROCESSES placed after a user's UWSGI_WORKERS would silently replace it.
    ("later-wins-workers", [("UWSGI_PROCESSES", "2"), ("UWSGI_WORKERS", "1")], [], 1),
    ("later-wins-processes", [("UWSGI_WORKERS", "1"), ("UWSGI_PROCESSES", "2")], [], 2),
    # The command line is read after the environment.
    ("flag-overrides", [("UWSGI_PROCESSES", "2")], ["--processes", "1"], 1),
    ("short-flag-overrides", [("UWSGI_PROCESSES", "2")], ["-p", "1"], 1),
]


@pytest.mark.parametrize(("pairs", "flags", "expected"), [c[1:] for c in UWSGI_CASES],
                         ids=[c[0] for c in UWSGI_CASES])
def test_uwsgi_reads_its_variables_in_environment_order(
    pairs: list[tuple[str, str]], flags: list[str], expected: int, tmp_path: Path
) -> None:
    workdir = workdir_with(tmp_path, "uwsgi", {"app.py": WSGI_APP})
    port = free_port()
    env = server_env({})
    for name, value in pairs:  # dicts keep insertion order, and so does the child's environ
        env[name] = value
    with started(uwsgi_command(port, *flags), env, workdir,
                 lambda: answers(port, b"ok")) as server:
        workers = settled_workers(server.pid, expected)
        assert len(workers) == expected, describe(workers)


# --- Celery ---------------------------------------------------------------------------------------

CELERY_FLAGS = ["--pool", "prefork", "--without-gossip", "--without-mingle",
                "--without-heartbeat", "--loglevel", "INFO"]


@contextlib.contextmanager
def celery_worker(tmp_path: Path, env: Mapping[str, str], *, flags: Sequence[str] = (),
                  config: str = "") -> Iterator[Started]:
    """A Celery worker on an in-memory broker (nothing listens anywhere), until it is ready."""
    workdir = workdir_with(tmp_path, "celery", {"tasks.py": CELERY_APP.format(config=config)})
    command = [script("celery"), "-A", "tasks", "worker", *CELERY_FLAGS, *flags]
    log = workdir / "server.log"
    with started(command, server_env(env), workdir,
                 lambda: log.exists() and " ready." in log.read_text(errors="replace")) as worker:
        yield worker


def test_celery_worker_pool_is_the_concurrency_the_webhook_set(tmp_path: Path) -> None:
    env = webhook_env(["celery", "-A", "tasks", "worker", "--loglevel", "INFO"], tmp_path)
    assert env.get("CELERY_WORKER_CONCURRENCY") == CPU, env
    assert "WEB_CONCURRENCY" not in env, env

    with celery_worker(tmp_path, env) as worker:
        pool = settled_workers(worker.pid, int(CPU))
        assert len(pool) == int(CPU), describe(pool)
        assert f"concurrency: {CPU} (prefork)" in worker.log()


CELERY_CASES = [
    # id, env, flags, app config, pool size
    ("variable", {"CELERY_WORKER_CONCURRENCY": "2"}, [], "", 2),
    ("flag-overrides", {"CELERY_WORKER_CONCURRENCY": "2"}, ["-c", "1"], "", 1),
    # The variable fills the CLI option, which beats the app's own configured value.
    ("variable-beats-app-config", {"CELERY_WORKER_CONCURRENCY": "2"}, [],
     "app.conf.worker_concurrency = 1", 2),
    ("app-config-alone", {}, [], "app.conf.worker_concurrency = 1", 1),
]


@pytest.mark.parametrize(("env", "flags", "config", "expected"), [c[1:] for c in CELERY_CASES],
                         ids=[c[0] for c in CELERY_CASES])
def test_celery_reads_its_variable_between_flag_and_app_config(
    env: dict[str, str], flags: list[str], config: str, expected: int, tmp_path: Path
) -> None:
    with celery_worker(tmp_path, env, flags=flags, config=config) as worker:
        pool = settled_workers(worker.pid, expected)
        assert len(pool) == expected, describe(pool)
        assert f"concurrency: {expected} (prefork)" in worker.log()


# --- fastapi run ----------------------------------------------------------------------------------


def test_fastapi_run_honours_web_concurrency_from_the_webhook(tmp_path: Path) -> None:
    env = webhook_env(["fastapi", "run", "main.py"], tmp_path)
    assert env.get("WEB_CONCURRENCY") == CPU, env

    workdir = workdir_with(tmp_path, "fastapi", {"main.py": FASTAPI_APP})
    port = free_port()
    command = [script("fastapi"), "run", "main.py", "--host", LOOPBACK, "--port", str(port)]
    with started(command, server_env(env), workdir, lambda: answers(port, b"ok")) as server:
        workers = settled_workers(server.pid, int(CPU), uvicorn_workers)
        assert len(workers) == int(CPU), describe(children(server.pid))
        for pid in workers:
            assert environ_of(pid).get("WEB_CONCURRENCY") == CPU


# --- uvicorn.run(app) ---------------------------------------------------------------------------


def run_uvicorn_app(tmp_path: Path, name: str, env: Mapping[str, str]
                    ) -> tuple[int | None, str, bool]:
    """`python main.py` (uvicorn.run with the app object): exit code (None while it serves),
    its log, and whether it answered."""
    workdir = workdir_with(tmp_path, name, {"main.py": UVICORN_RUN_APP})
    port = free_port()
    log_file = workdir / "server.log"
    with process_group([sys.executable, "main.py"], env=server_env(env, PORT=str(port)),
                       cwd=workdir, log_file=log_file) as proc:
        wait_until(lambda: proc.poll() is not None or answers(port, b"ok"),
                   timeout=START_TIMEOUT, interval=0.1)
        served = proc.poll() is None and answers(port, b"ok")
        return proc.poll(), log_file.read_text(errors="replace"), served


def test_uvicorn_run_with_an_app_object_exits_above_one_worker(tmp_path: Path) -> None:
    """The hazard itself: WEB_CONCURRENCY=2 stops `uvicorn.run(app)`; 1 serves."""
    code, log, served = run_uvicorn_app(tmp_path, "two", {"WEB_CONCURRENCY": "2"})
    assert not served
    assert code is not None, log
    assert code != 0, log
    assert code == 3, log  # uvicorn's STARTUP_FAILURE (older releases exited with 1)
    assert "You must pass the application as an import string" in log

    code, log, served = run_uvicorn_app(tmp_path, "one", {"WEB_CONCURRENCY": "1"})
    assert served, log
    assert code is None, log


def test_webhook_env_keeps_uvicorn_run_app_serving(tmp_path: Path) -> None:
    """uvicorn named by annotation while the command is `python main.py` (not the uvicorn CLI):
    whatever the webhook sets there must not crash-loop `uvicorn.run(app)` on a 2-CPU limit."""
    env = webhook_env(["python", "main.py"], tmp_path,
                      annotations={"concurrency-injector.io/runtime": "uvicorn"})
    assert int(env.get("WEB_CONCURRENCY", "1")) <= 1, env
    code, log, served = run_uvicorn_app(tmp_path, "webhook", env)
    assert served, log
    assert code is None, log

