"""Runtime and application profiles: data, loaded and checked once (SPEC "Profiles").

Which programs run Python servers, and which variable each reads for its worker count, grows
with the ecosystem: it lives in `profiles.yaml` beside this module, not in code. Users add or
replace profiles with a server setting; a bad profile stops start-up with a message naming it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from typing import Any, Literal

import yaml

from webhook.core.flags import FlagReader

Kind = Literal["server", "worker", "app"]
KINDS: tuple[Kind, ...] = ("server", "worker", "app")
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
FLAG = re.compile(r"^--?[A-Za-z0-9][A-Za-z0-9_-]*$")
# Fields that are lists of strings, and what each string must look like.
STRING_LISTS: dict[str, re.Pattern[str] | None] = {
    "executables": None,
    "modules": None,
    "subcommands": None,
    "images": None,
    "env": ENV_NAME,
    "flags": FLAG,
    "flagEnv": ENV_NAME,
    "overrideEnv": ENV_NAME,
    "configFlags": FLAG,
    "threadsFlags": FLAG,
    "soloFlags": FLAG,
}
FIELDS = frozenset(
    {
        *STRING_LISTS,
        "name",
        "description",
        "kind",
        "launchers",
        "hint",
        "cliWorkersOnly",
        "defaultWorkers",
    }
)
CPU_COUNT = "cpu_count"  # a default worker count that is the CPUs the process sees (the node's)
GENERIC = "python"  # the runtime an annotation names for an app that reads WEB_CONCURRENCY


class ProfileError(ValueError):
    """A profile is malformed; the message names the profile and its source."""


@dataclass(frozen=True)
class Profile:
    """One runtime or application: how it is recognised and what it reads."""

    name: str
    kind: Kind
    env: tuple[str, ...]
    executables: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    # `celery worker`: the profile applies only when one of these is the first operand.
    subcommands: tuple[str, ...] = ()
    # Programs that start this server through a subcommand: (program, subcommand, ...).
    launchers: tuple[tuple[str, ...], ...] = ()
    images: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    flag_env: tuple[str, ...] = ()
    override_env: tuple[str, ...] = ()
    config_flags: tuple[str, ...] = ()
    threads_flags: tuple[str, ...] = ()
    # Flags that make the runtime run a single process whatever its worker variable says.
    solo_flags: tuple[str, ...] = ()
    cli_workers_only: bool = False
    # The worker count it runs with when nothing sets one: a number, CPU_COUNT, or unknown.
    default_workers: int | str | None = None
    hint: str = ""
    description: str = ""

    @cached_property
    def flag_reader(self) -> FlagReader:
        """Its flags, compiled once: every flag the warnings and the policy look for."""
        return FlagReader((*self.flags, *self.config_flags, *self.threads_flags))


@dataclass(frozen=True)
class ProfileSet:
    """The active profiles, indexed the ways detection looks them up."""

    profiles: Mapping[str, Profile]
    by_executable: Mapping[str, Profile] = field(default_factory=dict)
    by_module: Mapping[str, Profile] = field(default_factory=dict)
    by_launcher: Mapping[str, tuple[tuple[tuple[str, ...], Profile], ...]] = field(
        default_factory=dict
    )
    by_image_name: Mapping[str, Profile] = field(default_factory=dict)
    # What each command line read with these profiles runs (webhook/core/commands.py).
    commands_read: dict[tuple[str, ...], Any] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def of(cls, profiles: Iterable[Profile]) -> ProfileSet:
        named = {p.name: p for p in profiles}
        executables: dict[str, Profile] = {}
        modules: dict[str, Profile] = {}
        launchers: dict[str, list[tuple[tuple[str, ...], Profile]]] = {}
        images: dict[str, Profile] = {}
        for p in named.values():
            executables.update(dict.fromkeys(p.executables, p))
            modules.update(dict.fromkeys(p.modules, p))
            for launcher in p.launchers:
                launchers.setdefault(launcher[0], []).append((launcher[1:], p))
            for image in p.images:
                images.setdefault(image, p)  # the first profile that names an image has it
            _ = p.flag_reader  # compiled now, once, not on some pod's review
        return cls(
            named,
            executables,
            modules,
            {k: tuple(sorted(v, key=lambda e: -len(e[0]))) for k, v in launchers.items()},
            images,
        )

    def get(self, name: str) -> Profile | None:
        return self.profiles.get(name)

    def names(self) -> list[str]:
        return list(self.profiles)

    def by_image(self, repository: str) -> Profile | None:
        """The profile whose image list names this repository (registry and tag removed)."""
        return self.by_image_name.get(repository)


GENERIC_PROFILE = Profile(GENERIC, "app", ("WEB_CONCURRENCY",))


def parse_profiles(data: Any, *, source: str) -> list[Profile]:
    """Profiles from decoded YAML/JSON: a list, or a mapping with a `profiles` list."""
    if isinstance(data, dict) and set(data) == {"profiles"}:
        data = data["profiles"]
    if not isinstance(data, list):
        raise ProfileError(f"{source}: expected a list of profiles")
    parsed = []
    for i, item in enumerate(data):
        name = item.get("name") if isinstance(item, dict) else None
        where = f"{source}: profile {name!r}" if isinstance(name, str) else f"{source}: #{i + 1}"
        parsed.append(_profile(item, where))
    return parsed


def _profile(item: Any, where: str) -> Profile:
    if not isinstance(item, dict):
        raise ProfileError(f"{where}: expected a mapping")
    unknown = sorted(set(item) - FIELDS)
    if unknown:
        raise ProfileError(f"{where}: unknown field(s) {', '.join(unknown)}")
    name = item.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise ProfileError(f"{where}: name must be lowercase letters, digits, '.', '_' or '-'")
    kind = item.get("kind", "server")
    if kind not in KINDS:
        raise ProfileError(f"{where}: kind must be one of {', '.join(KINDS)}")
    if "env" not in item:
        raise ProfileError(f"{where}: env is required (an empty list: reads no variable)")
    lists: dict[str, tuple[str, ...]] = {}
    for key, pattern in STRING_LISTS.items():
        value = item.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ProfileError(f"{where}: {key} must be a list of strings")
        bad = [v for v in value if pattern is not None and not pattern.match(v)]
        if bad:
            raise ProfileError(f"{where}: {key} has invalid entries {bad}")
        lists[key] = tuple(value)
    launchers = item.get("launchers", [])
    if not isinstance(launchers, list) or not all(
        isinstance(entry, list) and len(entry) >= 2 and all(isinstance(w, str) and w for w in entry)
        for entry in launchers
    ):
        raise ProfileError(f"{where}: launchers must be lists of a program and its subcommand(s)")
    for key in ("hint", "description"):
        if not isinstance(item.get(key, ""), str):
            raise ProfileError(f"{where}: {key} must be a string")
    if not isinstance(item.get("cliWorkersOnly", False), bool):
        raise ProfileError(f"{where}: cliWorkersOnly must be true or false")
    default = item.get("defaultWorkers")
    if (
        default is not None
        and default != CPU_COUNT
        and (not isinstance(default, int) or isinstance(default, bool) or default < 1)
    ):
        raise ProfileError(f"{where}: defaultWorkers must be a number above 0 or {CPU_COUNT}")
    return Profile(
        name=name,
        kind=kind,
        env=lists["env"],
        executables=lists["executables"],
        modules=lists["modules"],
        subcommands=lists["subcommands"],
        launchers=tuple(tuple(entry) for entry in launchers),
        images=lists["images"],
        flags=lists["flags"],
        flag_env=lists["flagEnv"],
        override_env=lists["overrideEnv"],
        config_flags=lists["configFlags"],
        threads_flags=lists["threadsFlags"],
        solo_flags=lists["soloFlags"],
        cli_workers_only=item.get("cliWorkersOnly", False),
        default_workers=default,
        hint=item.get("hint", ""),
        description=item.get("description", ""),
    )


@functools.cache
def builtin() -> tuple[Profile, ...]:
    """The profiles shipped in the package."""
    text = resources.files("webhook.core").joinpath("profiles.yaml").read_text(encoding="utf-8")
    return tuple(parse_profiles(yaml.safe_load(text), source="profiles.yaml"))


@functools.lru_cache(maxsize=16)
def active(extra: str = "", disabled: tuple[str, ...] = ()) -> ProfileSet:
    """Built-in profiles, replaced or extended by `extra` (YAML or JSON), less `disabled`.

    Raises ProfileError naming the bad profile, or a disabled name that no profile has.
    """
    profiles = {p.name: p for p in builtin()}
    if extra.strip():
        try:
            data = yaml.safe_load(extra)
        except yaml.YAMLError as exc:
            raise ProfileError(f"extra profiles are not valid YAML or JSON: {exc}") from None
        for p in parse_profiles(data, source="extra profiles"):
            profiles[p.name] = p
    unknown = [name for name in disabled if name not in profiles]
    if unknown:
        raise ProfileError(f"disabled profile(s) {', '.join(unknown)} do not exist")
    return ProfileSet.of(p for name, p in profiles.items() if name not in disabled)
