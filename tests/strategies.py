"""Hypothesis strategies shared by the property, cache, fuzz and differential tests: pods as
users write them, crowded pods whose containers share env and commands, and server settings."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from hypothesis import strategies as st

from webhook.config import Settings
from webhook.core.keys import FACTS

names = st.sampled_from(["web", "api", "worker", "proxy", "app-2"])
cpus = st.one_of(st.none(), st.sampled_from(["100m", "500m", "1", "1500m", "2", "3.5", "16"]))
memories = st.one_of(st.none(), st.sampled_from(["128Mi", "512Mi", "1Gi", "4Gi"]))
commands = st.sampled_from(
    [
        None,
        ["gunicorn", "app:app"],
        ["gunicorn", "-w", "4", "app:app", "--threads", "2"],
        ["python", "-m", "uvicorn", "main:app"],
        ["sh", "-c", "cd /srv && exec uvicorn main:app"],
        ["celery", "-A", "proj", "worker"],
        ["granian", "--interface", "asgi", "main:app"],
        ["uwsgi", "--http", ":8000", "-p", "4"],
        ["hypercorn", "main:app"],
        ["sh", "-c", 'case "$1" in web) exec gunicorn a ;; *) exec celery -A p worker ;; esac'],
        ["redis-server"],
    ]
)
# Every variable the webhook may write: the facts and each profile's worker variable.
INJECTED_ENV = sorted(
    {*FACTS, *(v for p in Settings().profiles().profiles.values() for v in p.env)}
)
env_names = st.sampled_from([*INJECTED_ENV, "A", "GUNICORN_CMD_ARGS", "PORT"])
env_entries = st.lists(
    st.builds(
        lambda n, v: {"name": n, "value": v}, env_names, st.sampled_from(["1", "8", "--workers 3"])
    ),
    max_size=4,
    unique_by=lambda e: e["name"],
)
env_from = st.lists(
    st.one_of(
        st.builds(
            lambda n, p: {"configMapRef": {"name": n}, **({"prefix": p} if p else {})},
            st.sampled_from(["cfg", "other"]),
            st.sampled_from(["", "APP_", "WEB_", "CPU_"]),
        ),
        st.builds(lambda n: {"secretRef": {"name": n}}, st.sampled_from(["sec"])),
    ),
    max_size=2,
)
annotation_values = st.fixed_dictionaries(
    {},
    optional={
        "concurrency-injector.io/workers-per-cpu": st.sampled_from(["2", "0.5", "bad"]),
        "concurrency-injector.io/min-workers": st.sampled_from(["1", "3"]),
        "concurrency-injector.io/max-workers": st.sampled_from(["2", "10", "x"]),
        "concurrency-injector.io/memory-per-worker": st.sampled_from(["200Mi", "1Gi"]),
        "concurrency-injector.io/override": st.sampled_from(["true", "false"]),
        "concurrency-injector.io/containers": st.sampled_from(["web", "web,worker,ghost"]),
        "concurrency-injector.io/runtime": st.sampled_from(["gunicorn", "python", "nope"]),
        "team": st.just("payments"),
    },
)


# Pods are built from small pools, so that containers often share identical env, images and
# commands (sidecars, a web and an admin container from one image): the shapes on which a
# list diff pairs the wrong items.
images = st.sampled_from(["registry.example/app:1", "registry.example/app:1", "nginx:1.27"])
env_pool = st.sampled_from(
    [
        [],
        [{"name": "LOG_LEVEL", "value": "info"}],
        [{"name": "LOG_LEVEL", "value": "info"}, {"name": "PORT", "value": "8000"}],
        [{"name": "WEB_CONCURRENCY", "value": "8"}],
    ]
)
container_names = [f"c{i}" for i in range(12)]


@st.composite
def containers(draw: st.DrawFn, name: str, *, shared: bool = False) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "image": draw(images)}
    command = draw(commands)
    if command:
        c["command"] = command
    limits = {k: v for k, v in (("cpu", draw(cpus)), ("memory", draw(memories))) if v}
    if limits:
        c["resources"] = {"limits": limits}
    env = copy.deepcopy(draw(env_pool)) if shared else draw(env_entries)
    if env:
        c["env"] = env
    sources = draw(env_from)
    if sources:
        c["envFrom"] = sources
    if draw(st.booleans()):
        c["resizePolicy"] = [{"resourceName": "memory", "restartPolicy": "NotRequired"}]
    return c


@st.composite
def pods(draw: st.DrawFn, *, max_containers: int = 3, shared: bool = False) -> dict[str, Any]:
    count = draw(st.integers(1, max_containers))
    inits = draw(st.integers(0, 2)) if max_containers > 3 else draw(st.integers(0, 1))
    names_drawn = draw(st.permutations(container_names)) if shared else None
    chosen = (
        list(names_drawn[: count + inits])
        if names_drawn
        else draw(st.lists(names, min_size=count, max_size=count, unique=True)) + ["init"] * inits
    )
    p: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "generated", "namespace": "default"},
        "spec": {"containers": [draw(containers(n, shared=shared)) for n in chosen[:count]]},
    }
    annotations = draw(annotation_values)
    if shared and draw(st.booleans()):
        listed = draw(st.lists(st.sampled_from([*chosen, "ghost"]), min_size=1, max_size=4))
        annotations["concurrency-injector.io/containers"] = ",".join(listed)
    if annotations:
        p["metadata"]["annotations"] = annotations
    if inits:
        init_list = []
        for n in chosen[count:] if shared else ["init"]:
            init = draw(containers(n, shared=shared))
            init.pop("resizePolicy", None)  # only sidecars may have one
            if draw(st.booleans()):  # a sidecar: a restartable init container
                init["restartPolicy"] = "Always"
            init_list.append(init)
        p["spec"]["initContainers"] = init_list
    if draw(st.booleans()):
        p["spec"]["resources"] = {"limits": {"cpu": draw(st.sampled_from(["2", "4", "500m"]))}}
    return p


configmaps = st.sampled_from(
    [{}, {"cfg": frozenset({"WEB_CONCURRENCY"})}, {"cfg": frozenset({"X"})}]
)
server_settings = st.sampled_from(
    [
        Settings(),
        Settings(resize_restart=True, max_workers=4),
        Settings(python_cpu_count=False, rounding="ceil"),
    ]
)

@st.composite
def cloned_pods(draw: st.DrawFn) -> dict[str, Any]:
    """Up to 12 containers stamped from two templates: a web server and a sidecar, same env."""
    env = draw(env_pool)
    templates = [
        {"image": "registry.example/app:1", "command": ["gunicorn", "app:app"]},
        {"image": "registry.example/app:1", "command": ["sidecar"]},
    ]
    count = draw(st.integers(2, 12))
    spec_containers = []
    for i in range(count):
        c: dict[str, Any] = {"name": f"c{i}", **copy.deepcopy(draw(st.sampled_from(templates)))}
        cpu = draw(st.sampled_from([None, "1", "2"]))
        if cpu:
            c["resources"] = {"limits": {"cpu": cpu}}
        if env:
            c["env"] = copy.deepcopy(env)
        spec_containers.append(c)
    p: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "cloned", "namespace": "default"},
        "spec": {"containers": spec_containers},
    }
    if draw(st.booleans()):
        listed = draw(st.lists(st.sampled_from([c["name"] for c in spec_containers]), min_size=1))
        p["metadata"]["annotations"] = {"concurrency-injector.io/containers": ",".join(listed)}
    return p


crowded_pods = st.one_of(pods(max_containers=12, shared=True), cloned_pods())
every_setting = st.sampled_from(
    [Settings(), Settings(resize_restart=True, max_workers=4), Settings(python_cpu_count=False)]
)


def places(value: Any, *, depth: int, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path into a JSON-like value (the root too), no deeper than `depth` keys: where a
    fuzzer may put something else (not into a deeply nested value an earlier mutation put)."""
    yield path
    if len(path) > depth:
        return
    if isinstance(value, dict):
        for key, item in value.items():
            yield from places(item, depth=depth, path=(*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from places(item, depth=depth, path=(*path, index))
