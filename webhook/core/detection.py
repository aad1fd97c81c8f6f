"""Which containers are targets (SPEC "Which containers are targets"). Pure.

The SPEC's rules in order: the opt-out annotation, a list of containers, a runtime annotation
for the default container, then detection per app container from its command line (read by
webhook/core/commands.py) or its image's metadata (label, Entrypoint and Cmd, name).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

from webhook.core import keys
from webhook.core.annotations import annotations_of, boolean, word
from webhook.core.commands import (
    PYTHON,
    SEPARATORS,
    SHELLS,
    Branches,
    ServerCommand,
    effective_command,
    find_server,
    read_command,
)
from webhook.core.profiles import GENERIC, ProfileSet
from webhook.core.types import ImageConfig, Obj

# Shell operators that, in an exec-form argv, are plain arguments (`python a && gunicorn b`).
SHELL_OPERATORS = SEPARATORS - {"(", ")", "{", "}"}

Source = Literal["command", "image-label", "image-command", "image-name", "annotation"]


@dataclass(frozen=True)
class Target:
    """A container that gets its runtime's worker variable, and why."""

    name: str
    init: bool
    runtime: str
    source: Source
    server: ServerCommand | None = None
    # A script that runs one of these by its arguments: recorded, never guessed.
    undecided: tuple[str, ...] = ()


@dataclass(frozen=True)
class NotTarget:
    """A container that gets nothing, and why (for `explain`; the server does not use it)."""

    name: str
    init: bool
    # The reason, or how to word it: only `explain` reads it, so the server never builds it.
    why: str | Callable[[], str] = field(compare=False)

    @property
    def reason(self) -> str:
        return self.why if isinstance(self.why, str) else self.why()


@dataclass(slots=True)  # built on every review: not frozen, whose setattr costs ~1 µs a build
class Selection:
    """Every container of a pod, decided: the targets, the others with their reasons, warnings."""

    targets: list[Target]
    others: list[NotTarget]
    warnings: list[str]


@dataclass(slots=True)  # built on every review: not frozen, whose setattr costs ~1 µs a build
class Detected:
    """Rule 4's answer for one container: its runtime, how it was known, its command line."""

    runtime: str
    source: Source
    server: ServerCommand | None


def detect(
    container: Obj, image: ImageConfig | None, profiles: ProfileSet
) -> Detected | Branches | None:
    """Rule 4 for one app container: its command/args, else the image's label, command or name.

    An explicit `command` decides on its own: the image's label applies only to containers
    that do not set `command`, since one image often serves both a web and a worker process.
    """
    command, args = container.get("command"), container.get("args")
    own = [*(command or []), *(args or [])]
    found = read_command(own, profiles) if own else None
    if isinstance(found, ServerCommand):
        return Detected(found.runtime, "command", found)
    if command:
        return found
    if image is not None:
        label = image["labels"].get(keys.IMAGE_RUNTIME_LABEL, "").strip().lower()
        from_image = read_command(effective_command(container, image) or [], profiles)
        server = from_image if isinstance(from_image, ServerCommand) else None
        if label == GENERIC or profiles.get(label) is not None:
            return Detected(label, "image-label", server)
        if server is not None:
            return Detected(server.runtime, "image-command", server)
        if isinstance(from_image, Branches):
            return from_image
    if isinstance(container.get("image"), str):
        profile = profiles.by_image(repository(container["image"]))
        # The image's own command, or the subcommand of its entrypoint that serves.
        if profile is not None and (not args or args[0] in profile.subcommands):
            return Detected(profile.name, "image-name", None)
    return found


