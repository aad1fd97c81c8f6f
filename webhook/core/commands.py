"""Which containers run Python servers and workers (SPEC "Which containers are targets"). Pure.

A command is read the way exec or a shell would start it. In an exec-form argv every word is
one argument (`&&` too); a shell script (`sh -c`) is split into commands at its operators and
keywords. The first word of a command, after wrappers such as `exec`, `env -u X`, `gosu user`,
`tini --`, `uv run`, `doppler run --`, is what runs; a profile (webhook/core/profiles.yaml) names it
by executable, `python -m` module, or launcher subcommand (`airflow webserver`). So `pip
install gunicorn && celery worker` runs Celery, and `sh -c "cd /app && exec gunicorn app"` runs
gunicorn. A `case "$1"` whose branches run different servers is read only when `$1` is known.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
import shlex
from dataclasses import dataclass
from typing import cast

from webhook.core.profiles import ProfileSet
from webhook.core.types import ImageConfig, Obj

PYTHON = re.compile(r"^python(\d+(\.\d+)?)?$")
SHELLS = frozenset({"sh", "bash", "dash", "ash", "zsh", "ksh", "busybox"})
# Programs that run the rest of their command line: skip them, their options and operands
# (`gosu app`, `chamber exec svc --`, `env -u FOO`) to find what really runs.
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
        "ionice",
        "chpst",
        "s6-setuidgid",
        "runuser",
        "time",
        "stdbuf",
        "timeout",
        "newrelic-admin",
        "scout-apm",
        "sentry-run",
        "watchmedo",
        "honcho",
    }
)
# Runners that start a command through their `run` subcommand.
RUNNERS = frozenset(
    {"poetry", "uv", "pipenv", "pdm", "hatch", "rye", "pixi", "conda", "micromamba"}
)
RUN_SUBCOMMANDS = frozenset({"run", "run-program", "exec"})
# How far past a wrapper its options and operands may reach before the command it runs.
MAX_WRAPPER_OPERANDS = 6
SEPARATORS = frozenset({"&&", "||", ";", "|", "&", "(", ")", ";;", "{", "}"})
# Shell words that start a command without being one.
KEYWORDS = frozenset({"then", "do", "else", "elif", "if", "while", "until", "!", "fi", "done"})
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# Scripts that, by the common convention, end with `exec "$@"`: what follows them runs.
ENTRYPOINTS = re.compile(r"^(docker-)?entrypoint(\.sh)?$|^(docker-)?entry(\.sh)?$")
# Python options that take a separate argument (`python -X importtime -m gunicorn`).
PYTHON_OPTIONS_WITH_ARG = frozenset({"-X", "-W", "-Q"})
POSITIONAL_1 = frozenset({"$1", "${1}"})
MAX_SHELL_DEPTH = 3
# Command lines remembered per profile set (each a few hundred bytes at most).
MAX_COMMANDS_READ = 4096


@dataclass(frozen=True)
class ServerCommand:
    """A profiled server or worker found in a command line, with its own arguments."""

    runtime: str
    args: tuple[str, ...]


@dataclass(frozen=True)
class Branches:
    """A script that runs one of several servers, depending on what it is given."""

    runtimes: tuple[str, ...]


Found = ServerCommand | Branches | None


def find_server(argv: list[str], profiles: ProfileSet) -> ServerCommand | None:
    """The profiled server that an exec-form argv starts, if one is known for sure."""
    found = read_command(argv, profiles)
    return found if isinstance(found, ServerCommand) else None


def read_command(argv: list[str], profiles: ProfileSet) -> Found:
    """What an exec-form argv starts: a server, a choice of servers, or nothing known.

    Remembered per profile set: the same few command lines come back in pod after pod, and
    the answer (frozen data) depends on nothing else.
    """
    key = tuple(argv)
    known = profiles.commands_read
    if key in known:
        return cast(Found, known[key])
    found = _Reader(profiles, 0).command(list(argv))
    if len(known) >= MAX_COMMANDS_READ:
        known.clear()  # a bound, not an eviction policy: the common lines come right back
    known[key] = found
    return found


@dataclass(frozen=True)
class _Reader:
    profiles: ProfileSet
    depth: int

    def command(self, tokens: list[str]) -> Found:
        """One simple command: wrappers, assignments and runners, then what runs."""
        i = 0
        while i < len(tokens):
            word = tokens[i]
            name = posixpath.basename(word)
            if ASSIGNMENT.match(word):
                i += 1
                continue
            profile = self.profiles.by_executable.get(name)
            if profile is not None:
                found = self._profiled(profile.name, profile.subcommands, tokens[i + 1 :])
                if found is not None:
                    return found
            if name in self.profiles.by_launcher:
                found = self._launched(name, tokens[i + 1 :])
                if found is not None:
                    return found
            if PYTHON.match(name):
                return self._python(tokens[i + 1 :])
            if name in SHELLS:
                return self._shell(tokens[i + 1 :])
            if name in WRAPPERS:
                i = self._past_operands(tokens, i + 1)
            elif name in RUNNERS and i + 1 < len(tokens) and tokens[i + 1] in RUN_SUBCOMMANDS:
                i = self._past_operands(tokens, i + 2)
            elif ENTRYPOINTS.match(name):
                i += 1  # `docker-entrypoint.sh gunicorn ...`: the script execs "$@"
            else:
                return None
        return None

    def _profiled(self, runtime: str, subcommands: tuple[str, ...], rest: list[str]) -> Found:
        if not subcommands:
            return ServerCommand(runtime, tuple(rest))
        operands = [w for w in rest if not w.startswith("-")]
        # `celery -A proj worker`: the subcommand is the first operand that names one.
        if any(w in subcommands for w in operands[:3]):
            return ServerCommand(runtime, tuple(rest))
        return None

    def _launched(self, program: str, rest: list[str]) -> Found:
        operands = [w for w in rest if not w.startswith("-")]
        for subcommand, profile in self.profiles.by_launcher[program]:
            if tuple(operands[: len(subcommand)]) == subcommand:
                return ServerCommand(profile.name, tuple(rest))
        return None

    def _past_operands(self, tokens: list[str], i: int) -> int:
        """Past a wrapper's options and operands, to the first word that runs something."""
        limit = min(len(tokens), i + MAX_WRAPPER_OPERANDS)
        for j in range(i, limit):
            word = tokens[j]
            if word == "--":
                return j + 1
            if not word.startswith("-") and self._runs_something(word):
                return j
        return limit if limit < len(tokens) else len(tokens)

    def _runs_something(self, word: str) -> bool:
        name = posixpath.basename(word)
        return bool(
            name in self.profiles.by_executable
            or name in self.profiles.by_launcher
            or PYTHON.match(name)
            or name in SHELLS
            or name in WRAPPERS
            or name in RUNNERS
            or ENTRYPOINTS.match(name)
        )

    def _python(self, args: list[str]) -> Found:
        i = 0
        while i < len(args):
            arg = args[i]
            if arg == "-m" or (arg.startswith("-m") and len(arg) > 2):
                module = (args[i + 1] if i + 1 < len(args) else "") if arg == "-m" else arg[2:]
                rest = args[i + 2 :] if arg == "-m" else args[i + 1 :]
                profile = self.profiles.by_module.get(module)
                if profile is not None:
                    return self._profiled(profile.name, profile.subcommands, rest)
                if module in self.profiles.by_launcher:
                    return self._launched(module, rest)
                return None
            if not arg.startswith("-") or arg == "-c":
                return None  # a script or inline code: not a known server
            i += 2 if arg in PYTHON_OPTIONS_WITH_ARG else 1
        return None

    def _shell(self, args: list[str]) -> Found:
        """`sh -c SCRIPT [$0 $1 ...]`: read the script; `"$@"` in it runs the positional args."""
        if self.depth >= MAX_SHELL_DEPTH:
            return None
        for i, arg in enumerate(args):
            if arg.startswith("-") and not arg.startswith("--") and "c" in arg[1:]:
                if i + 1 >= len(args):
                    return None
                positional = args[i + 3 :]
                deeper = _Reader(self.profiles, self.depth + 1)
                return deeper.script(_shell_words(args[i + 1]), positional)
            if not arg.startswith("-"):
                return None  # `sh script.sh`: the script's content is unknown
        return None

    def script(self, words: list[str], positional: list[str]) -> Found:
        """A shell script's words: the first command that runs a server decides.

        `"$@"` runs the positional parameters; a `case` on `$1` picks its branch when `$1`
        is known, and otherwise is only read when every branch runs the same server.
        """
        i = 0
        while i < len(words):
            if words[i] == "case":
                found, i = self._case(words, i, positional)
            else:
                end = i
                while end < len(words) and words[end] not in SEPARATORS and words[end] != "case":
                    end += 1
                found = self._simple(words[i:end], positional)
                i = end + 1 if end < len(words) and words[end] != "case" else end
            if found is not None:
                return found
        return None

    def _simple(self, tokens: list[str], positional: list[str]) -> Found:
        while tokens and tokens[0] in KEYWORDS:
            tokens = tokens[1:]
        if not tokens:
            return None
        expanded: list[str] = []
        for word in tokens:
            expanded += positional if word in ("$@", "${@}", "$*") else [word]
        return self.command(expanded)

    def _case(self, words: list[str], i: int, positional: list[str]) -> tuple[Found, int]:
        """`case WORD in PATTERN) COMMANDS ;; ... esac` -> (what it runs, index after esac)."""
        subject = words[i + 1] if i + 1 < len(words) else ""
        j = i + 3 if i + 2 < len(words) and words[i + 2] == "in" else i + 2
        branches: list[tuple[list[str], list[str]]] = []
        while j < len(words) and words[j] != "esac":
            patterns: list[str] = []
            while j < len(words) and words[j] != ")":
                if words[j] not in ("(", "|"):
                    patterns.append(words[j])
                j += 1
            j += 1  # past ")"
            body_start = j
            while j < len(words) and words[j] not in (";;", "esac"):
                j += 1
            branches.append((patterns, words[body_start:j]))
            if j < len(words) and words[j] == ";;":
                j += 1
        end = j + 1
        value = positional[0] if subject in POSITIONAL_1 and positional else None
        if value is not None:
            for patterns, body in branches:
                if any(fnmatch.fnmatchcase(value, p) for p in patterns):
                    return self.script(body, positional), end
            return None, end
        results = [self.script(body, positional) for _, body in branches]
        runtimes = sorted({r for found in results for r in _runtimes_of(found)})
        if not runtimes:
            return None, end
        if len(runtimes) == 1 and all(isinstance(f, ServerCommand) for f in results):
            return results[0], end
        return Branches(tuple(runtimes)), end


def _runtimes_of(found: Found) -> tuple[str, ...]:
    if isinstance(found, ServerCommand):
        return (found.runtime,)
    return found.runtimes if isinstance(found, Branches) else ()


def _shell_words(script: str) -> list[str]:
    script = script.replace("\\\n", " ")  # a backslash-newline joins lines
    lexer = shlex.shlex(script.replace("\n", " ; "), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError:  # unbalanced quotes: the shell would fail too; read it word by word
        return script.split()


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
