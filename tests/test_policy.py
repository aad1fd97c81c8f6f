from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from tests.podgen import container, gunicorn, pod, review
from webhook.admission.handler import AdmissionHandler
from webhook.config import Settings
from webhook.core.commands import ServerCommand
from webhook.core.decision import decide
from webhook.core.flags import FlagReader, flag_warnings
from webhook.core.workers import (
    CpuLimit,
    WorkerPolicy,
    cpu_limit,
    pod_policy,
    python_cpu_count,
    worker_count,
)

GUNICORN_PROFILE = Settings().profiles().profiles["gunicorn"]


def policy(
    wpc: str = "1",
    lo: int = 1,
    hi: int | None = None,
    mem: str | None = None,
    rounding: str = "floor",
) -> WorkerPolicy:
    return WorkerPolicy(Decimal(wpc), lo, hi, Decimal(mem) if mem else None, rounding)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cpu", "pol", "memory", "expected"),
    [
        ("1", policy(), None, (1, None)),
        ("2.9", policy(), None, (2, None)),
        ("0.25", policy(), None, (1, None)),
        ("3", policy("2"), None, (6, None)),
        ("1.5", policy("2"), None, (3, None)),
        ("16", policy(hi=4), None, (4, None)),
        ("1", policy(lo=3), None, (3, None)),
        ("2.5", policy(rounding="ceil"), None, (3, None)),
        ("2.5", policy(rounding="round"), None, (3, None)),
        ("2.4", policy(rounding="round"), None, (2, None)),
        ("8", policy(mem="209715200"), Decimal(536870912), (2, 2)),
        ("8", policy(mem="209715200"), Decimal(100), (1, 1)),
        ("1", policy(mem="209715200"), Decimal(536870912), (1, None)),
        ("8", policy(mem="209715200"), None, (8, None)),
    ],
    ids=[
        "one",
        "floor",
        "fraction-min-1",
        "per-cpu-2",
        "per-cpu-fraction",
        "max",
        "min",
        "ceil",
        "round-half-up",
        "round-down",
        "memory-cap",
        "memory-cap-at-least-1",
        "memory-not-deciding",
        "no-memory-limit",
    ],
)
def test_worker_count(
    cpu: str, pol: WorkerPolicy, memory: Decimal | None, expected: tuple[int, int | None]
) -> None:
    workers = worker_count(Decimal(cpu), pol, memory=memory)
    assert (workers.count, workers.memory_cap) == expected


@pytest.mark.parametrize(("cpu", "expected"), [("0.1", 1), ("1", 1), ("1.9", 1), ("4", 4)])
def test_python_cpu_count(cpu: str, expected: int) -> None:
    assert python_cpu_count(Decimal(cpu)) == expected


@pytest.mark.parametrize(
    ("p", "name", "expected", "why"),
    [
        (pod(gunicorn(cpu="500m")), "web", CpuLimit(Decimal("0.5"), "container"), None),
        (
            pod(gunicorn(cpu=None)),
            "web",
            None,
            "container 'web' has no CPU limit; nothing injected",
        ),
        (
            pod(gunicorn(cpu=None), container("side", cpu="500m"), pod_cpu="2"),
            "web",
            CpuLimit(Decimal("1.5"), "pod"),
            None,
        ),
        (
            pod(
                gunicorn(cpu=None),
                pod_cpu="2",
                init=[
                    container("proxy", cpu="250m", restartPolicy="Always"),
                    container("once", cpu=None),
                ],
            ),
            "web",
            CpuLimit(Decimal("1.75"), "pod"),
            None,
        ),
        (
            pod(gunicorn(cpu=None), container("side", cpu=None), pod_cpu="2"),
            "web",
            None,
            "container 'web' has no CPU limit and 'side' neither: pod CPU split unknown",
        ),
        (
            pod(gunicorn(cpu=None), container("side", cpu="2"), pod_cpu="2"),
            "web",
            None,
            "container 'web': no pod-level CPU left after other containers' limits",
        ),
        (
            pod(gunicorn(cpu="lots")),
            "web",
            None,
            "container 'web' has an invalid CPU limit; nothing injected",
        ),
        (
            pod(gunicorn(cpu="0")),
            "web",
            None,
            "container 'web' has a CPU limit of 0; nothing injected",
        ),
    ],
    ids=[
        "own",
        "none",
        "pod-less-others",
        "pod-less-sidecars",
        "split-unknown",
        "nothing-left",
        "invalid",
        "zero",
    ],
)
def test_cpu_limit(
    p: dict[str, object], name: str, expected: CpuLimit | None, why: str | None
) -> None:
    spec = p["spec"]
    assert isinstance(spec, dict)
    target = next(c for c in spec["containers"] if c["name"] == name)
    assert cpu_limit(p, target) == (expected, why)