def repository(image: str) -> str:
    """An image reference's repository, as profiles name it: no registry, tag or digest."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    if ":" in name[slash + 1 :]:
        name = name[: name.rindex(":")]
    parts = name.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]
    if len(parts) > 1 and parts[0] == "library":
        parts = parts[1:]
    return "/".join(parts)


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


def images_to_resolve(pod: Obj, profiles: ProfileSet) -> list[str]:
    """Images whose registry metadata could decide detection (rule 4 only)."""
    annotations = annotations_of(pod)
    if (
        opted_out(annotations)
        or annotations.get(keys.CONTAINERS)
        or word(annotations, keys.RUNTIME)
    ):
        return []
    wanted: list[str] = []
    decided_natively = native(annotations)
    for container, init in containers_of(pod):
        if init or container.get("command") or not isinstance(container.get("image"), str):
            continue
        if container.get("name") in decided_natively:
            continue
        if container.get("args") and find_server(list(container["args"]), profiles) is not None:
            continue
        if container["image"] not in wanted:
            wanted.append(container["image"])
    return wanted


def native(annotations: Mapping[str, Any]) -> frozenset[str]:
    """The containers the native policy decided (its annotation): the webhook leaves them.

    Under the chart's hybrid mode the policy runs first (the API server calls admission
    policies before webhooks), so a container is decided by exactly one of the two.
    """
    value = annotations.get(keys.NATIVE)
    return frozenset(value.split(",")) if isinstance(value, str) and value else frozenset()


def opted_out(annotations: Mapping[str, Any]) -> bool:
    """Rule 1: `concurrency-injector.io/inject: "false"`."""
    return boolean(annotations, keys.INJECT) is False


def select_targets(
    pod: Obj, images: Mapping[str, ImageConfig], profiles: ProfileSet
) -> tuple[list[Target], list[str]]:
    """Apply the SPEC's rules in order; returns the targets and warnings."""
    chosen = select(pod, images, profiles)
    return chosen.targets, chosen.warnings


def select(pod: Obj, images: Mapping[str, ImageConfig], profiles: ProfileSet) -> Selection:
    """Apply the SPEC's rules in order: targets, and every other container with its reason."""
    annotations = annotations_of(pod)
    if opted_out(annotations):
        reason = f"the pod's annotation {keys.INJECT}=false opts every container out"
        return Selection([], _others(pod, set(), reason), [])
    warnings: list[str] = []
    runtime_value = word(annotations, keys.RUNTIME)
    runtime: str | None = None
    if runtime_value:
        if runtime_value == GENERIC or profiles.get(runtime_value) is not None:
            runtime = runtime_value
        else:
            warnings.append(
                f"{keys.RUNTIME}={runtime_value[:40]!r} names no active profile; ignored"
            )

    listed = annotations.get(keys.CONTAINERS)
    if listed:
        targets = _listed(pod, str(listed), runtime, images, profiles, warnings)
        reason = f"not named in the pod's annotation {keys.CONTAINERS}"
        return Selection(targets, _others(pod, {t.name for t in targets}, reason), warnings)
    decided_natively = native(annotations)
    if runtime is not None:
        container, more = default_container(pod, annotations)
        warnings += more
        if container is None:
            return Selection([], [], warnings)
        name = str(container.get("name"))
        reason = f"{keys.RUNTIME} applies to the default container {name!r} only"
        if name in decided_natively:
            others = _others(pod, {name}, reason)
            return Selection([], [*others, NotTarget(name, False, NATIVE_REASON)], warnings)
        command = [*(container.get("command") or []), *(container.get("args") or [])]
        server = find_server(command, profiles)
        targets = [Target(name, False, runtime, "annotation", server)]
        return Selection(targets, _others(pod, {name}, reason), warnings)

    targets = []
    others = []
    for container, init in containers_of(pod):
        name = str(container.get("name"))
        if init:
            others.append(NotTarget(name, True, INIT_REASON))
            continue
        if name in decided_natively:
            others.append(NotTarget(name, False, NATIVE_REASON))
            continue
        image = images.get(container.get("image", ""))
        found = detect(container, image, profiles)
        if isinstance(found, Detected):
            targets.append(Target(name, False, found.runtime, found.source, found.server))
        elif isinstance(found, Branches):
            targets.append(Target(name, False, "unknown", "command", undecided=found.runtimes))
            warnings.append(
                f"container {name!r} runs {' or '.join(found.runtimes)} by its arguments: "
                f"not a target; name it in {keys.CONTAINERS}"
            )
        else:
            # What the wording reads, not the container: a cached decision must not keep
            # the pod's containers alive.
            read = {k: container.get(k) for k in WORDED}
            why = partial(why_not_detected, read, image, profiles)
            others.append(NotTarget(name, False, why))
    return Selection(targets, others, warnings)


