"""Builders for Pods and AdmissionReviews used across the tests."""

from __future__ import annotations

import copy
from typing import Any

Obj = dict[str, Any]


def container(
    name: str = "web",
    *,
    command: list[str] | None = None,
    args: list[str] | None = None,
    cpu: str | None = "2",
    memory: str | None = None,
    image: str = "registry.example/app:1",
    **extra: Any,
) -> Obj:
    c: Obj = {"name": name, "image": image}
    if command is not None:
        c["command"] = command
    if args is not None:
        c["args"] = args
    limits = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v is not None}
    if limits:
        c["resources"] = {"limits": limits}
    c.update(extra)
    return c


def pod(
    *containers: Obj,
    annotations: dict[str, str] | None = None,
    init: list[Obj] | None = None,
    pod_cpu: str | None = None,
) -> Obj:
    p: Obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {"containers": list(containers)},
    }
    if annotations is not None:
        p["metadata"]["annotations"] = dict(annotations)
    if init is not None:
        p["spec"]["initContainers"] = init
    if pod_cpu is not None:
        p["spec"]["resources"] = {"limits": {"cpu": pod_cpu}}
    return copy.deepcopy(p)


def gunicorn(name: str = "web", cpu: str | None = "2", **kw: Any) -> Obj:
    return container(name, command=["gunicorn", "app:app"], cpu=cpu, **kw)


def review(
    obj: Obj | None, *, operation: str = "CREATE", kind: str = "Pod", uid: str = "u-1"
) -> Obj:
    group = "" if kind == "Pod" else "apps"
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": group, "version": "v1", "kind": kind},
            "resource": {"group": group, "version": "v1", "resource": kind.lower() + "s"},
            "operation": operation,
            "namespace": "default",
            "object": obj,
        },
    }


def cpu_limit_env(container_name: str) -> Obj:
    return {
        "name": "CPU_LIMIT",
        "valueFrom": {
            "resourceFieldRef": {
                "containerName": container_name,
                "resource": "limits.cpu",
                "divisor": "1",
            }
        },
    }


# --- the native-mode corpus: exec-form commands CEL reads, and forms only the webhook reads ---

NATIVE_COMMANDS: list[list[str] | None] = [
    ["gunicorn", "app:app"],
    ["/usr/local/bin/gunicorn", "-w", "4", "app:app"],
    ["gunicorn", "--workers=3", "--threads", "2", "a:b"],
    ["uvicorn", "main:app", "--host", "0.0.0.0"],
    ["uvicorn", "main:app", "--reload"],
    ["python", "-m", "uvicorn", "m:a"],
    ["python3.12", "-m", "gunicorn", "a"],
    ["python3", "-m", "gunicorn.app.wsgiapp", "a"],
    ["granian", "--interface", "asgi", "m:a"],
    ["uwsgi", "--http", ":8000", "-p", "4"],
    ["uwsgi-core", "--ini", "app.ini"],
    ["celery", "-A", "proj", "worker"],
    ["celery", "-A", "proj", "beat"],
    ["python", "-m", "celery", "-A", "p", "worker", "-c", "4"],
    ["hypercorn", "m:a"],
    ["daphne", "m:a"],
    ["dramatiq", "tasks"],
    ["fastapi", "run", "main.py"],
    ["fastapi", "dev", "main.py"],
    ["airflow", "webserver"],
    ["airflow", "api-server", "-w", "2"],
    ["ak", "server"],
    ["sentry", "run", "web"],
    ["run-server.sh"],
    ["label-studio-uwsgi"],
    ["tini", "--", "gunicorn", "a"],
    ["dumb-init", "uvicorn", "m:a"],
    ["uv", "run", "gunicorn", "a"],
    ["uv", "run", "--", "python", "-m", "uvicorn", "a"],
    ["poetry", "run", "celery", "-A", "p", "worker"],
    ["env", "granian", "m:a"],
    # Only the webhook reads these: options before the server, shells, entrypoint scripts.
    ["tini", "-s", "--", "gunicorn", "a"],
    ["sh", "-c", "exec gunicorn a"],
    ["bash", "-c", "cd /app && uvicorn m:a --workers 2"],
    ["docker-entrypoint.sh", "gunicorn", "a"],
    ["python", "-u", "-m", "gunicorn", "a"],
    ["python", "app.py"],
    ["nginx", "-g", "daemon off;"],
    ["FOO=1", "gunicorn", "a"],
    None,
]
NATIVE_CPUS = [None, "100m", "250m", "500m", "1", "1500m", "2", "3.5", "16", "0.1", "2.25", "0"]
NATIVE_MEMORY = [None, None, "128Mi", "1Gi"]
NATIVE_ENV: list[list[Obj]] = [
    [],
    [],
    [{"name": "LOG_LEVEL", "value": "info"}],
    [{"name": "WEB_CONCURRENCY", "value": "8"}],
    [{"name": "CPU_LIMIT", "value": "4"}],
    [{"name": "PYTHON_CPU_COUNT", "value": "3"}, {"name": "A", "value": "b"}],
    [{"name": "GUNICORN_CMD_ARGS", "value": "--workers 5"}],
]
NATIVE_ANNOTATIONS: list[dict[str, str]] = [
    {},
    {},
    {},
    {},
    {"concurrency-injector.io/runtime": "python"},
    {"concurrency-injector.io/runtime": "uvicorn", "kubectl.kubernetes.io/default-container": "c1"},
    {"concurrency-injector.io/runtime": " Gunicorn "},
    {"concurrency-injector.io/runtime": "uvicorn", "concurrency-injector.io/multi-worker": "true"},
    {"concurrency-injector.io/runtime": "nope"},
    {"concurrency-injector.io/containers": "c0"},
    {"concurrency-injector.io/inject": "false"},
    {"concurrency-injector.io/workers-per-cpu": "2"},
    {"concurrency-injector.io/mode": "audit"},
]


def native_corpus(seed: int, count: int) -> list[Obj]:
    """`count` pods across the forms above, the same ones for the same seed."""
    import random

    rng = random.Random(seed)
    pods = []
    for n in range(count):
        containers = []
        for i in range(rng.randint(1, 4)):
            argv = rng.choice(NATIVE_COMMANDS)
            c: Obj = {"name": f"c{i}", "image": "registry.example/app:1"}
            if argv is not None:
                split = rng.choice([len(argv), len(argv), 1, 0])  # command, args, or both
                if argv[:split]:
                    c["command"] = list(argv[:split])
                if argv[split:]:
                    c["args"] = list(argv[split:])
            limits = {k: v for k, v in (("cpu", rng.choice(NATIVE_CPUS)), ("memory", rng.choice(NATIVE_MEMORY))) if v}
            if limits:
                c["resources"] = {"limits": limits}
            env = copy.deepcopy(rng.choice(NATIVE_ENV))
            if env:
                c["env"] = env
            if rng.random() < 0.08:
                c["envFrom"] = [{"configMapRef": {"name": "settings", "optional": True}}]
            if rng.random() < 0.15:
                c["resizePolicy"] = [{"resourceName": "memory", "restartPolicy": "NotRequired"}]
            containers.append(c)
        spec: Obj = {"containers": containers}
        if rng.random() < 0.1:
            spec["initContainers"] = [{"name": "init", "image": "registry.example/app:1", "command": ["gunicorn", "a"]}]
        pods.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"native-{seed}-{n}", "annotations": dict(rng.choice(NATIVE_ANNOTATIONS))},
                "spec": spec,
            }
        )
    return pods