def test_pod_policy_annotations_override_and_bad_ones_warn() -> None:
    settings = Settings(workers_per_cpu=Decimal(2), max_workers=8)
    pol, warnings = pod_policy(
        settings.options,
        {
            "concurrency-injector.io/workers-per-cpu": "1.5",
            "concurrency-injector.io/min-workers": "2",
            "concurrency-injector.io/max-workers": "many",
            "concurrency-injector.io/memory-per-worker": "256Mi",
        },
    )
    assert pol == WorkerPolicy(Decimal("1.5"), 2, 8, Decimal(268435456), "floor")
    assert warnings == [
        "concurrency-injector.io/max-workers='many' is not valid; using the default"
    ]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("workers-per-cpu", "1e400"),
        ("workers-per-cpu", "101"),
        ("max-workers", "5000"),
        ("min-workers", "0"),
        ("memory-per-worker", "0"),
    ],
    ids=["huge-per-cpu", "per-cpu-over-bound", "max-over-bound", "min-zero", "memory-zero"],
)
def test_out_of_bounds_annotations_are_ignored_with_a_warning(key: str, value: str) -> None:
    pol, warnings = pod_policy(Settings().options, {f"concurrency-injector.io/{key}": value})
    assert pol == WorkerPolicy(Decimal(1), 1, None, None, "floor")
    assert warnings == [f"concurrency-injector.io/{key}={value!r} is not valid; using the default"]


def test_worker_count_is_bounded_whatever_the_limit() -> None:
    assert worker_count(Decimal(10**9), policy("100")).count == 4096


def test_pod_policy_min_above_max_uses_max() -> None:
    pol, warnings = pod_policy(
        Settings().options,
        {
            "concurrency-injector.io/min-workers": "6",
            "concurrency-injector.io/max-workers": "4",
        },
    )
    assert (pol.min_workers, pol.max_workers) == (4, 4)
    assert warnings == ["min-workers 6 is above max-workers 4; using 4"]


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (("app:app",), {}, []),
        (("-w", "4"), {}, ["container 'web': --workers 4 in args overrides WEB_CONCURRENCY"]),
        (("-w8",), {}, ["container 'web': --workers 8 in args overrides WEB_CONCURRENCY"]),
        (("--workers=3",), {}, ["container 'web': --workers 3 in args overrides WEB_CONCURRENCY"]),
        (("--threads", "1"), {}, []),
        (("--threads", "4"), {}, []),  # recorded in the status, never warned (throttle lab)
        (
            (),
            {"GUNICORN_CMD_ARGS": "--workers 5 --threads=2"},
            ["container 'web': --workers 5 in GUNICORN_CMD_ARGS overrides WEB_CONCURRENCY"],
        ),
    ],
    ids=["none", "short", "short-joined", "long-equals", "threads-1", "threads-4", "cmd-args-env"],
)
def test_flag_warnings(args: tuple[str, ...], env: dict[str, str], expected: list[str]) -> None:
    assert flag_warnings("web", GUNICORN_PROFILE, ServerCommand("gunicorn", args), env) == expected


def option(args: tuple[str, ...], flag: str) -> str | None:
    """The reference reading of one option (`-w 4`, `-w4`, `--workers 4`, `--workers=4`)."""
    short = not flag.startswith("--")
    for i, arg in enumerate(args):
        if arg == flag:
            return args[i + 1] if i + 1 < len(args) else "?"
        if arg.startswith(flag + "="):
            return arg[len(flag) + 1 :]
        if short and arg.startswith(flag) and not arg.startswith("--") and len(arg) > len(flag):
            return arg[len(flag) :]
    return None


FLAG_SETS = [("-w", "--workers", "-c", "--config", "--threads"), ("-p", "--processes", "-pp")]
words = st.sampled_from(
    [
        "-w",
        "-w4",
        "-w=2",
        "--workers",
        "--workers=3",
        "--workers-x",
        "-c",
        "--config=a.py",
        "4",
        "--threads",
        "-p",
        "-pp",
        "-pp7",
        "--processes=2",
        "app:app",
        "--",
        "-",
        "-x",
    ]
)


@settings(max_examples=2000, deadline=None)
@given(args=st.lists(words, max_size=8).map(tuple), flags=st.sampled_from(FLAG_SETS))
def test_the_compiled_reader_reads_each_flag_as_the_reference(
    args: tuple[str, ...], flags: tuple[str, ...]
) -> None:
    found = FlagReader(flags).read(args)
    assert {f: v for f in flags if (v := option(args, f)) is not None} == found


# --- an explicit worker count above the CPU limit, for every runtime with a worker flag ----------

PROFILES = Settings().profiles().profiles
WITH_WORKER_FLAGS = sorted(name for name, p in PROFILES.items() if p.flags)


def command_of(name: str) -> list[str]:
    """A command line that the profile `name` recognises (from its own data)."""
    profile = PROFILES[name]
    if profile.launchers:
        return list(profile.launchers[0])
    if profile.executables:
        return [profile.executables[0], *profile.subcommands[:1]]
    raise AssertionError(f"profile {name} names no command")


