"""Reconcile a target's `env` array with the values it should get. Pure.

The values were decided before (webhook/core/decision.py); here they meet what the user wrote.
A user's `env` entry, or a key of a ConfigMap behind `envFrom`, wins (SPEC "Never replace what
the user set"); entries an earlier pass wrote are recognised from the status annotation and
updated or removed; every change is logged in the array's `ArrayEdit`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from webhook.core import keys
from webhook.core.options import EnvFromUnknown
from webhook.core.patch import ArrayEdit
from webhook.core.types import ImageConfig, Obj

CPU_LIMIT_MARK = "limits.cpu"  # how the status annotation records the downward-API CPU_LIMIT


@dataclass(slots=True)  # built on every review: not frozen, whose setattr costs ~1 µs a build
class EnvContext:
    """What the pod says about its env as a whole."""

    previous: Mapping[str, Obj]  # the status an earlier pass wrote, per container
    override: bool  # the pod lets the webhook replace user values
    configmaps: Mapping[str, frozenset[str]]  # keys of the ConfigMaps that could be read
    env_from_unknown: EnvFromUnknown

    def ours(self, container_name: str) -> Mapping[str, str]:
        """The values an earlier pass set in this container."""
        return (self.previous.get(container_name) or {}).get("set") or {}


@dataclass(slots=True)  # built on every review: not frozen, whose setattr costs ~1 µs a build
class Reconciled:
    """What the env array ended up with."""

    applied: dict[str, str]  # set (or kept as set by an earlier pass) by the webhook
    kept: tuple[str, ...]  # wanted, but the user's own value stays
    unread: dict[str, list[str]]  # wanted names an unread envFrom source may set


def reconcile(
    container: Obj,
    env: ArrayEdit,
    desired: Mapping[str, str],
    *,
    worker_names: frozenset[str],
    ctx: EnvContext,
) -> Reconciled:
    """Write `desired` into `env` where the user has not set it; undo our stale entries."""
    name = str(container.get("name"))
    ours = ctx.ours(name)
    applied: dict[str, str] = {}
    kept: list[str] = []
    unread: dict[str, list[str]] = {}
    for variable in dict.fromkeys([*desired, *keys.FACTS, *ours]):
        index = _index(env.items, variable)
        mine = index is not None and _is_own(env.items[index], ours, name)
        owned, sources = _user_owns(container, variable, index, mine=mine, ctx=ctx)
        if sources and variable in desired:
            unread[variable] = sources
        # A fact is set over an unread source; a worker variable only if the cluster says so.
        blocked = owned or bool(
            sources and variable in worker_names and ctx.env_from_unknown == "skip"
        )
        if variable not in desired or blocked:
            if mine and index is not None:
                env.delete(index)
            if owned and variable in desired:
                kept.append(variable)
            continue
        entry = entry_for(variable, desired[variable], name)
        if index is None:
            env.append(entry)
        else:
            env.replace(index, entry)
        applied[variable] = desired[variable]
    return Reconciled(applied, tuple(kept), unread)


def remove_own(env: ArrayEdit, container_name: str, ctx: EnvContext) -> None:
    """A target that lost its CPU limit since an earlier pass loses the env set then."""
    ours = ctx.ours(container_name)
    if not ours:
        return
    for index in reversed(range(len(env.items))):
        if _is_own(env.items[index], ours, container_name):
            env.delete(index)


def entry_for(name: str, value: str, container_name: str) -> Obj:
    """The env entry for a value; CPU_LIMIT comes from the downward API."""
    if value == CPU_LIMIT_MARK:
        return {
            "name": keys.CPU_LIMIT,
            "valueFrom": {
                "resourceFieldRef": {
                    "containerName": container_name,
                    "resource": "limits.cpu",
                    "divisor": "1",
                }
            },
        }
    return {"name": name, "value": value}


def unread_warnings(
    name: str, unread: Mapping[str, list[str]], applied: Mapping[str, str]
) -> list[str]:
    """One warning per container naming every envFrom source that was not read."""
    if not unread:
        return []
    sources = ", ".join(dict.fromkeys(s for found in unread.values() for s in found))
    skipped = [n for n in unread if n not in applied]
    replaced = [n for n in unread if n in applied]
    said = []
    if skipped:
        said.append(f"{', '.join(skipped)} not set")
    if replaced:
        said.append(f"{', '.join(replaced)} set over it")
    return [f"container {name!r}: {sources} not read; {'; '.join(said)}"]


def plain_env(container: Obj, image: ImageConfig | None) -> dict[str, str]:
    """Literal env values the container will see (image Env, then the container's `value`s)."""
    env: dict[str, str] = {}
    for item in image["env"] if image else []:
        name, _, value = str(item).partition("=")
        env[name] = value
    for entry in container.get("env") or []:
        if "value" in entry:
            env[str(entry.get("name"))] = str(entry["value"])
    return env


def _index(items: list[Obj], name: str) -> int | None:
    for i, entry in enumerate(items):
        if entry.get("name") == name:
            return i
    return None


def _user_owns(
    container: Obj, name: str, index: int | None, *, mine: bool, ctx: EnvContext
) -> tuple[bool, list[str]]:
    """Whether the user set `name` (an env entry, a ConfigMap key), and which unread sources may.

    Kubernetes gives an `env` entry precedence over `envFrom`, so adding one would replace a
    value the user provides through a ConfigMap or Secret. A Secret is never read, and a
    ConfigMap only in-cluster: those are named, not claimed as kept.
    """
    if ctx.override:
        return False, []
    if index is not None and not mine:
        return True, []
    owned = False
    unread: list[str] = []
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix") or ""
        if not name.startswith(prefix):
            continue
        key = name[len(prefix) :]
        if source.get("secretRef") is not None:
            unread.append(f"envFrom Secret {(source['secretRef'] or {}).get('name')!r}")
            continue
        configmap = (source.get("configMapRef") or {}).get("name")
        if not isinstance(configmap, str) or configmap not in ctx.configmaps:
            unread.append(f"envFrom ConfigMap {configmap!r}")
        elif key in ctx.configmaps[configmap]:
            owned = True
    return owned, [] if owned else unread


def _is_own(entry: Obj, ours: Mapping[str, str], container_name: str) -> bool:
    """Whether an env entry is exactly what an earlier pass recorded setting (so it is ours)."""
    name = entry.get("name")
    return (
        isinstance(name, str)
        and name in ours
        and entry == entry_for(name, ours[name], container_name)
    )
