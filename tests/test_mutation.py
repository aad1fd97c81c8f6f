from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import jsonpatch
import pytest

from tests.podgen import container, cpu_limit_env, gunicorn, pod
from webhook.config import Settings
from webhook.core.decision import configmaps_to_read, decide
from webhook.core.findings import kind_of

STATUS = "concurrency-injector.io/status"


def env_of(p: dict[str, Any], name: str = "web") -> list[dict[str, Any]] | None:
    spec = p["spec"]
    for c in [*spec.get("initContainers", []), *spec["containers"]]:
        if c["name"] == name:
            return c.get("env")  # type: ignore[no-any-return]
    raise KeyError(name)


def applied(p: dict[str, Any], settings: Settings | None = None, **kw: Any) -> dict[str, Any]:
    decision = decide(p, (settings or Settings()).options, **kw)
    return jsonpatch.apply_patch(p, decision.patch)  # type: ignore[no-any-return]


def wc(value: str) -> dict[str, str]:
    return {"name": "WEB_CONCURRENCY", "value": value}


def pcc(value: str) -> dict[str, str]:
    return {"name": "PYTHON_CPU_COUNT", "value": value}


def test_exact_patch_for_a_gunicorn_pod() -> None:
    decision = decide(pod(gunicorn(cpu="1500m")), Settings().options)
    status = {
        "web": {
            "cpu": "1.5",
            "cpuFrom": "container",
            "runtime": "gunicorn",
            "set": {"CPU_LIMIT": "limits.cpu", "PYTHON_CPU_COUNT": "1", "WEB_CONCURRENCY": "1"},
            "source": "command",
        }
    }
    assert decision.patch == [
        {
            "op": "add",
            "path": "/metadata/annotations",
            "value": {STATUS: json.dumps(status, separators=(",", ":"), sort_keys=True)},
        },
        {
            "op": "add",
            "path": "/spec/containers/0/env",
            "value": [wc("1"), cpu_limit_env("web"), pcc("1")],
        },
    ]
    assert decision.warnings == []
    assert decision.reason is None


def test_env_is_appended_after_user_env_and_annotations_kept() -> None:
    p = pod(gunicorn(cpu="4", env=[{"name": "A", "value": "1"}]), annotations={"team": "x"})
    decision = decide(p, Settings().options)
    assert decision.patch[0] == {
        "op": "add",
        "path": "/metadata/annotations/concurrency-injector.io~1status",
        "value": decision.patch[0]["value"],
    }
    assert decision.patch[1:] == [
        {"op": "add", "path": "/spec/containers/0/env/1", "value": wc("4")},
        {"op": "add", "path": "/spec/containers/0/env/2", "value": cpu_limit_env("web")},
        {"op": "add", "path": "/spec/containers/0/env/3", "value": pcc("4")},
    ]


@pytest.mark.parametrize(
    ("p", "settings", "expected_env"),
    [
        (pod(gunicorn(cpu="3")), Settings(), [wc("3"), cpu_limit_env("web"), pcc("3")]),
        (pod(gunicorn(cpu="3")), Settings(python_cpu_count=False), [wc("3"), cpu_limit_env("web")]),
        (
            pod(gunicorn(cpu="3")),
            Settings(workers_per_cpu=Decimal(2), max_workers=5),
            [wc("5"), cpu_limit_env("web"), pcc("3")],
        ),
        (
            pod(gunicorn(cpu="3"), annotations={"concurrency-injector.io/workers-per-cpu": "2"}),
            Settings(),
            [wc("6"), cpu_limit_env("web"), pcc("3")],
        ),
        (
            pod(gunicorn(cpu="3"), annotations={"concurrency-injector.io/max-workers": "2"}),
            Settings(),
            [wc("2"), cpu_limit_env("web"), pcc("3")],
        ),
        (
            pod(gunicorn(cpu="250m"), annotations={"concurrency-injector.io/min-workers": "2"}),
            Settings(),
            [wc("2"), cpu_limit_env("web"), pcc("1")],
        ),
        (
            pod(
                gunicorn(cpu=None),
                container("side", cpu="500m", command=["envoy"]),
                pod_cpu="2500m",
            ),
            Settings(),
            [wc("2"), pcc("2")],
        ),
        (
            pod(gunicorn(cpu="2.5")),
            Settings(rounding="ceil"),
            [wc("3"), cpu_limit_env("web"), pcc("2")],
        ),
    ],
    ids=[
        "defaults",
        "no-python-cpu-count",
        "server-max",
        "annotation-per-cpu",
        "annotation-max",
        "annotation-min",
        "pod-level-no-cpu-limit-env",
        "ceil",
    ],
)
def test_exact_env(
    p: dict[str, Any], settings: Settings, expected_env: list[dict[str, Any]]
) -> None:
    assert env_of(applied(p, settings)) == expected_env


