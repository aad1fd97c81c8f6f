"""Command-line flags that decide a worker count instead of the variable, and their warnings. Pure.

Each profile's flags are compiled once (`FlagReader`, built with the profile) so that a command
line is read in one pass however many flags the profile knows, instead of once per flag.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from webhook.core.commands import ServerCommand
    from webhook.core.profiles import Profile

MISSING_VALUE = "?"  # a flag last on the line, its value missing
MAX_LINES_READ = 4096  # argv answers remembered per profile


class FlagReader:
    """Reads the values of a fixed set of options from an argv in one pass.

    An option is given as `-w 4`, `-w4`, `--workers 4` or `--workers=4`; the first occurrence
    counts. Every word is looked at, including words that are another option's value, as a
    program's own parser would not know which options take values.
    """

    def __init__(self, flags: Iterable[str]) -> None:
        self.flags = frozenset(flags)
        self.short = tuple(f for f in self.flags if not f.startswith("--"))
        # Answers by argv: a target's line is read for its warnings, threads and flags alike,
        # and the same few lines come back in pod after pod (read-only, shared).
        self._read: dict[tuple[str, ...], Mapping[str, str]] = {}

    def read(self, args: tuple[str, ...]) -> Mapping[str, str]:
        """Each known flag present in `args`, with its value."""
        found = self._read.get(args)
        if found is None:
            if len(self._read) >= MAX_LINES_READ:
                self._read.clear()  # a bound, not an eviction policy
            found = self._read[args] = self._scan(args)
        return found

    def _scan(self, args: tuple[str, ...]) -> dict[str, str]:
        found: dict[str, str] = {}
        if not self.flags:
            return found
        for i, arg in enumerate(args):
            if not arg.startswith("-"):
                continue  # every flag starts with a dash
            if arg in self.flags and arg not in found:
                found[arg] = args[i + 1] if i + 1 < len(args) else MISSING_VALUE
            name, equals, value = arg.partition("=")
            if equals and name in self.flags and name not in found:
                found[name] = value
            if arg.startswith("--"):
                continue
            for flag in self.short:
                if flag not in found and len(arg) > len(flag) and arg.startswith(flag):
                    found[flag] = arg[len(flag) :]
        return found


def sets_workers_itself(profile: Profile, server: ServerCommand | None) -> bool:
    """Whether the command line already gives the worker count by a flag."""
    if server is None or not profile.flags:
        return False
    found = profile.flag_reader.read(server.args)
    return any(flag in found for flag in profile.flags)


def flag_warnings(
    name: str,
    profile: Profile,
    server: ServerCommand | None,
    env: Mapping[str, str],
    *,
    cpu: Decimal | None = None,
) -> list[str]:
    """Flags and variables that defeat the worker variable, and explicit counts above `cpu`.

    A runtime that reads no variable is warned about its worker flag only when the count is
    above the CPU limit: there the flag is the right way to set it.
    """
    warnings = []
    if server is not None:
        warnings += _flags(name, profile, server.args, where="args", cpu=cpu)
    for variable in profile.flag_env:
        if variable in env:
            warnings += _flags(name, profile, _words(env[variable]), where=variable, cpu=cpu)
    target = profile.env[0] if profile.env else "the worker count"
    for variable in profile.override_env:
        if variable in env:
            warnings.append(
                f"container {name!r}: {variable}={env[variable][:20]} overrides {target}"
                + _above(env[variable], cpu)
            )
    return warnings


def kept_warnings(
    name: str,
    profile: Profile,
    kept: tuple[str, ...],
    env: Mapping[str, str],
    *,
    cpu: Decimal | None,
) -> list[str]:
    """A worker variable the pod sets itself (kept: the webhook never replaces it) to a count
    above the CPU limit: the same finding as a worker flag above it."""
    warnings = []
    for variable in profile.env:
        count = env.get(variable, "").strip() if variable in kept else ""
        above = _above(count, cpu)
        if above:
            warnings.append(f"container {name!r}: {variable}={count[:20]} in env is{above[1:]}")
    return warnings


def threads_of(
    profile: Profile, server: ServerCommand | None, env: Mapping[str, str]
) -> str | None:
    """The thread count per worker a command line (or its flag variable) sets, if any.

    Recorded in the status, not warned about: the project's throttle lab measured that threads
    waiting on the GIL use no CPU quota, and that a sync app waiting on I/O served 238 req/s
    with 8 threads against 42 with one, at one CPU.
    """
    lines = [server.args] if server is not None else []
    lines += [_words(env[v]) for v in profile.flag_env if v in env]
    for args in lines:
        found = profile.flag_reader.read(args)
        for flag in profile.threads_flags:
            if flag in found:
                return found[flag][:20]
    return None


def _words(value: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(value))
    except ValueError:
        return tuple(value.split())


def _above(value: str, cpu: Decimal | None) -> str:
    """`, above the CPU limit (N)` when `value` is a worker count above `cpu`, else nothing."""
    if cpu is None or not value.isdigit() or int(value) <= cpu:
        return ""
    return f", above the CPU limit ({format(cpu.normalize(), 'f')})"


def _flags(
    name: str, profile: Profile, args: tuple[str, ...], *, where: str, cpu: Decimal | None
) -> list[str]:
    warnings: list[str] = []
    if not args:
        return warnings
    found = profile.flag_reader.read(args)
    target = profile.env[0] if profile.env else "the worker count"
    flag = next((f for f in profile.flags if f in found), None)
    if flag is not None:
        value = found[flag]
        shown = next((f for f in profile.flags if f.startswith("--")), flag)
        above = _above(value, cpu)
        if profile.env:  # the flag wins over the variable
            warnings.append(
                f"container {name!r}: {shown} {value[:20]} in {where} overrides {target}{above}"
            )
        elif above:  # without a variable the flag is the way, unless it asks for too many
            warnings.append(f"container {name!r}: {shown} {value[:20]} in {where} is{above[1:]}")
    for flag in profile.config_flags:
        config = found.get(flag)
        if config is not None:
            warnings.append(
                f"container {name!r}: config file {config[:40]} ({flag}) may set the worker count"
            )
            break
    for flag in profile.solo_flags:
        if flag in args:
            warnings.append(
                f"container {name!r}: {flag} in {where} runs one process; {target} unused"
            )
    return warnings
