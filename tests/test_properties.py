"""Invariants over generated pods: idempotent, the patch applies, nothing the user wrote is
changed or removed, and the result is a valid Pod by the official schema."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import io
import json
import re
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest
from hypothesis import HealthCheck, given, settings

from tests.strategies import (
    INJECTED_ENV,
    configmaps,
    crowded_pods,
    every_setting,
    pods,
    server_settings,
)
from webhook.config import Settings
from webhook.core.decision import decide
from webhook.core.keys import STATUS
from webhook.core.patch import prefixed
from webhook.mutate import mutate_documents

K8S_VERSION = "1.33"
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _user_values(p: dict[str, Any]) -> dict[tuple[str, str], Any]:
    """Every env entry, envFrom, resources and annotation the user wrote, by place."""
    spec = p["spec"]
    found: dict[tuple[str, str], Any] = {}
    for c in [*spec.get("initContainers", []), *spec["containers"]]:
        for e in c.get("env", []):
            found[(c["name"], "env:" + e["name"])] = e
        for policy in c.get("resizePolicy", []):
            found[(c["name"], "resizePolicy:" + policy["resourceName"])] = policy
        for key in ("envFrom", "resources", "command", "image"):
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
    decision = decide(p, s.options, configmaps=cms)
    assert p == original, "decide() must not modify its input"
    mutated = jsonpatch.apply_patch(p, decision.patch)
    assert decide(mutated, s.options, configmaps=cms).patch == []
    assert all(len(w) <= 120 for w in decision.warnings)


@FAST
@given(pods(), configmaps, server_settings)
def test_user_values_are_never_changed_or_removed(
    p: dict[str, Any], cms: dict[str, frozenset[str]], s: Settings
) -> None:
    mutated = jsonpatch.apply_patch(p, decide(p, s.options, configmaps=cms).patch)
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
    mutated = jsonpatch.apply_patch(p, decide(p, s.options, configmaps=cms).patch)
    status = json.loads((mutated["metadata"].get("annotations") or {}).get(STATUS, "{}"))
    for entry in status.values():
        for name, value in entry.get("set", {}).items():
            if name != "CPU_LIMIT":
                assert value.isdigit(), (name, value)
                assert int(value) >= 1, (name, value)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pods(), server_settings)
def test_result_is_a_valid_pod(p: dict[str, Any], s: Settings) -> None:
    mutated = jsonpatch.apply_patch(p, decide(p, s.options).patch)
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


# Patch safety, over pods of up to 12 containers and 2 init containers that share env, images and
# commands. 1,000 examples: a failure on one pod in ten goes unseen with odds of 10^-45.
MANY = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ALLOWED = re.compile(
    r"^/metadata(/annotations(/concurrency-injector\.io~1status)?)?$"
    r"|^/spec/(?P<field>initContainers|containers)/(?P<index>\d+)/(env|resizePolicy)(/\d+(/.+)?)?$"
)


def _without_writable(p: dict[str, Any]) -> dict[str, Any]:
    """The pod less the places the webhook may write: all that must come out unchanged."""
    out = copy.deepcopy(p)
    metadata = out.get("metadata") or {}
    (metadata.get("annotations") or {}).pop(STATUS, None)
    if not metadata.get("annotations"):
        metadata.pop("annotations", None)
    for c in [*out["spec"].get("initContainers", []), *out["spec"]["containers"]]:
        c.pop("env", None)
        c.pop("resizePolicy", None)
    return out


def _edited(p: dict[str, Any], decision: Any) -> dict[str, Any]:
    """The oracle: a copy of the pod with each edited array set as the decision left it."""
    out = copy.deepcopy(p)
    metadata = out.get("metadata")
    if not isinstance(metadata, dict):
        metadata = out["metadata"] = {}
    if not isinstance(metadata.get("annotations"), dict):
        metadata["annotations"] = {}
    status = {c.name: c.status() for c in decision.containers}
    metadata["annotations"][STATUS] = json.dumps(status, sort_keys=True, separators=(",", ":"))
    for edit in decision.edits:
        _, field, index = edit.path
        container = out["spec"][field][index]
        for key, array in (("env", edit.env), ("resizePolicy", edit.resize)):
            if array.changed:
                if array.result() is None:
                    container.pop(key, None)
                else:
                    container[key] = array.result()
    return out


@MANY
@given(crowded_pods, configmaps, every_setting)
def test_patch_only_edits_inside_targets_and_keeps_every_container(
    p: dict[str, Any], cms: dict[str, frozenset[str]], s: Settings
) -> None:
    decision = decide(p, s.options, configmaps=cms)
    targets = {c.name for c in decision.containers}
    for o in decision.patch:
        match = ALLOWED.match(o["path"])
        assert match, o
        if match["field"] is not None:
            assert p["spec"][match["field"]][int(match["index"])]["name"] in targets, o

    mutated = jsonpatch.apply_patch(p, decision.patch)
    assert _without_writable(mutated) == _without_writable(p)
    for field in ("initContainers", "containers"):
        before, after = p["spec"].get(field, []), mutated["spec"].get(field, [])
        assert [c["name"] for c in after] == [c["name"] for c in before]
        for b, a in zip(before, after, strict=True):
            for key in ("image", "command", "args", "resources", "envFrom"):
                assert a.get(key) == b.get(key), (b["name"], key)
            if b["name"] not in targets:
                assert a.get("env") == b.get("env")
                assert a.get("resizePolicy") == b.get("resizePolicy")
            else:  # user env entries stay, in their order, unless override asked to replace ours
                kept = [e for e in b.get("env", []) if e["name"] not in INJECTED_ENV]
                assert [e for e in a.get("env", []) if e["name"] not in INJECTED_ENV] == kept
                ours = [e["name"] for e in a.get("env", []) if e["name"] in INJECTED_ENV]
                assert len(ours) == len(set(ours)), ours

    assert decide(mutated, s.options, configmaps=cms).patch == []


@MANY
@given(crowded_pods, configmaps, every_setting)
def test_direct_patch_equals_the_diff_of_the_edited_pod(
    p: dict[str, Any], cms: dict[str, frozenset[str]], s: Settings
) -> None:
    """The diff stays the oracle: the direct patch gives the pod that editing a copy gives."""
    decision = decide(p, s.options, configmaps=cms)
    if not decision.patch:
        return
    expected = _edited(p, decision)
    assert jsonpatch.apply_patch(p, decision.patch) == expected
    assert jsonpatch.apply_patch(p, jsonpatch.make_patch(p, expected)) == expected


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(crowded_pods, every_setting)
def test_crowded_result_is_a_valid_pod(p: dict[str, Any], s: Settings) -> None:
    mutated = jsonpatch.apply_patch(p, decide(p, s.options).patch)
    kubernetes_validate.validate(mutated, K8S_VERSION, strict=True)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(crowded_pods, every_setting)
def test_mutate_cli_patch_is_the_pods_patch(p: dict[str, Any], s: Settings) -> None:
    """`mutate -o patch` on a Pod and on a Deployment: the same safe ops, under the pod's path."""
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {"template": copy.deepcopy(p)},
    }
    s = dataclasses.replace(s, no_registry=True)
    results = asyncio.run(mutate_documents([p, deployment], s, stderr=io.StringIO()))
    pod_patch = decide(p, s.options).patch
    assert results[0].patch == pod_patch
    assert results[1].patch == prefixed(pod_patch, ("spec", "template"))
    for done in results:
        assert jsonpatch.apply_patch(done.original, done.patch) == done.result