def test_no_cpu_limit_warns_and_injects_nothing() -> None:
    p = pod(gunicorn(cpu=None))
    decision = decide(p, Settings().options)
    out = jsonpatch.apply_patch(p, decision.patch)
    assert env_of(out) is None
    assert decision.warnings == ["container 'web' has no CPU limit; nothing injected"]
    assert decision.reason == "no-cpu-limit"
    assert json.loads(out["metadata"]["annotations"][STATUS]) == {
        "web": {
            "runtime": "gunicorn",
            "source": "command",
            "skipped": "container 'web' has no CPU limit; nothing injected",
        }
    }


def test_non_target_pod_gets_no_patch() -> None:
    decision = decide(pod(container("redis", command=["redis-server"])), Settings().options)
    assert (decision.patch, decision.warnings, decision.reason) == ([], [], "no-target")


def test_opted_out_pod_gets_no_patch() -> None:
    p = pod(gunicorn(), annotations={"concurrency-injector.io/inject": "false"})
    assert decide(p, Settings().options).reason == "opted-out"
    assert decide(p, Settings().options).patch == []


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("inject", "nope", "true or false"),
        ("override", "yes", "true or false"),
        ("multi-worker", "1", "true or false"),
        ("mode", "auditt", "audit or enforce"),
        ("mode", "", "audit or enforce"),
    ],
)
def test_an_unknown_word_is_warned_and_the_default_used(key: str, value: str, words: str) -> None:
    user = [{"name": "WEB_CONCURRENCY", "value": "1"}]  # kept unless override is true
    plain = pod(gunicorn(env=user), annotations={})
    annotated = pod(gunicorn(env=user), annotations={f"concurrency-injector.io/{key}": value})
    decision = decide(annotated, Settings().options)
    assert decision.warnings == [
        f"concurrency-injector.io/{key}={value!r} is not valid ({words}); using the default"
    ]
    assert kind_of(decision.warnings[0]) == "annotation"
    # As if it were absent: the same env and status (no opt-out, no override, enforce).
    assert env_of(applied(annotated)) == env_of(applied(plain))
    assert applied(annotated)["metadata"]["annotations"][STATUS] == applied(plain)["metadata"][
        "annotations"
    ][STATUS]


@pytest.mark.parametrize(
    ("key", "value"),
    [("inject", " True "), ("override", "FALSE"), ("multi-worker", "false"), ("mode", "Enforce")],
)
def test_known_words_in_any_case_are_not_warned(key: str, value: str) -> None:
    p = pod(gunicorn(), annotations={f"concurrency-injector.io/{key}": value})
    assert decide(p, Settings().options).warnings == []


@pytest.mark.parametrize(
    "user",
    [
        {"name": "WEB_CONCURRENCY", "value": "7"},
        {"name": "WEB_CONCURRENCY", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}},
    ],
    ids=["value", "valueFrom"],
)
def test_user_env_wins(user: dict[str, Any]) -> None:
    p = pod(gunicorn(cpu="2", env=[user]))
    out = applied(p)
    assert env_of(out) == [user, cpu_limit_env("web"), pcc("2")]
    assert json.loads(out["metadata"]["annotations"][STATUS])["web"]["kept"] == ["WEB_CONCURRENCY"]


@pytest.mark.parametrize(
    ("command", "variable", "value", "warned"),
    [
        (["gunicorn", "app:app"], "WEB_CONCURRENCY", "9", True),
        (["gunicorn", "app:app"], "WEB_CONCURRENCY", "2", False),  # at the limit
        (["gunicorn", "app:app"], "WEB_CONCURRENCY", "many", False),  # not a count
        (["granian", "app:app"], "GRANIAN_WORKERS", " 9 ", True),
    ],
)
def test_a_kept_worker_count_above_the_cpu_limit_is_warned(
    command: list[str], variable: str, value: str, warned: bool
) -> None:
    """The user's value stays (never replaced), and a count above the limit is said, as for a
    worker flag above it."""
    p = pod(container("web", command=command, cpu="2", env=[{"name": variable, "value": value}]))
    decision = decide(p, Settings().options)
    assert decision.containers[0].kept == (variable,)
    expected = [f"container 'web': {variable}={value.strip()} in env is above the CPU limit (2)"]
    assert decision.warnings == (expected if warned else [])
    assert all(kind_of(w) == "above-cpu-limit" for w in decision.warnings)


