from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings

from tests.podgen import container, gunicorn, pod
from tests.strategies import configmaps, pods
from webhook.admission.cache import DecisionCache, decision_key, pod_key
from webhook.config import Settings
from webhook.core.decision import Decision, decide


def cached(cache: DecisionCache, p: dict[str, Any], **kw: Any) -> Decision:
    images, cms = kw.get("images", {}), kw.get("configmaps", {})
    key = pod_key(p)
    assert key is not None
    return cache.get_or_decide(decision_key(key, images, cms), lambda: decide(p, Settings().options, images=images, configmaps=cms))


def key(p: dict[str, Any], images: Any = None, cms: Any = None) -> bytes:
    found = pod_key(p)
    assert found is not None
    return decision_key(found, images or {}, cms or {})


def test_replicas_share_one_decision() -> None:
    cache = DecisionCache(8)
    first = pod(gunicorn(cpu="2"))
    replica = copy.deepcopy(first)
    replica["metadata"] = {"generateName": "web-7d4b9c-", "namespace": "default", "labels": {"x": "y"}}
    assert cached(cache, first) is cached(cache, replica)
    assert (cache.hits, len(cache)) == (1, 1)


def test_every_input_decide_reads_is_in_the_key() -> None:
    base = pod(gunicorn(cpu="2"), annotations={"a": "1"})
    variants = [
        pod(gunicorn(cpu="3"), annotations={"a": "1"}),
        pod(gunicorn(cpu="2"), annotations={"a": "2"}),
        pod(gunicorn(cpu="2"), annotations={"a": "1"}, init=[container("i")]),
        pod(gunicorn(cpu="2"), annotations={"a": "1"}, pod_cpu="4"),
    ]
    keys = {key(p) for p in [base, *variants]}
    keys.add(key(base, {"img": {"labels": {}, "entrypoint": None, "cmd": None, "env": []}}))
    keys.add(key(base, cms={"cfg": frozenset({"A"})}))
    keys.add(key(base, cms={"cfg": frozenset({"B"})}))
    assert len(keys) == 8


def test_shapes_that_are_not_pods_have_no_key_and_are_never_marked_checked() -> None:
    cache = DecisionCache(4)
    assert pod_key({"spec": "x"}) is None
    assert pod_key({"metadata": ["x"], "spec": {}}) is None
    cache.mark_checked(None)
    assert not cache.checked(None)
    good = pod_key(pod(gunicorn()))
    assert not cache.checked(good)
    cache.mark_checked(good)
    assert cache.checked(good)
    assert not DecisionCache(0).checked(good)


def test_bounded_lru_and_off_switch() -> None:
    cache = DecisionCache(2)
    a, b, c = (pod(gunicorn(cpu=cpu)) for cpu in ("1", "2", "3"))
    cached(cache, a)
    cached(cache, b)
    cached(cache, a)  # a is now the most recent
    cached(cache, c)  # evicts b
    assert len(cache) == 2
    hits = cache.hits
    cached(cache, b)
    assert cache.hits == hits  # b was evicted: decided again
    off = DecisionCache(0)
    assert cached(off, a) is not cached(off, a)
    assert len(off) == 0


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pods(), pods(), configmaps)
def test_a_cached_decision_equals_a_fresh_one(p: dict[str, Any], q: dict[str, Any], cms: dict[str, frozenset[str]]) -> None:
    cache = DecisionCache(4)
    for one in (p, q, p, q):
        got = cached(cache, one, configmaps=cms)
        fresh = decide(one, Settings().options, configmaps=cms)
        assert (got.patch, got.warnings, got.containers) == (fresh.patch, fresh.warnings, fresh.containers)


def test_a_cached_decision_keeps_no_container_of_its_pod_alive() -> None:
    """Decisions are kept (256 by default): one that held the pod's containers would keep
    every distinct pod's spec in memory. Non-targets' reasons are worded from copies."""
    import gc

    p = pod(gunicorn(cpu="2"), container("redis", command=["redis-server"], cpu="1"),
            container("envoy", image="envoyproxy/envoy:v1", cpu="1"))
    decision = decide(p, Settings().options)
    assert len(decision.others) == 2
    assert [o.reason for o in decision.others]  # worded on demand, from what was kept
    containers = {id(c) for c in p["spec"]["containers"]}
    seen: set[int] = set()
    todo: list[Any] = [decision]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, type):
            continue
        seen.add(id(obj))
        assert id(obj) not in containers, f"the decision holds container {obj.get('name')!r}"
        todo.extend(gc.get_referents(obj))
