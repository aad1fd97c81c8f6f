"""`survey` offline, on manifests: every source of today's worker count, and every verdict.

The same rows come from a live cluster in tests/apiserver/test_survey.py; here each row is
decided from a file, through the same handler, with `--node-cpus` standing in for the node.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from tests.podgen import container
from webhook.cli import build_parser
from webhook.config import Settings
from webhook.survey import command

Obj = dict[str, Any]
GUNICORN = ["gunicorn", "app:app"]
CELERY = ["celery", "-A", "proj", "worker"]


def deployment(*containers: Obj, name: str = "web") -> Obj:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"template": {"spec": {"containers": list(containers)}}},
    }


def survey(tmp_path: Path, *documents: Obj, extra: tuple[str, ...] = ()) -> Obj:
    source = tmp_path / "in.yaml"
    source.write_text(yaml.safe_dump_all(documents))
    args = build_parser().parse_args(["survey", "-f", str(source), "-o", "json", *extra])
    out, err = io.StringIO(), io.StringIO()
    assert command.run(args, Settings(no_registry=True), stdout=out, stderr=err) == 0, err
    return dict(orjson.loads(out.getvalue()))


def env(**values: str) -> list[Obj]:
    return [{"name": k, "value": v} for k, v in values.items()]


CASES: list[tuple[str, Obj, tuple[Any, ...]]] = [
    (
        "gunicorn-flag",
        container(command=["gunicorn", "-w", "9", "app:app"], cpu="1"),
        (9, "flag -w", "WEB_CONCURRENCY=1", "trapped", "9 workers on 1 CPU: throttled when busy"),
    ),
    (
        "gunicorn-cmd-args",
        container(command=GUNICORN, cpu="2", env=env(GUNICORN_CMD_ARGS="--workers 3 -t 30")),
        (3, "flag --workers in env GUNICORN_CMD_ARGS", "WEB_CONCURRENCY=2", "trapped",
         "3 workers on 2 CPUs: throttled when busy"),
    ),
    (
        "env-value-kept",
        container(command=GUNICORN, cpu="2", env=env(WEB_CONCURRENCY="2")),
        (2, "env WEB_CONCURRENCY", "nothing (the container sets it)", "ok", "2 workers for 2 CPUs"),
    ),
    (
        "env-value-from",
        container(
            command=GUNICORN,
            cpu="2",
            env=[{"name": "WEB_CONCURRENCY", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}],
        ),
        (None, "env WEB_CONCURRENCY", "nothing (the container sets it)", "unknown",
         "env WEB_CONCURRENCY comes from valueFrom"),
    ),
    (
        "dependent-arg",
        container(command=["gunicorn", "--workers", "$(W)", "app"], cpu="4", env=env(W="5")),
        (5, "flag --workers from env W", "WEB_CONCURRENCY=4", "trapped",
         "5 workers on 4 CPUs: throttled when busy"),
    ),
    (
        "envfrom-secret",
        container(command=GUNICORN, cpu="2", envFrom=[{"secretRef": {"name": "s"}}]),
        (None, "unknown", "nothing", "unknown",
         "envFrom Secret 's' not read; it may set the count"),
    ),
    (
        "gunicorn-config-file",
        container(command=["gunicorn", "-c", "conf.py", "app"], cpu="2"),
        (None, "config file conf.py", "WEB_CONCURRENCY=2", "unknown", "a config file may set it"),
    ),
    (
        "uvicorn-default",
        container(command=["uvicorn", "app:app"], cpu="4"),
        (1, "uvicorn default", "WEB_CONCURRENCY=4", "under-used", "1 worker for 4 CPUs"),
    ),
    (
        "uvicorn-override-env",
        container(command=["uvicorn", "app:app"], cpu="4", env=env(UVICORN_WORKERS="8")),
        (8, "env UVICORN_WORKERS", "WEB_CONCURRENCY=4", "trapped",
         "8 workers on 4 CPUs: throttled when busy"),
    ),
    (
        "uvicorn-reload",
        container(command=["uvicorn", "app:app", "--reload"], cpu="1"),
        (1, "flag --reload", "WEB_CONCURRENCY=1", "ok", "1 worker for 1 CPU"),
    ),
    (
        "celery-node",
        container(command=CELERY, cpu="2"),
        (16, "node CPU count (--node-cpus)", "CELERY_WORKER_CONCURRENCY=2", "trapped",
         "16 workers on 2 CPUs: throttled when busy"),
    ),
    (
        "celery-flag",
        container(command=[*CELERY, "-c", "2"], cpu="2"),
        (2, "flag -c", "CELERY_WORKER_CONCURRENCY=2", "ok", "2 workers for 2 CPUs"),
    ),
    (
        "hypercorn-no-variable",
        container(command=["hypercorn", "app:app"], cpu="1"),
        (1, "hypercorn default", "nothing (reads no variable)", "ok", "1 worker for 1 CPU"),
    ),
    (
        "no-cpu-limit",
        container(command=["granian", "app:app"], cpu=None),
        (1, "granian default", "nothing", "unknown",
         "container 'web' has no CPU limit; nothing injected"),
    ),
]


@pytest.mark.parametrize(("spec", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_source_of_the_worker_count_and_each_verdict(
    tmp_path: Path, spec: Obj, expected: tuple[Any, ...]
) -> None:
    result = survey(tmp_path, deployment(spec), extra=("--node-cpus", "16"))
    [row] = result["rows"]
    got = (
        row["currentWorkers"], row["workersSource"], row["wouldSet"], row["verdict"], row["reason"]
    )
    assert got == expected


def test_envfrom_configmap_in_the_input_gives_the_count(tmp_path: Path) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "web-config", "namespace": "shop"},
        "data": {"CONCURRENCY": "6", "WEB_CONCURRENCY": "1"},
    }
    web = container(
        command=GUNICORN,
        cpu="2",
        envFrom=[{"configMapRef": {"name": "web-config"}, "prefix": "WEB_"}],
    )
    [row] = survey(tmp_path, config, deployment(web))["rows"]
    assert row["currentWorkers"] == 6
    assert row["workersSource"] == "envFrom ConfigMap web-config WEB_CONCURRENCY"
    assert row["wouldSet"] == "nothing (the container sets it)"
    assert row["verdict"] == "trapped"


def test_rows_and_summary_in_json_and_no_row_for_other_containers(tmp_path: Path) -> None:
    result = survey(
        tmp_path,
        deployment(
            container("api", command=["gunicorn", "-w", "9", "app"], cpu="1"),
            container("proxy", image="envoyproxy/envoy:v1", cpu="1"),
        ),
        deployment(container("redis", image="redis:7", command=["redis-server"]), name="cache"),
        deployment(container("worker", command=CELERY, cpu="2"), name="worker"),
    )
    assert result["rows"] == [
        {
            "namespace": "shop",
            "kind": "Deployment",
            "name": "web",
            "container": "api",
            "runtime": "gunicorn",
            "cpuLimit": "1",
            "currentWorkers": 9,
            "workersSource": "flag -w",
            "wouldSet": "WEB_CONCURRENCY=1",
            "verdict": "trapped",
            "reason": "9 workers on 1 CPU: throttled when busy",
        },
        {
            "namespace": "shop",
            "kind": "Deployment",
            "name": "worker",
            "container": "worker",
            "runtime": "celery",
            "cpuLimit": "2",
            "currentWorkers": None,
            "workersSource": "node CPU count",
            "wouldSet": "CELERY_WORKER_CONCURRENCY=2",
            "verdict": "unknown",
            "reason": "defaults to the node's CPUs; no node known",
        },
    ]
    assert result["summary"] == {
        "workloads": 2,
        "containers": 2,
        "trapped": 1,
        "under-used": 0,
        "ok": 0,
        "unknown": 1,
        "forbidden": [],
        "notes": [],
    }


def test_table_ends_with_the_totals(tmp_path: Path) -> None:
    source = tmp_path / "in.yaml"
    source.write_text(yaml.safe_dump(deployment(container(command=["uvicorn", "a:app"], cpu="4"))))
    args = build_parser().parse_args(["survey", "-f", str(source)])
    out = io.StringIO()
    assert command.run(args, Settings(no_registry=True), stdout=out, stderr=io.StringIO()) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].split() == [
        "NAMESPACE", "KIND", "NAME", "CONTAINER", "RUNTIME", "CPU", "WORKERS", "FROM", "WOULD",
        "SET", "VERDICT", "REASON",
    ]
    assert lines[1].split()[:6] == ["shop", "Deployment", "web", "web", "uvicorn", "4"]
    assert lines[-1] == (
        "1 Python container in 1 workload: 0 trapped, 1 under-used, 0 ok, 0 unknown"
    )


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {}\n",
         "document 1: Deployment web has no spec.template"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: ns}\n"
         "spec: {containers: [{name: web, command: [gunicorn, 5]}]}\n",
         "Pod ns/p: "),
    ],
    ids=["no-template", "bad-command"],
)
def test_manifests_that_are_not_workloads_exit_2_naming_the_file(
    tmp_path: Path, document: str, message: str
) -> None:
    """Offline, a bad manifest is bad input (2), not a note; in a cluster one odd object is a
    note, so it does not hide the rest."""
    source = tmp_path / "bad.yaml"
    source.write_text(document)
    args = build_parser().parse_args(["survey", "-f", str(source), "-o", "json"])
    out, err = io.StringIO(), io.StringIO()
    assert command.run(args, Settings(no_registry=True), stdout=out, stderr=err) == 2
    assert out.getvalue() == ""
    assert err.getvalue().startswith(f"concurrency-injector: {source}: {message}"), err.getvalue()


def test_an_unreachable_cluster_exits_3(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    args = build_parser().parse_args(["survey", "--kubeconfig", str(kubeconfig), "-A"])
    err = io.StringIO()
    code = command.run(args, Settings(no_registry=True), stdout=io.StringIO(), stderr=err)
    assert code == 3
    assert err.getvalue().startswith("concurrency-injector: cannot reach the cluster")


class Terminal(io.StringIO):
    """stderr as a terminal (the progress line shows only there)."""

    def isatty(self) -> bool:
        return True


def test_progress_is_shown_on_a_terminal_only() -> None:
    from webhook.survey.cluster import Progress

    assert Progress.if_terminal(io.StringIO()) is None
    terminal = Terminal()
    progress = Progress.if_terminal(terminal)
    assert progress is not None
    progress.advance("pods", 500)
    progress.advance("pods", 20)
    progress.advance("deployments", 3)
    progress.done()
    assert terminal.getvalue() == (
        "\rreading: pods 500\rreading: pods 520\rreading: pods 520, deployments 3\r\033[K"
    )