def test_override_annotation_replaces_user_env_in_place() -> None:
    p = pod(
        gunicorn(
            cpu="2", env=[{"name": "WEB_CONCURRENCY", "value": "7"}, {"name": "B", "value": "1"}]
        ),
        annotations={"concurrency-injector.io/override": "true"},
    )
    assert env_of(applied(p)) == [
        wc("2"),
        {"name": "B", "value": "1"},
        cpu_limit_env("web"),
        pcc("2"),
    ]


@pytest.mark.parametrize(
    ("env_from", "configmaps", "expected_env", "warnings"),
    [
        (
            [{"configMapRef": {"name": "cfg"}}],
            {"cfg": frozenset({"WEB_CONCURRENCY"})},
            [cpu_limit_env("web"), pcc("2")],
            [],
        ),
        (
            [{"configMapRef": {"name": "cfg"}}],
            {"cfg": frozenset({"OTHER"})},
            [wc("2"), cpu_limit_env("web"), pcc("2")],
            [],
        ),
        (
            [{"configMapRef": {"name": "cfg"}, "prefix": "APP_"}],
            {},
            [wc("2"), cpu_limit_env("web"), pcc("2")],
            [],
        ),
        (
            [{"configMapRef": {"name": "cfg"}, "prefix": "WEB_"}],
            {"cfg": frozenset({"CONCURRENCY"})},
            [cpu_limit_env("web"), pcc("2")],
            [],
        ),
        (
            [{"configMapRef": {"name": "cfg"}}],
            {},
            [cpu_limit_env("web"), pcc("2")],
            [
                "container 'web': envFrom ConfigMap 'cfg' not read; WEB_CONCURRENCY not set; CPU_LIMIT, PYTHON_CPU_COUNT set over it"
            ],
        ),
        (
            [{"secretRef": {"name": "s"}, "prefix": "PYTHON_"}],
            {},
            [wc("2"), cpu_limit_env("web"), pcc("2")],
            ["container 'web': envFrom Secret 's' not read; PYTHON_CPU_COUNT set over it"],
        ),
        (
            [{"secretRef": {"name": "app"}}, {"configMapRef": {"name": "cfg"}}, {"secretRef": {"name": "db"}}],
            {"cfg": frozenset({"OTHER"})},
            [cpu_limit_env("web"), pcc("2")],
            [
                "container 'web': envFrom Secret 'app', envFrom Secret 'db' not read; WEB_CONCURRENCY not set; CPU_LIMIT, PYTHON_CPU_COUNT set over it"[:119] + "…"
            ],
        ),
    ],
    ids=[
        "configmap-has-key",
        "configmap-lacks-key",
        "prefix-cannot-match",
        "prefix-matches",
        "configmap-unread",
        "secret-never-read",
        "every-source-named",
    ],
)
def test_env_from(
    env_from: list[dict[str, Any]],
    configmaps: dict[str, frozenset[str]],
    expected_env: list[dict[str, Any]] | None,
    warnings: list[str],
) -> None:
    p = pod(gunicorn(cpu="2", envFrom=env_from))
    decision = decide(p, Settings().options, configmaps=configmaps)
    assert env_of(jsonpatch.apply_patch(p, decision.patch)) == expected_env
    assert decision.warnings == warnings


def test_memory_guard_caps_and_warns() -> None:
    p = pod(
        gunicorn(cpu="8", memory="1Gi"),
        annotations={"concurrency-injector.io/memory-per-worker": "300Mi"},
    )
    decision = decide(p, Settings().options)
    assert env_of(jsonpatch.apply_patch(p, decision.patch))[0] == wc("3")  # type: ignore[index]
    assert decision.warnings == [
        "container 'web': memory limit caps WEB_CONCURRENCY at 3 (memory-per-worker)"
    ]


