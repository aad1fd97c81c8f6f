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
