"""Command-line flags that decide a worker count instead of the variable, and their warnings. Pure.

Each profile's flags are compiled once (`FlagReader`, built with the profile) so that a command
line is read in one pass however many flags the profile knows, instead of once per flag.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from webhook.core.commands import ServerCommand
    from webhook.core.profiles import Profile

MISSING_VALUE = "?"  # a flag last on the line, its value missing


class FlagReader:
    """Reads the values of a fixed set of options from an argv in one pass.

    An option is given as `-w 4`, `-w4`, `--workers 4` or `--workers=4`; the first occurrence
    counts. Every word is looked at, including words that are another option's value, as a
    program's own parser would not know which options take values.
    """

    def __init__(self, flags: Iterable[str]) -> None:
        self.flags = frozenset(flags)
        self.short = tuple(f for f in self.flags if not f.startswith("--"))

    def read(self, args: tuple[str, ...]) -> dict[str, str]:
        """Each known flag present in `args`, with its value."""
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
    name: str, profile: Profile, server: ServerCommand | None, env: Mapping[str, str]
) -> list[str]:
    """Flags and variables that defeat the worker variable, or multiply it (threads > 1)."""
    warnings = []
    if server is not None:
        warnings += _flags(name, profile, server.args, where="args")
    for variable in profile.flag_env:
        if variable in env:
            try:
                words = shlex.split(env[variable])
            except ValueError:
                words = env[variable].split()
            warnings += _flags(name, profile, tuple(words), where=variable)
    target = profile.env[0] if profile.env else "the worker count"
    for variable in profile.override_env:
        if variable in env:
            warnings.append(
                f"container {name!r}: {variable}={env[variable][:20]} overrides {target}"
            )
    return warnings


def _flags(name: str, profile: Profile, args: tuple[str, ...], *, where: str) -> list[str]:
    warnings: list[str] = []
    if not args:
        return warnings
    found = profile.flag_reader.read(args)
    target = profile.env[0] if profile.env else "the worker count"
    for flag in profile.flags if profile.env else ():  # without a variable, a flag is the way
        value = found.get(flag)
        if value is not None:
            shown = next((f for f in profile.flags if f.startswith("--")), flag)
            warnings.append(
                f"container {name!r}: {shown} {value[:20]} in {where} overrides {target}"
            )
            break
    for flag in profile.config_flags:
        value = found.get(flag)
        if value is not None:
            warnings.append(
                f"container {name!r}: config file {value[:40]} ({flag}) may set the worker count"
            )
            break
    for flag in profile.solo_flags:
        if flag in args:
            warnings.append(
                f"container {name!r}: {flag} in {where} runs one process; {target} unused"
            )
    for flag in profile.threads_flags:
        threads = found.get(flag)
        if threads is not None and (not threads.isdigit() or int(threads) > 1):
            warnings.append(
                f"container {name!r}: {profile.name} {flag} {threads[:20]} in {where} runs "
                f"{target} x threads at once"
            )
    return warnings