def test_resize_policy_added_only_when_enabled_and_absent() -> None:
    settings = Settings(resize_restart=True)
    out = applied(pod(gunicorn()), settings)
    assert out["spec"]["containers"][0]["resizePolicy"] == [
        {"resourceName": "cpu", "restartPolicy": "RestartContainer"}
    ]
    mine = [{"resourceName": "cpu", "restartPolicy": "NotRequired"}]
    out = applied(pod(gunicorn(resizePolicy=mine)), settings)
    assert out["spec"]["containers"][0]["resizePolicy"] == mine
    assert "resizePolicy" not in applied(pod(gunicorn()))["spec"]["containers"][0]


def test_listed_init_container_gets_env() -> None:
    p = pod(
        container("app", command=["x"]),
        init=[container("warm", command=["python", "w.py"], cpu="1")],
        annotations={"concurrency-injector.io/containers": "warm"},
    )
    out = applied(p)
    assert env_of(out, "warm") == [wc("1"), cpu_limit_env("warm"), pcc("1")]
    assert env_of(out, "app") is None


def test_audit_mode_patches_nothing_and_says_what_it_would_set() -> None:
    decision = decide(pod(gunicorn(cpu="2")), Settings(mode="audit").options)
    assert decision.patch == []
    assert decision.audit
    assert decision.warnings == [
        "audit: would set WEB_CONCURRENCY=2, CPU_LIMIT=limits.cpu, PYTHON_CPU_COUNT=2 in 'web'"
    ]
    narrowed = decide(
        pod(gunicorn(), annotations={"concurrency-injector.io/mode": "audit"}), Settings().options
    )
    assert (narrowed.patch, narrowed.audit) == ([], True)
    widened = decide(
        pod(gunicorn(), annotations={"concurrency-injector.io/mode": "enforce"}),
        Settings(mode="audit").options,
    )
    assert (widened.patch, widened.audit) == ([], True)


@pytest.mark.parametrize(
    "p",
    [
        pod(gunicorn(cpu="3")),
        pod(gunicorn(cpu="3", env=[{"name": "WEB_CONCURRENCY", "value": "1"}])),
        pod(gunicorn(cpu=None)),
        pod(gunicorn(cpu=None), pod_cpu="2"),
        pod(gunicorn(cpu="2", envFrom=[{"secretRef": {"name": "s"}}])),
        pod(
            gunicorn(cpu="8", memory="1Gi"),
            annotations={"concurrency-injector.io/memory-per-worker": "1Gi"},
        ),
    ],
    ids=["plain", "user-env", "no-limit", "pod-level", "secret", "memory"],
)
def test_second_pass_changes_nothing(p: dict[str, Any]) -> None:
    once = applied(p, Settings(resize_restart=True))
    assert decide(once, Settings(resize_restart=True).options).patch == []


def test_reinvocation_after_another_webhook_changed_the_limit_updates_in_place() -> None:
    once = applied(pod(gunicorn(cpu="2")))
    once["spec"]["containers"][0]["env"].append({"name": "OTHER", "value": "x"})
    once["spec"]["containers"][0]["resources"]["limits"]["cpu"] = "4"
    again = applied(once)
    assert env_of(again) == [
        wc("4"),
        cpu_limit_env("web"),
        pcc("4"),
        {"name": "OTHER", "value": "x"},
    ]


def test_reinvocation_removes_own_env_when_the_limit_went_away() -> None:
    once = applied(pod(gunicorn(cpu="2", env=[{"name": "A", "value": "1"}])))
    del once["spec"]["containers"][0]["resources"]
    assert env_of(applied(once)) == [{"name": "A", "value": "1"}]


def test_warnings_are_at_most_120_characters() -> None:
    long_name = "c" * 63
    p = pod(gunicorn(long_name, cpu=None, args=["-w", "9" * 80, "-c", "8" * 80]))
    warnings = decide(p, Settings().options).warnings
    assert len(warnings) == 3
    assert all(len(w) <= 120 for w in warnings)
    assert all(w.endswith("…") for w in warnings[1:])


def test_configmaps_to_read() -> None:
    p = pod(
        gunicorn(envFrom=[{"configMapRef": {"name": "a"}}, {"secretRef": {"name": "s"}}]),
        init=[
            container(
                "i", envFrom=[{"configMapRef": {"name": "b"}}, {"configMapRef": {"name": "a"}}]
            )
        ],
    )
    assert configmaps_to_read(p) == ["b", "a"]


