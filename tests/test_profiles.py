"""Profiles: the shipped data file, user profiles, and every command form of the issue table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.podgen import container, pod
from webhook.config import ConfigError, Settings
from webhook.core import profiles
from webhook.core.commands import Branches, ServerCommand, read_command
from webhook.core.decision import decide
from webhook.core.detection import select_targets

PACKAGE = Path(profiles.__file__).parent
PROFILES = Settings().profiles()


def test_shipped_profiles_follow_the_schema() -> None:
    schema = json.loads((PACKAGE / "profiles.schema.json").read_text())
    data = yaml.safe_load((PACKAGE / "profiles.yaml").read_text())
    jsonschema.validate(data, schema)
    assert len(profiles.parse_profiles(data, source="test")) == len(data["profiles"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[{name: Bad, env: []}]", "profile 'Bad': name must be"),
        ("[{name: x}]", "profile 'x': env is required"),
        ("[{name: x, env: [1]}]", "profile 'x': env must be a list of strings"),
        ("[{name: x, env: [A], colour: red}]", "profile 'x': unknown field(s) colour"),
        ("[{name: x, env: [A], flags: [workers]}]", "profile 'x': flags has invalid entries"),
        ("[{name: x, env: [A], launchers: [[x]]}]", "profile 'x': launchers must be"),
        ("{", "not valid YAML or JSON"),
        ("[{name: x, env: [A], defaultWorkers: 0}]", "profile 'x': defaultWorkers must be"),
        ("[{name: x, env: [A], defaultWorkers: all}]", "profile 'x': defaultWorkers must be"),
    ],
    ids=[
        "name",
        "no-env",
        "env-type",
        "unknown-field",
        "bad-flag",
        "launcher",
        "yaml",
        "default-zero",
        "default-word",
    ],
)
def test_a_bad_user_profile_stops_start_up_naming_it(extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match="CONCURRENCY_INJECTOR_EXTRA_PROFILES") as caught:
        Settings.from_env({"CONCURRENCY_INJECTOR_EXTRA_PROFILES": extra})
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("gunicorn", 1),
        ("uvicorn", 1),
        ("granian", 1),
        ("uwsgi", 1),
        ("hypercorn", 1),
        ("celery", "cpu_count"),
        ("dramatiq", "cpu_count"),
        ("python", None),
        ("airflow-webserver", None),
    ],
)
def test_each_runtime_records_the_worker_count_it_defaults_to(name: str, expected: Any) -> None:
    """What a runtime runs with when nothing sets it (profiles.yaml cites each source)."""
    profile = PROFILES.get(name)
    assert profile is not None
    assert profile.default_workers == expected


def test_a_user_profile_may_give_its_default_worker_count() -> None:
    extra = "[{name: acme, env: [ACME_WORKERS], defaultWorkers: cpu_count}]"
    settings = Settings.from_env({"CONCURRENCY_INJECTOR_EXTRA_PROFILES": extra})
    acme = settings.profiles().get("acme")
    assert acme is not None
    assert acme.default_workers == "cpu_count"


def test_a_user_profile_for_an_in_house_launcher() -> None:
    extra = json.dumps([{"name": "acme-serve", "launchers": [["acme", "serve"]],
                         "env": ["ACME_WORKERS"], "flags": ["--procs"]}])
    settings = Settings.from_env({"CONCURRENCY_INJECTOR_EXTRA_PROFILES": extra})
    p = pod(container(command=["acme", "--verbose", "serve", "--procs", "3"], cpu="2"))
    decision = decide(p, settings.options)
    assert decision.containers[0].set == {
        "ACME_WORKERS": "2", "CPU_LIMIT": "limits.cpu", "PYTHON_CPU_COUNT": "2"}
    assert decision.warnings == ["container 'web': --procs 3 in args overrides ACME_WORKERS, above the CPU limit (2)"]


def test_disabled_runtime_is_never_a_target_and_an_unknown_name_stops_start_up() -> None:
    settings = Settings.from_env({"CONCURRENCY_INJECTOR_DISABLED_PROFILES": "celery"})
    assert decide(pod(container(command=["celery", "-A", "p", "worker"])), settings.options).patch == []
    with pytest.raises(ConfigError, match="no profile named nope"):
        Settings.from_env({"CONCURRENCY_INJECTOR_DISABLED_PROFILES": "nope"})


SH = ["sh", "-c"]
COMMANDS: list[tuple[str, list[str], Any]] = [
    ("granian", ["granian", "--interface", "asgi", "main:app"], "granian"),
    ("uwsgi", ["uwsgi", "--http", ":8000", "--module", "app"], "uwsgi"),
    ("celery-worker", ["celery", "-A", "proj", "worker", "-l", "info"], "celery"),
    ("python-m-celery", ["python", "-m", "celery", "-A", "p", "worker"], "celery"),
    ("celery-beat", ["celery", "-A", "proj", "beat"], None),
    ("fastapi-run", ["fastapi", "run", "main.py"], "uvicorn"),
    ("gunicorn-wsgiapp", ["python", "-m", "gunicorn.app.wsgiapp", "a:b"], "gunicorn"),
    ("hypercorn", ["hypercorn", "main:app"], "hypercorn"),
    ("daphne", ["daphne", "proj.asgi:application"], "daphne"),
    ("dramatiq", ["dramatiq", "tasks"], "dramatiq"),
    ("airflow-webserver", ["airflow", "webserver"], "airflow-webserver"),
    ("airflow-api-server", ["airflow", "api-server", "--port", "8080"], "airflow-api-server"),
    ("airflow-scheduler", ["airflow", "scheduler"], None),
    ("superset", ["/usr/bin/run-server.sh"], "superset"),
    ("authentik", ["/lifecycle/ak", "server"], "authentik"),
    ("label-studio", ["label-studio-uwsgi"], "label-studio"),
    ("sentry", ["sentry", "run", "web", "--workers", "5"], "sentry"),
    ("otel-options", ["opentelemetry-instrument", "--traces_exporter", "otlp", "uvicorn", "a:b"], "uvicorn"),
    ("gosu", ["gosu", "app", "gunicorn", "a"], "gunicorn"),
    ("su-exec", ["su-exec", "user", "gunicorn", "a"], "gunicorn"),
    ("doppler", ["doppler", "run", "--", "gunicorn", "a"], "gunicorn"),
    ("chamber", ["chamber", "exec", "svc", "--", "gunicorn", "a"], "gunicorn"),
    ("env-u", ["env", "-u", "FOO", "gunicorn", "a"], "gunicorn"),
    ("exec-form-and", ["python", "manage.py", "migrate", "&&", "gunicorn", "a"], None),
    ("shell-and", [*SH, "python manage.py migrate && gunicorn a"], "gunicorn"),
    ("continuation", [*SH, "exec gunicorn a \\\n  --workers 4"], "gunicorn"),
    ("if-then", [*SH, 'if [ -n "$X" ]; then exec gunicorn a; fi'], "gunicorn"),
    ("while-do", [*SH, "while true; do gunicorn a; done"], "gunicorn"),
    ("case-known", [*SH, 'case "$1" in web) exec gunicorn a ;; worker) exec celery -A p worker ;; esac', "--", "worker"], "celery"),
    ("case-unknown", [*SH, 'case "$1" in web) exec gunicorn a ;; worker) exec celery -A p worker ;; esac'], ("celery", "gunicorn")),
    ("case-same", [*SH, 'case "$1" in a) exec gunicorn x ;; *) exec gunicorn y ;; esac'], "gunicorn"),
    ("entrypoint-args", ["dumb-init", "--", "/entrypoint", "gunicorn", "--workers", "4", "a"], "gunicorn"),
    ("docker-entrypoint", ["docker-entrypoint.sh", "uvicorn", "a:b"], "uvicorn"),
    ("exec-dollar-at", [*SH, 'exec "$@"', "--", "granian", "a:b"], "granian"),
]


@pytest.mark.parametrize(("argv", "expected"), [(a, e) for _, a, e in COMMANDS],
                         ids=[i for i, _, _ in COMMANDS])
def test_command_forms(argv: list[str], expected: Any) -> None:
    found = read_command(argv, PROFILES)
    if expected is None:
        assert found is None
    elif isinstance(expected, tuple):
        assert found == Branches(expected)
    else:
        assert isinstance(found, ServerCommand)
        assert found.runtime == expected


ENV: list[tuple[str, dict[str, Any], dict[str, str], list[str]]] = [
    ("granian", container(command=["granian", "main:app"], cpu="3"),
     {"GRANIAN_WORKERS": "3"}, []),
    ("uwsgi-flag", container(command=["uwsgi", "--http", ":80", "-p", "8"], cpu="2"),
     {"UWSGI_PROCESSES": "2"}, ["container 'web': --processes 8 in args overrides UWSGI_PROCESSES, above the CPU limit (2)"]),
    ("uwsgi-ini", container(command=["uwsgi", "--ini", "app.ini"], cpu="2"),
     {"UWSGI_PROCESSES": "2"}, ["container 'web': config file app.ini (--ini) may set the worker count"]),
    ("celery", container(command=["celery", "-A", "p", "worker"], cpu="1500m"),
     {"CELERY_WORKER_CONCURRENCY": "1"}, []),
    ("celery-c", container(command=["celery", "-A", "p", "worker", "-c", "9"], cpu="2"),
     {"CELERY_WORKER_CONCURRENCY": "2"}, ["container 'web': --concurrency 9 in args overrides CELERY_WORKER_CONCURRENCY, above the CPU limit (2)"]),
    ("uvicorn-reload", container(command=["uvicorn", "a:b", "--reload"], cpu="2"),
     {"WEB_CONCURRENCY": "2"}, ["container 'web': --reload in args runs one process; WEB_CONCURRENCY unused"]),
    ("uvicorn-env", container(command=["uvicorn", "a:b"], cpu="2", env=[{"name": "UVICORN_WORKERS", "value": "6"}]),
     {"WEB_CONCURRENCY": "2"}, ["container 'web': UVICORN_WORKERS=6 overrides WEB_CONCURRENCY, above the CPU limit (2)"]),
    ("hypercorn", container(command=["hypercorn", "a:b"], cpu="2"),
     {}, ["container 'web': hypercorn reads no worker variable; set --workers in the container's args"]),
    ("sentry-flag", container(command=["sentry", "run", "web", "--workers", "2"], cpu="2"),
     {}, []),
    ("sentry-flag-above", container(command=["sentry", "run", "web", "--workers", "5"], cpu="2"),
     {}, ["container 'web': --workers 5 in args is above the CPU limit (2)"]),
    ("sentry", container(command=["sentry", "run", "web"], cpu="2"),
     {}, ["container 'web': sentry reads no worker variable; set workers in SENTRY_WEB_OPTIONS (sentry.conf.py)"]),
    ("airflow", container(command=["airflow", "webserver"], cpu="4"),
     {"AIRFLOW__WEBSERVER__WORKERS": "4"}, []),
    ("superset-image", container(image="apache/superset:4.1.1", cpu="2"),
     {"SERVER_WORKER_AMOUNT": "2"}, []),
    ("authentik-image-args", container(image="ghcr.io/goauthentik/server:2025.2", args=["server"], cpu="2"),
     {"AUTHENTIK_WEB__WORKERS": "2"}, []),
    ("authentik-worker", container(image="ghcr.io/goauthentik/server:2025.2", args=["worker"], cpu="2"),
     {}, []),
]


@pytest.mark.parametrize(("c", "workers", "warnings"), [(c, w, x) for _, c, w, x in ENV],
                         ids=[i for i, _, _, _ in ENV])
def test_each_runtime_gets_its_own_variable(
    c: dict[str, Any], workers: dict[str, str], warnings: list[str]
) -> None:
    decision = decide(pod(c), Settings().options)
    got = {k: v for r in decision.containers for k, v in r.set.items()
           if k not in ("CPU_LIMIT", "PYTHON_CPU_COUNT")}
    assert got == workers
    assert decision.warnings == warnings


def test_uvicorn_run_app_object_is_capped_at_one_worker_unless_opted_in() -> None:
    """`uvicorn.run(app)` exits when workers > 1 (uvicorn/main.py): never crash-loop a pod."""
    labelled = pod(container(command=["python", "main.py"], cpu="4"),
                   annotations={"concurrency-injector.io/runtime": "uvicorn"})
    decision = decide(labelled, Settings().options)
    assert decision.containers[0].set["WEB_CONCURRENCY"] == "1"
    assert "not run by its CLI" in decision.warnings[0]
    labelled["metadata"]["annotations"]["concurrency-injector.io/multi-worker"] = "true"
    assert decide(labelled, Settings().options).containers[0].set["WEB_CONCURRENCY"] == "4"
    cli = pod(container(command=["uvicorn", "main:app"], cpu="4"),
              annotations={"concurrency-injector.io/runtime": "uvicorn"})
    assert decide(cli, Settings().options).containers[0].set["WEB_CONCURRENCY"] == "4"


def test_undecided_script_is_recorded_in_the_status_and_not_guessed() -> None:
    script = 'case "$1" in web) exec gunicorn a ;; worker) exec celery -A p worker ;; esac'
    p = pod(container(command=["sh", "-c", script], cpu="2"))
    targets, warnings = select_targets(p, {}, PROFILES)
    assert [t.undecided for t in targets] == [("celery", "gunicorn")]
    assert warnings == [
        "container 'web' runs celery or gunicorn by its arguments: not a target; "
        "name it in concurrency-injector.io/containers"
    ]
    decision = decide(p, Settings().options)
    assert decision.containers[0].set == {}
    assert decision.containers[0].skipped == "runs celery or gunicorn by its arguments; not decided"
    assert len(decision.patch) == 1  # the status annotation only


def test_the_chart_checks_extra_profiles_with_the_same_schema() -> None:
    chart = Path(__file__).parent.parent / "charts/concurrency-injector/values.schema.json"
    items = json.loads(chart.read_text())["properties"]["profiles"]["properties"]["extra"]["items"]
    schema = json.loads((PACKAGE / "profiles.schema.json").read_text())
    assert items == schema["$defs"]["profile"]