@pytest.mark.parametrize(
    ("runtime", "flag"),
    [(name, flag) for name in WITH_WORKER_FLAGS for flag in PROFILES[name].flags],
    ids=lambda v: v,
)
def test_worker_flag_above_the_cpu_limit_is_warned(runtime: str, flag: str) -> None:
    def warnings(cpu: str) -> list[str]:
        p = pod(container("app", command=[*command_of(runtime), flag, "8"], cpu=cpu))
        decision = decide(p, Settings().options)
        assert decision.containers[0].runtime == runtime
        return decision.warnings

    above = [w for w in warnings("1") if " 8 in args" in w]
    assert len(above) == 1, warnings("1")
    assert above[0].endswith("above the CPU limit (1)")
    assert not any("above the CPU limit" in w for w in warnings("8"))


@pytest.mark.parametrize(
    ("runtime", "variable", "value"),
    [(n, v, "--workers 8" if v in PROFILES[n].flag_env else "8")
     for n in sorted(PROFILES) for v in (*PROFILES[n].flag_env, *PROFILES[n].override_env)],
    ids=lambda v: v,
)
def test_worker_count_in_a_variable_above_the_cpu_limit_is_warned(
    runtime: str, variable: str, value: str
) -> None:
    def warnings(cpu: str) -> list[str]:
        env = [{"name": variable, "value": value}]
        p = pod(container("app", command=command_of(runtime), cpu=cpu, env=env))
        return decide(p, Settings().options).warnings

    assert [w for w in warnings("1") if "above the CPU limit (1)" in w] == [
        w for w in warnings("1") if variable in w
    ]
    assert any(variable in w for w in warnings("1"))
    assert not any("above the CPU limit" in w for w in warnings("16"))


def test_threads_are_recorded_in_the_status_not_warned() -> None:
    p = pod(gunicorn(args=["--threads", "8"]))
    decision = decide(p, Settings().options)
    assert decision.warnings == []
    assert decision.status["web"]["threads"] == "8"


@pytest.mark.parametrize(
    ("cpu", "annotations", "warning"),
    [
        ("1e9", {}, "container 'web': WEB_CONCURRENCY 1000000000 for 1000000000 CPU capped to 4096 "
                    "(the bound)"),
        ("8", {"concurrency-injector.io/max-workers": "4"},
         "container 'web': WEB_CONCURRENCY 8 for 8 CPU capped to 4 (max-workers)"),
        ("8", {"concurrency-injector.io/max-workers": "4",
               "concurrency-injector.io/memory-per-worker": "1Gi"},
         "container 'web': WEB_CONCURRENCY 8 for 8 CPU capped to 4 (max-workers)"),
        ("4", {"concurrency-injector.io/max-workers": "4"}, None),
        ("2", {"concurrency-injector.io/min-workers": "3"}, None),
    ],
    ids=["bound", "max-workers", "max-and-memory", "at-the-cap", "raised-by-min"],
)
def test_a_cap_that_changes_the_count_is_warned(
    cpu: str, annotations: dict[str, str], warning: str | None
) -> None:
    p = pod(gunicorn(cpu=cpu, memory="2Gi"), annotations=annotations)
    decision = decide(p, Settings().options)
    capped = [w for w in decision.warnings if "capped to" in w]
    assert capped == ([warning] if warning else [])
    assert all(len(w) <= 120 for w in decision.warnings)


def test_cap_warnings_are_counted_like_every_warning() -> None:
    handler = AdmissionHandler(Settings(), record=True)
    before = REGISTRY.get_sample_value("concurrency_injector_warnings_total", {"kind": "capped"}) or 0
    answer = handler.handle_now(review(pod(gunicorn(cpu="1e9"))))
    assert answer.warnings == [
        "container 'web': WEB_CONCURRENCY 1000000000 for 1000000000 CPU capped to 4096 (the bound)"]
    assert REGISTRY.get_sample_value("concurrency_injector_warnings_total", {"kind": "capped"}) == before + 1


@pytest.mark.parametrize("memory", ["lots", [1], True], ids=["text", "list", "bool"])
def test_an_invalid_memory_limit_is_warned_where_the_memory_guard_reads_it(memory: object) -> None:
    guard = {"concurrency-injector.io/memory-per-worker": "200Mi"}
    read = decide(pod(gunicorn(cpu="2", memory=memory), annotations=guard), Settings().options)
    assert "container 'web' has an invalid memory limit; memory guard not applied" in read.warnings
    assert read.invalid
    assert read.containers[0].set["WEB_CONCURRENCY"] == "2"
    unread = decide(pod(gunicorn(cpu="2", memory=memory)), Settings().options)
    assert not unread.invalid
    assert not any("memory" in w for w in unread.warnings)
