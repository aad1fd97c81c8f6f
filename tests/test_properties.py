"""Invariants over generated pods: idempotent, the patch applies, nothing the user wrote is
changed or removed, and the result is a valid Pod by the official schema."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from webhook.config import Settings
from webhook.keys import INJECTED_ENV, STATUS
from webhook.mutation import decide

K8S_VERSION = "1.33"
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
        ["redis-server"],
    ]
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


@st.composite
def containers(draw: st.DrawFn, name: str) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "image": "registry.example/app:1"}
    command = draw(commands)
    if command:
        c["command"] = command
    limits = {k: v for k, v in (("cpu", draw(cpus)), ("memory", draw(memories))) if v}
    if limits:
        c["resources"] = {"limits": limits}
    env = draw(env_entries)
    if env:
        c["env"] = env
    sources = draw(env_from)
    if sources:
        c["envFrom"] = sources
    return c


@st.composite
def pods(draw: st.DrawFn) -> dict[str, Any]:
    chosen = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    p: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "generated", "namespace": "default"},
        "spec": {"containers": [draw(containers(n)) for n in chosen]},
    }
    annotations = draw(annotation_values)
    if annotations:
        p["metadata"]["annotations"] = annotations
    if draw(st.booleans()):
        p["spec"]["initContainers"] = [draw(containers("init"))]
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
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _user_values(p: dict[str, Any]) -> dict[tuple[str, str], Any]:
    """Every env entry, envFrom, resources and annotation the user wrote, by place."""
    spec = p["spec"]
    found: dict[tuple[str, str], Any] = {}
    for c in [*spec.get("initContainers", []), *spec["containers"]]:
        for e in c.get("env", []):
            found[(c["name"], "env:" + e["name"])] = e
        for key in ("envFrom", "resources", "command", "image", "resizePolicy"):
            if key in c:
                found[(c["name"], key)] = c[key]
    for k, v in (p["metadata"].get("annotations") or {}).items():
        if k != STATUS:
            found[("", k)] = v
    return found


@FAST
@given(pods(), configmaps, server_settings)
def test_patch_applies_and_second_pass_is_empty(
    p: dict[str, Any], cms: dict[str, frozenset[str]], s: Settings
) -> None:
    original = copy.deepcopy(p)
    decision = decide(p, s, configmaps=cms)
    assert p == original, "decide() must not modify its input"
    mutated = jsonpatch.apply_patch(p, decision.patch)
    assert decide(mutated, s, configmaps=cms).patch == []
    assert all(len(w) <= 120 for w in decision.warnings)


@FAST
@given(pods(), configmaps, server_settings)
def test_user_values_are_never_changed_or_removed(
    p: dict[str, Any], cms: dict[str, frozenset[str]], s: Settings
) -> None:
    mutated = jsonpatch.apply_patch(p, decide(p, s, configmaps=cms).patch)
    before, after = _user_values(p), _user_values(mutated)
    override = (p["metadata"].get("annotations") or {}).get(
        "concurrency-injector.io/override"
    ) == "true"
    for place, value in before.items():
        if override and place[1].startswith("env:") and place[1][4:] in INJECTED_ENV:
            continue  # the user asked for these to be replaced
        assert after.get(place) == value, place


@FAST
@given(pods(), configmaps, server_settings)
def test_injected_values_are_positive_integers(
    p: dict[str, Any], cms: dict[str, frozenset[str]], s: Settings
) -> None:
    mutated = jsonpatch.apply_patch(p, decide(p, s, configmaps=cms).patch)
    status = json.loads((mutated["metadata"].get("annotations") or {}).get(STATUS, "{}"))
    for entry in status.values():
        for name, value in entry.get("set", {}).items():
            if name != "CPU_LIMIT":
                assert value.isdigit(), (name, value)
                assert int(value) >= 1, (name, value)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pods(), server_settings)
def test_result_is_a_valid_pod(p: dict[str, Any], s: Settings) -> None:
    mutated = jsonpatch.apply_patch(p, decide(p, s).patch)
    kubernetes_validate.validate(mutated, K8S_VERSION, strict=True)


@pytest.mark.parametrize("version", ["1.29", K8S_VERSION])
def test_schema_rejects_a_broken_pod(version: str) -> None:
    """The validator itself catches what we would care about (so the property test can fail)."""
    broken = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "x"},
        "spec": {"containers": [{"name": "web", "env": [{"name": "A", "value": 3}]}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)
