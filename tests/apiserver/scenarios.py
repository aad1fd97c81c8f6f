"""Manifests the scenarios create: the repository's examples and small pods, as plain dicts."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from tests.apiserver.cluster import Doc

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
IMAGE = "registry.example.com/shop/web:1.4.2"


def examples(namespace: str) -> list[Doc]:
    """The Deployments of examples/, moved to `namespace`."""
    docs = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                doc["metadata"]["namespace"] = namespace
                docs.append(doc)
    return docs


def expected(name: str) -> Doc:
    """The pod template examples/expected/ says the webhook makes of Deployment `name`."""
    for path in sorted((EXAMPLES / "expected").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if doc["metadata"]["name"] == name:
            template: Doc = doc["spec"]["template"]
            return template
    raise AssertionError(f"no expected output for {name}")


def container(
    name: str,
    *,
    command: list[str] | None = None,
    cpu: str | None = None,
    **extra: Any,
) -> Doc:
    c: Doc = {
        "name": name,
        "image": IMAGE,
        "command": command or ["gunicorn", "--bind", "0.0.0.0:8000", "app:app"],
    }
    if cpu is not None:
        c["resources"] = {"limits": {"cpu": cpu, "memory": "256Mi"}}
    c.update(extra)
    return c


def pod(
    name: str,
    *,
    namespace: str,
    containers: list[Doc],
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    **spec: Any,
) -> Doc:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app": name, **(labels or {})},
            "annotations": annotations or {},
        },
        "spec": {"containers": copy.deepcopy(containers), **spec},
    }


def gunicorn_pod(name: str, *, namespace: str, cpu: str | None, **meta: Any) -> Doc:
    return pod(name, namespace=namespace, containers=[container("web", cpu=cpu)], **meta)


def deployment(name: str, *, namespace: str, replicas: int, template: Doc) -> Doc:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": template},
        },
    }
