"""Which containers run Python web servers (SPEC "Which containers are targets"). Pure.

A command is read the way a shell or exec would start it: the first word of each command
(after wrappers such as `exec`, `env`, `tini --`, `uv run`) is what runs, so `pip install
gunicorn && celery worker` is not a web server while `sh -c "cd /app && exec gunicorn app"` is.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from webhook import keys
from webhook.types import RUNTIMES, ImageConfig, Obj, Runtime

Source = Literal["command", "image-label", "image-command", "annotation"]

SERVERS: dict[str, Runtime] = {"gunicorn": "gunicorn", "uvicorn": "uvicorn"}
PYTHON = re.compile(r"^python(\d+(\.\d+)?)?$")
SHELLS = frozenset({"sh", "bash", "dash", "ash", "zsh", "ksh", "busybox"})
# Programs that run the rest of their command line: skip them (and their options) to find
# what really runs.
WRAPPERS = frozenset(
    {
        "exec",
        "env",
        "tini",
        "tini-static",
        "dumb-init",
        "catatonit",
        "nohup",
        "gosu",
        "su-exec",
        "ddtrace-run",
        "opentelemetry-instrument",
        "doppler",
        "chamber",
        "setpriv",
        "taskset",
        "nice",
    }
)
RUNNERS = frozenset({"poetry", "uv", "pipenv", "pdm", "hatch", "rye", "newrelic-admin"})
SEPARATORS = frozenset({"&&", "||", ";", "|", "&", "(", ")", ";;"})
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# A wrapper's numeric operand (`nice -n 10`, `taskset -c 0-3`).
NUMERIC_OPERAND = re.compile(r"^[0-9][0-9,\-]*$")
# Python options that take a separate argument (`python -X importtime -m gunicorn`).
PYTHON_OPTIONS_WITH_ARG = frozenset({"-X", "-W", "-Q"})
MAX_SHELL_DEPTH = 3


@dataclass(frozen=True)
class ServerCommand:
    """A gunicorn or uvicorn invocation found in a command line, with its own arguments."""

    runtime: Runtime
    args: tuple[str, ...]


@dataclass(frozen=True)
class Target:
    """A container that gets WEB_CONCURRENCY, and why."""

    name: str
    init: bool
    runtime: Runtime
    source: Source
    server: ServerCommand | None = None


def find_server(argv: list[str], *, depth: int = 0) -> ServerCommand | None:
    """The gunicorn/uvicorn invocation that `argv` starts, if any."""
    for segment in _segments(argv):
        found = _segment_server(segment, depth=depth)
        if found is not None:
            return found
    return None


def _segments(tokens: list[str]) -> list[list[str]]:
    """Split a token list at shell command separators."""
    segments: list[list[str]] = [[]]
    for token in tokens:
        if token in SEPARATORS:
            segments.append([])
        else:
            segments[-1].append(token)
    return [s for s in segments if s]


def _shell_words(script: str) -> list[str]:
    lexer = shlex.shlex(script.replace("\n", " ; "), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError:  # unbalanced quotes: the shell would fail too; read it word by word
        return script.split()


def _segment_server(tokens: list[str], *, depth: int) -> ServerCommand | None:
    i = 0
    while i < len(tokens):
        word = tokens[i]
        name = posixpath.basename(word)
        if ASSIGNMENT.match(word):
            i += 1
        elif name in SERVERS:
            return ServerCommand(SERVERS[name], tuple(tokens[i + 1 :]))
        elif PYTHON.match(name):
            return _python_module(tokens[i + 1 :])
        elif name in SHELLS:
            return _shell(tokens[i + 1 :], depth=depth)
        elif name in WRAPPERS:
            i = _skip_options(tokens, i + 1)
        elif name in RUNNERS and i + 1 < len(tokens) and tokens[i + 1] in ("run", "run-program"):
            i = _skip_options(tokens, i + 2)
        else:
            return None
    return None


def _skip_options(tokens: list[str], i: int) -> int:
    """Past a wrapper's own options and `--`, to the command it runs."""
    while i < len(tokens) and (tokens[i].startswith("-") or NUMERIC_OPERAND.match(tokens[i])):
        i += 1
        if tokens[i - 1] == "--":
            break
    return i


def _python_module(args: list[str]) -> ServerCommand | None:
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "-m":
            module = args[i + 1] if i + 1 < len(args) else ""
            return _module_server(module, args[i + 2 :])
        if arg.startswith("-m"):
            return _module_server(arg[2:], args[i + 1 :])
        if not arg.startswith("-") or arg == "-c":
            return None  # a script or inline code: not a known server
        i += 2 if arg in PYTHON_OPTIONS_WITH_ARG else 1
    return None


def _module_server(module: str, rest: list[str]) -> ServerCommand | None:
    runtime = SERVERS.get(module)
    return ServerCommand(runtime, tuple(rest)) if runtime else None


def _shell(args: list[str], *, depth: int) -> ServerCommand | None:
    """`sh -c SCRIPT [$0 $1 ...]`: read the script; `"$@"` in it runs the positional args."""
    if depth >= MAX_SHELL_DEPTH:
        return None
    for i, arg in enumerate(args):
        if arg.startswith("-") and not arg.startswith("--") and "c" in arg[1:]:
            if i + 1 >= len(args):
                return None
            script = args[i + 1]
            found = find_server(_shell_words(script), depth=depth + 1)
            if found is None and "$@" in script:
                found = find_server(args[i + 3 :], depth=depth + 1)
            return found
        if not arg.startswith("-"):
            return None  # `sh script.sh`: the script's content is unknown
    return None