# The container fields `why_not_detected` reads.
WORDED = ("command", "args", "image")
INIT_REASON = f"an init container: a target only when named in {keys.CONTAINERS}"
NATIVE_REASON = f"decided by the native admission policy (annotation {keys.NATIVE})"


def _others(pod: Obj, chosen: set[str], reason: str) -> list[NotTarget]:
    return [
        NotTarget(str(c.get("name")), init, reason)
        for c, init in containers_of(pod)
        if str(c.get("name")) not in chosen
    ]


def why_not_detected(container: Obj, image: ImageConfig | None, profiles: ProfileSet) -> str:
    """Why rule 4 found no profiled server in a container, in words (only for non-targets)."""
    command, args = container.get("command"), container.get("args")
    own = [str(w) for w in [*(command or []), *(args or [])]]
    if command:
        return f"its command {_shown(own)} {runs_what(own, profiles)}; with a command set, " + (
            "the image's label and Cmd do not apply"
        )
    ref = container.get("image")
    name = f"image {str(ref)[:60]!r}" if isinstance(ref, str) else "no image"
    if image is None:
        known = "its image's metadata was not read"
        if own:
            known = f"its args {_shown(own)} {runs_what(own, profiles)}, and {known}"
        return f"{known}; the {name} matches no profile by name"
    label = image["labels"].get(keys.IMAGE_RUNTIME_LABEL)
    labelled = (
        f"label {keys.IMAGE_RUNTIME_LABEL}={label!r} names no active profile"
        if label
        else (f"no {keys.IMAGE_RUNTIME_LABEL} label")
    )
    runs = effective_command(container, image) or []
    return f"{name}: {labelled}; it runs {_shown(runs)}, which {runs_what(runs, profiles)}"


def _shown(argv: list[str]) -> str:
    text = " ".join(argv)
    return repr(text if len(text) <= 60 else text[:59] + "…")


def runs_what(argv: list[str], profiles: ProfileSet) -> str:
    """What an argv that runs no profiled server starts instead, in words."""
    if not argv:
        return "is empty"
    program = argv[0].rsplit("/", 1)[-1]
    operators = [w for w in argv[1:] if w in SHELL_OPERATORS]
    if operators and program not in SHELLS:
        return (
            f"starts {program!r}, which no profile names: in an exec-form argv there is no "
            f"shell, so {operators[0]!r} is only an argument"
        )
    if program in SHELLS:
        return f"is a {program} script that starts no profiled server"
    if PYTHON.match(program):
        return f"runs {program} on a script or module that no profile names"
    return f"starts {program!r}, which no profile names"


def _listed(
    pod: Obj,
    listed: str,
    runtime: str | None,
    images: Mapping[str, ImageConfig],
    profiles: ProfileSet,
    warnings: list[str],
) -> list[Target]:
    names = [n.strip() for n in listed.split(",") if n.strip()]
    by_name = {c.get("name"): (c, init) for c, init in containers_of(pod)}
    targets = []
    for name in dict.fromkeys(names):
        if name not in by_name:
            warnings.append(
                f"{keys.CONTAINERS} lists {name[:40]!r}, which is not a container of this pod"
            )
            continue
        container, init = by_name[name]
        found = detect(container, images.get(container.get("image", "")), profiles)
        detected = found if isinstance(found, Detected) else None
        server = detected.server if detected else None
        chosen = runtime or (detected.runtime if detected else GENERIC)
        targets.append(Target(name, init, chosen, "annotation", server))
    return targets
