from __future__ import annotations

import pytest

from tests.podgen import container, pod
from webhook.config import Settings
from webhook.core.commands import find_server
from webhook.core.detection import images_to_resolve, select_targets
from webhook.core.types import ImageConfig

PROFILES = Settings().profiles()

GUNICORN = ["gunicorn", "app:app"]


@pytest.mark.parametrize(
    ("argv", "runtime", "args"),
    [
        (["gunicorn", "-w", "4", "app:app"], "gunicorn", ("-w", "4", "app:app")),
        (["/usr/local/bin/gunicorn", "app:app"], "gunicorn", ("app:app",)),
        (
            ["uvicorn", "main:app", "--host", "0.0.0.0"],
            "uvicorn",
            ("main:app", "--host", "0.0.0.0"),
        ),
        (["python", "-m", "gunicorn", "app:app"], "gunicorn", ("app:app",)),
        (["python3", "-m", "uvicorn", "app:app"], "uvicorn", ("app:app",)),
        (["/opt/venv/bin/python3.12", "-u", "-m", "uvicorn", "a:b"], "uvicorn", ("a:b",)),
        (["python", "-X", "importtime", "-m", "gunicorn"], "gunicorn", ()),
        (["python", "-mgunicorn", "app"], "gunicorn", ("app",)),
        (["sh", "-c", "cd /app && exec gunicorn app:app"], "gunicorn", ("app:app",)),
        (["/bin/bash", "-ec", "python manage.py migrate; gunicorn x"], "gunicorn", ("x",)),
        (["sh", "-c", "exec uvicorn a:b --workers $W"], "uvicorn", ("a:b", "--workers", "$W")),
        (["sh", "-c", 'exec "$@"', "--", "gunicorn", "a"], "gunicorn", ("a",)),
        (["tini", "--", "gunicorn", "a"], "gunicorn", ("a",)),
        (["dumb-init", "uv", "run", "uvicorn", "a"], "uvicorn", ("a",)),
        (["env", "A=b", "C=d", "gunicorn"], "gunicorn", ()),
        (["poetry", "run", "gunicorn", "a"], "gunicorn", ("a",)),
        (["ddtrace-run", "gunicorn", "a"], "gunicorn", ("a",)),
        (["newrelic-admin", "run-program", "uvicorn", "a"], "uvicorn", ("a",)),
        (["nice", "-n", "10", "gunicorn"], "gunicorn", ()),
        (["sh", "-c", "A=1 gunicorn a\necho done"], "gunicorn", ("a",)),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_find_server(argv: list[str], runtime: str, args: tuple[str, ...]) -> None:
    found = find_server(argv, PROFILES)
    assert found is not None
    assert (found.runtime, found.args) == (runtime, args)


@pytest.mark.parametrize(
    "argv",
    [
        ["python", "manage.py", "runserver"],
        ["python", "-c", "import gunicorn"],
        ["sh", "-c", "pip install gunicorn && echo celery -A x worker"],
        ["python", "manage.py", "migrate", "&&", "gunicorn", "app:app"],
        ["celery", "-A", "proj", "beat"],
        ["airflow", "scheduler"],
        ["sh", "script.sh"],
        ["echo", "gunicorn"],
        ["gunicorn-exporter"],
        ["sh", "-c"],
        ["sh", "-c", "echo 'unbalanced"],
        [],
    ],
    ids=lambda v: " ".join(v) or "empty",
)
def test_not_a_server(argv: list[str]) -> None:
    assert find_server(argv, PROFILES) is None


def image(
    *,
    labels: dict[str, str] | None = None,
    entrypoint: list[str] | None = None,
    cmd: list[str] | None = None,
    env: list[str] | None = None,
) -> ImageConfig:
    return {"labels": labels or {}, "entrypoint": entrypoint, "cmd": cmd, "env": env or []}


IMG = "registry.example/app:1"
LABELLED = image(labels={"io.concurrency-injector.runtime": "uvicorn"}, cmd=["python", "x.py"])
GUNICORN_CMD = image(cmd=["gunicorn", "app:app"])
UVICORN_ENTRYPOINT = image(entrypoint=["uvicorn"], cmd=["main:app"])
WRAPPER_ENTRYPOINT = image(entrypoint=["docker-entrypoint.sh"], cmd=["gunicorn", "a"])


@pytest.mark.parametrize(
    ("containers", "images", "expected"),
    [
        ([container(command=GUNICORN)], {}, [("web", "gunicorn", "command")]),
        ([container(args=["uvicorn", "a:b"])], {}, [("web", "uvicorn", "command")]),
        ([container()], {IMG: LABELLED}, [("web", "uvicorn", "image-label")]),
        ([container()], {IMG: GUNICORN_CMD}, [("web", "gunicorn", "image-command")]),
        ([container()], {IMG: UVICORN_ENTRYPOINT}, [("web", "uvicorn", "image-command")]),
        # args replace the image's Cmd, command its Entrypoint
        ([container(args=["celery", "worker"])], {IMG: GUNICORN_CMD}, [("web", "celery", "command")]),
        (
            [container(args=["main:app"])],
            {IMG: UVICORN_ENTRYPOINT},
            [("web", "uvicorn", "image-command")],
        ),
        ([container(command=["celery", "worker"])], {IMG: LABELLED}, [("web", "celery", "command")]),
        ([container(command=["python", "w.py"])], {IMG: GUNICORN_CMD}, []),
        ([container()], {}, []),
        ([container()], {IMG: image(labels={"io.concurrency-injector.runtime": "java"})}, []),
        (
            [container(args=["python", "x.py"])],
            {IMG: LABELLED},
            [("web", "uvicorn", "image-label")],
        ),
        ([container(image="redis:7")], {}, []),
        (
            [container("a", command=GUNICORN), container("b", command=["uvicorn", "x"])],
            {},
            [("a", "gunicorn", "command"), ("b", "uvicorn", "command")],
        ),
    ],
    ids=[
        "command",
        "args-only",
        "image-label",
        "image-cmd",
        "image-entrypoint",
        "args-replace-cmd",
        "args-with-entrypoint",
        "command-beats-label",
        "command-beats-cmd",
        "unknown-image",
        "label-bad-value",
        "label-applies-with-args",
        "redis",
        "two-targets",
    ],
)
def test_detection_rule(
    containers: list[dict[str, object]],
    images: dict[str, ImageConfig],
    expected: list[tuple[str, str, str]],
) -> None:
    targets, warnings = select_targets(pod(*containers), images, PROFILES)
    assert [(t.name, t.runtime, t.source) for t in targets] == expected
    assert warnings == []


def test_init_containers_are_not_detected() -> None:
    p = pod(container("app", command=["sleep", "1"]), init=[container("init", command=GUNICORN)])
    assert select_targets(p, {}, PROFILES) == ([], [])


def test_opt_out_annotation_wins_over_everything() -> None:
    p = pod(
        container(command=GUNICORN),
        annotations={
            "concurrency-injector.io/inject": "false",
            "concurrency-injector.io/containers": "web",
        },
    )
    assert select_targets(p, {}, PROFILES) == ([], [])


def test_container_list_includes_init_and_warns_on_missing_name() -> None:
    p = pod(
        container("worker", command=["celery", "worker"]),
        container("web", command=GUNICORN),
        init=[container("setup", command=["python", "migrate.py"])],
        annotations={"concurrency-injector.io/containers": "worker, setup,ghost"},
    )
    targets, warnings = select_targets(p, {}, PROFILES)
    assert [(t.name, t.init, t.runtime, t.source) for t in targets] == [
        ("worker", False, "celery", "annotation"),
        ("setup", True, "python", "annotation"),
    ]
    assert warnings == [
        "concurrency-injector.io/containers lists 'ghost', which is not a container of this pod"
    ]


def test_container_list_keeps_detected_runtime_and_runtime_annotation_wins() -> None:
    p = pod(
        container("web", command=GUNICORN),
        annotations={"concurrency-injector.io/containers": "web"},
    )
    assert [t.runtime for t in select_targets(p, {}, PROFILES)[0]] == ["gunicorn"]
    p["metadata"]["annotations"]["concurrency-injector.io/runtime"] = "uvicorn"
    assert [t.runtime for t in select_targets(p, {}, PROFILES)[0]] == ["uvicorn"]


@pytest.mark.parametrize(
    ("annotations", "expected", "warnings"),
    [
        ({"concurrency-injector.io/runtime": "gunicorn"}, [("first", "gunicorn")], []),
        (
            {
                "concurrency-injector.io/runtime": "python",
                "kubectl.kubernetes.io/default-container": "second",
            },
            [("second", "python")],
            [],
        ),
        (
            {
                "concurrency-injector.io/runtime": "uvicorn",
                "kubectl.kubernetes.io/default-container": "gone",
            },
            [("first", "uvicorn")],
            [
                "kubectl.kubernetes.io/default-container names missing container 'gone'; using 'first'"
            ],
        ),
        (
            {"concurrency-injector.io/runtime": "tomcat"},
            [],
            [
                "concurrency-injector.io/runtime='tomcat' names no active profile; ignored"
            ],
        ),
    ],
    ids=["first-container", "default-container", "missing-default", "bad-runtime"],
)
def test_runtime_annotation_targets_default_container(
    annotations: dict[str, str], expected: list[tuple[str, str]], warnings: list[str]
) -> None:
    p = pod(
        container("first", command=["app"]),
        container("second", command=["app"]),
        annotations=annotations,
    )
    targets, found = select_targets(p, {}, PROFILES)
    assert [(t.name, t.runtime) for t in targets] == expected
    assert [t.source for t in targets] == ["annotation"] * len(expected)
    assert found == warnings


@pytest.mark.parametrize(
    ("p", "expected"),
    [
        (pod(container(), container("b", image="x:1")), [IMG, "x:1"]),
        (pod(container(), container("b")), [IMG]),
        (pod(container(command=GUNICORN)), []),
        (pod(container(args=["gunicorn", "a"])), []),
        (pod(container(args=["main:app"])), [IMG]),
        (pod(container(), annotations={"concurrency-injector.io/inject": "false"}), []),
        (pod(container(), annotations={"concurrency-injector.io/containers": "web"}), []),
        (pod(container(), annotations={"concurrency-injector.io/runtime": "python"}), []),
        (pod(container(command=["x"]), init=[container("i")]), []),
    ],
    ids=[
        "two-images",
        "deduplicated",
        "command",
        "args-detected",
        "args-need-entrypoint",
        "opted-out",
        "listed",
        "runtime-annotation",
        "init-only",
    ],
)
def test_images_to_resolve(p: dict[str, object], expected: list[str]) -> None:
    assert images_to_resolve(p, PROFILES) == expected