def test_original_pod_is_never_modified() -> None:
    p = pod(gunicorn(cpu="2", env=[{"name": "A", "value": "1"}]), annotations={"x": "y"})
    before = json.dumps(p, sort_keys=True)
    decide(p, Settings(resize_restart=True).options)
    assert json.dumps(p, sort_keys=True) == before


@pytest.mark.parametrize(
    ("annotations", "expected_op"),
    [
        (None, "replace"),
        ({}, "add"),
        ({"team": "x", "concurrency-injector.io/status": "{}"}, "replace"),
    ],
    ids=["null", "empty", "stale-status"],
)
def test_status_annotation_patch_applies_whatever_annotations_hold(
    annotations: dict[str, str] | None, expected_op: str
) -> None:
    p = pod(gunicorn(cpu="2"))
    p["metadata"]["annotations"] = annotations
    decision = decide(p, Settings().options)
    assert decision.patch[0]["op"] == expected_op
    out = jsonpatch.apply_patch(p, decision.patch)
    assert STATUS in out["metadata"]["annotations"]
    assert {k: v for k, v in out["metadata"]["annotations"].items() if k != STATUS} == {
        k: v for k, v in (annotations or {}).items() if k != STATUS
    }


def test_containers_sharing_identical_env_are_edited_in_place() -> None:
    """Three containers with the same env, the middle one without a limit: each keeps its place.

    A diff of the containers' projections paired equal items and moved or replaced whole
    containers (jsonpatch >= 1.35); ops are now made inside each target's env, by index.
    """
    log_level = {"name": "LOG_LEVEL", "value": "info"}
    p = pod(
        gunicorn("app-0", image="img-0", env=[dict(log_level)]),
        gunicorn("app-1", cpu=None, image="img-1", env=[dict(log_level)]),
        gunicorn("app-2", image="img-2", env=[dict(log_level)]),
    )
    decision = decide(p, Settings().options)
    assert [(o["op"], o["path"]) for o in decision.patch] == [
        ("add", "/metadata/annotations"),
        ("add", "/spec/containers/0/env/1"),
        ("add", "/spec/containers/0/env/2"),
        ("add", "/spec/containers/0/env/3"),
        ("add", "/spec/containers/2/env/1"),
        ("add", "/spec/containers/2/env/2"),
        ("add", "/spec/containers/2/env/3"),
    ]
    out = jsonpatch.apply_patch(p, decision.patch)
    assert [c["name"] for c in out["spec"]["containers"]] == ["app-0", "app-1", "app-2"]
    assert env_of(out, "app-1") == [log_level]
    for name in ("app-0", "app-2"):
        assert env_of(out, name) == [log_level, wc("2"), cpu_limit_env(name), pcc("2")]


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ("missing", ("add", "/metadata")),
        (None, ("replace", "/metadata")),
        ({}, ("add", "/metadata/annotations")),
    ],
    ids=["missing", "null", "empty"],
)
def test_status_annotation_creates_missing_metadata(metadata: Any, expected: tuple[str, str]) -> None:
    p = pod(gunicorn(cpu="2"))
    if metadata == "missing":
        del p["metadata"]
    else:
        p["metadata"] = metadata
    decision = decide(p, Settings().options)
    assert (decision.patch[0]["op"], decision.patch[0]["path"]) == expected
    out = jsonpatch.apply_patch(p, decision.patch)
    assert STATUS in out["metadata"]["annotations"]
    assert decide(out, Settings().options).patch == []


def test_env_from_secret_with_set_setting_sets_the_worker_variable_and_says_so() -> None:
    p = pod(gunicorn(cpu="2", envFrom=[{"secretRef": {"name": "app"}}]))
    decision = decide(p, Settings(env_from_unknown="set").options, configmaps={})
    assert env_of(jsonpatch.apply_patch(p, decision.patch)) == [wc("2"), cpu_limit_env("web"), pcc("2")]
    assert decision.warnings == [
        "container 'web': envFrom Secret 'app' not read; WEB_CONCURRENCY, CPU_LIMIT, PYTHON_CPU_COUNT set over it"
    ]
    status = json.loads(jsonpatch.apply_patch(p, decision.patch)["metadata"]["annotations"][STATUS])
    assert status["web"]["unread"] == ["envFrom Secret 'app'"]
    assert "kept" not in status["web"]  # never claimed for a value it did not see