def effective_command(container: Obj, image: ImageConfig | None) -> list[str] | None:
    """What the container runs: `command` replaces the image Entrypoint, `args` its Cmd.

    With `command` set and no `args`, the image's Cmd is ignored too (Kubernetes semantics).
    None when the image is needed but unknown.
    """
    command, args = container.get("command"), container.get("args")
    if command:
        return [*command, *(args or [])]
    if image is None:
        return None
    return [*(image["entrypoint"] or []), *(args if args else image["cmd"] or [])]


def detect(
    container: Obj, image: ImageConfig | None
) -> tuple[Runtime, Source, ServerCommand | None] | None:
    """Rule 4 for one app container: its command/args, else the image's label or command.

    An explicit `command` decides on its own: the image's label applies only to containers
    that do not set `command`, since one image often serves both a web and a worker process.
    """
    command, args = container.get("command"), container.get("args")
    own = [*(command or []), *(args or [])]
    server = find_server(own) if own else None
    if server is not None:
        return server.runtime, "command", server
    if command or image is None:
        return None
    label = image["labels"].get(keys.IMAGE_RUNTIME_LABEL, "").strip().lower()
    argv = effective_command(container, image) or []
    server = find_server(argv)
    if label in RUNTIMES:
        return label, "image-label", server
    if server is not None:
        return server.runtime, "image-command", server
    return None


def containers_of(pod: Obj) -> list[tuple[Obj, bool]]:
    """(container, is_init) for every container of the pod, init containers first."""
    spec = pod.get("spec") or {}
    inits = [(c, True) for c in spec.get("initContainers") or [] if isinstance(c, dict)]
    apps = [(c, False) for c in spec.get("containers") or [] if isinstance(c, dict)]
    return inits + apps


def default_container(pod: Obj, annotations: Mapping[str, Any]) -> tuple[Obj | None, list[str]]:
    """The container named by kubectl's default-container annotation, else the first one."""
    apps = [c for c, init in containers_of(pod) if not init]
    wanted = annotations.get(keys.DEFAULT_CONTAINER)
    if wanted:
        for c in apps:
            if c.get("name") == wanted:
                return c, []
        first = apps[0].get("name") if apps else None
        return (apps[0] if apps else None), [
            f"{keys.DEFAULT_CONTAINER} names missing container {wanted!r}; using {first!r}"
        ]
    return (apps[0] if apps else None), []


def images_to_resolve(pod: Obj) -> list[str]:
    """Images whose registry metadata could decide detection (rule 4 only)."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    if (
        opted_out(annotations)
        or annotations.get(keys.CONTAINERS)
        or _runtime_annotation(annotations)
    ):
        return []
    wanted: list[str] = []
    for container, init in containers_of(pod):
        if init or container.get("command") or not isinstance(container.get("image"), str):
            continue
        if container.get("args") and find_server(list(container["args"])) is not None:
            continue
        if container["image"] not in wanted:
            wanted.append(container["image"])
    return wanted


def opted_out(annotations: Mapping[str, Any]) -> bool:
    """Rule 1: `concurrency-injector.io/inject: "false"`."""
    return str(annotations.get(keys.INJECT, "")).strip().lower() == "false"


def _runtime_annotation(annotations: Mapping[str, Any]) -> str:
    return str(annotations.get(keys.RUNTIME, "")).strip().lower()


def select_targets(pod: Obj, images: Mapping[str, ImageConfig]) -> tuple[list[Target], list[str]]:
    """Apply the SPEC's rules in order; returns the targets and warnings."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    if opted_out(annotations):
        return [], []
    warnings: list[str] = []
    runtime_value = _runtime_annotation(annotations)
    runtime: Runtime | None = None
    if runtime_value:
        if runtime_value in RUNTIMES:
            runtime = runtime_value
        else:
            warnings.append(
                f"{keys.RUNTIME}={runtime_value!r} is not gunicorn, uvicorn or python; ignored"
            )

    listed = annotations.get(keys.CONTAINERS)
    if listed:
        return _listed(pod, str(listed), runtime, images, warnings)
    if runtime is not None:
        container, more = default_container(pod, annotations)
        warnings += more
        if container is None:
            return [], warnings
        server = find_server([*(container.get("command") or []), *(container.get("args") or [])])
        return [Target(str(container.get("name")), False, runtime, "annotation", server)], warnings

    targets = []
    for container, init in containers_of(pod):
        if init:
            continue
        found = detect(container, images.get(container.get("image", "")))
        if found is not None:
            targets.append(Target(str(container.get("name")), False, *found))
    return targets, warnings


def _listed(
    pod: Obj,
    listed: str,
    runtime: Runtime | None,
    images: Mapping[str, ImageConfig],
    warnings: list[str],
) -> tuple[list[Target], list[str]]:
    names = [n.strip() for n in listed.split(",") if n.strip()]
    by_name = {c.get("name"): (c, init) for c, init in containers_of(pod)}
    targets = []
    for name in dict.fromkeys(names):
        if name not in by_name:
            warnings.append(
                f"{keys.CONTAINERS} lists {name!r}, which is not a container of this pod"
            )
            continue
        container, init = by_name[name]
        found = detect(container, images.get(container.get("image", "")))
        server = found[2] if found else None
        chosen: Runtime = runtime or (found[0] if found else "python")
        targets.append(Target(name, init, chosen, "annotation", server))
    return targets, warnings
