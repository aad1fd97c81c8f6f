from __future__ import annotations

from decimal import Decimal

import pytest

from webhook.config import ConfigError, Settings
from webhook.wiring import in_cluster_problem


def test_defaults_follow_the_spec() -> None:
    s = Settings.from_env({})
    assert (s.mode, s.rounding, s.workers_per_cpu, s.min_workers, s.max_workers) == (
        "enforce",
        "floor",
        Decimal(1),
        1,
        None,
    )
    assert (s.port, s.registry_timeout, s.python_cpu_count, s.resize_restart) == (
        8443,
        2.0,
        True,
        False,
    )


def test_every_setting_reads_from_its_variable() -> None:
    s = Settings.from_env(
        {
            "CONCURRENCY_INJECTOR_MODE": "audit",
            "CONCURRENCY_INJECTOR_ROUNDING": "ceil",
            "CONCURRENCY_INJECTOR_WORKERS_PER_CPU": "1.5",
            "CONCURRENCY_INJECTOR_MIN_WORKERS": "2",
            "CONCURRENCY_INJECTOR_MAX_WORKERS": "8",
            "CONCURRENCY_INJECTOR_MEMORY_PER_WORKER": "256Mi",
            "CONCURRENCY_INJECTOR_RESIZE_RESTART": "true",
            "CONCURRENCY_INJECTOR_PYTHON_CPU_COUNT": "false",
            "CONCURRENCY_INJECTOR_INSECURE_REGISTRY": "localhost:5000, reg:80",
            "CONCURRENCY_INJECTOR_REGISTRY_TIMEOUT": "1.5",
            "CONCURRENCY_INJECTOR_PORT": "9443",
        }
    )
    assert (s.mode, s.rounding) == ("audit", "ceil")
    assert (s.workers_per_cpu, s.min_workers, s.max_workers) == (Decimal("1.5"), 2, 8)
    assert s.memory_per_worker == Decimal(268435456)
    assert (s.resize_restart, s.python_cpu_count) == (True, False)
    assert s.insecure_registry == ("localhost:5000", "reg:80")
    assert (s.registry_timeout, s.port) == (1.5, 9443)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"CONCURRENCY_INJECTOR_MODE": "strict"},
            "CONCURRENCY_INJECTOR_MODE='strict': expected one of enforce, audit",
        ),
        ({"CONCURRENCY_INJECTOR_MIN_WORKERS": "0"}, "CONCURRENCY_INJECTOR_MIN_WORKERS='0'"),
        ({"CONCURRENCY_INJECTOR_WORKERS_PER_CPU": "-1"}, "expected a number above 0"),
        (
            {"CONCURRENCY_INJECTOR_MEMORY_PER_WORKER": "lots"},
            "CONCURRENCY_INJECTOR_MEMORY_PER_WORKER='lots'",
        ),
        ({"CONCURRENCY_INJECTOR_PORT": "99999"}, "expected a port"),
        ({"CONCURRENCY_INJECTOR_RESIZE_RESTART": "maybe"}, "expected true or false"),
        (
            {"CONCURRENCY_INJECTOR_MIN_WORKERS": "4", "CONCURRENCY_INJECTOR_MAX_WORKERS": "2"},
            "CONCURRENCY_INJECTOR_MAX_WORKERS=2 is below CONCURRENCY_INJECTOR_MIN_WORKERS=4",
        ),
        ({"CONCURRENCY_INJECTOR_REGISTRY_TIMEOUT": "60"}, "must be 0 to 30 seconds"),
        ({"CONCURRENCY_INJECTOR_PLATFORM": "amd64"}, "expected os/arch"),
    ],
    ids=[
        "mode",
        "min",
        "per-cpu",
        "memory",
        "port",
        "bool",
        "min-above-max",
        "timeout",
        "platform",
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    assert message in str(err.value)


def test_in_cluster_features_outside_a_cluster_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    assert in_cluster_problem(Settings()) is None
    problem = in_cluster_problem(Settings(read_configmaps=True, tls_self_managed=True))
    assert problem == (
        "CONCURRENCY_INJECTOR_READ_CONFIGMAPS=true, CONCURRENCY_INJECTOR_TLS_SELF_MANAGED=true "
        "needs the in-cluster service account: Service host/port is not set."
    )
