"""The ASGI app in-process, with stand-ins at its edges.

The stand-in resolvers and readers below are fakes, named as such: they inject faults
(a broken image config, a failing lookup) that a real registry cannot be made to produce on
demand. The real server over TLS is tested in test_server.py, the real registry in
test_registry.py.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from tests.podgen import container, pod, review
from webhook.admission.review import FAIL_OPEN_WARNING
from webhook.config import Settings
from webhook.core.types import ImageConfig
from webhook.serving.app import Webhook

IMG = "registry.example/app:1"
LABELLED: ImageConfig = {"labels": {"io.concurrency-injector.runtime": "gunicorn"},
                         "entrypoint": None, "cmd": ["python", "serve.py"], "env": []}


class StandInResolver:
    """Fake registry client: returns fixed configs (or raises) and records each call."""

    def __init__(self, configs: dict[str, Any] | None = None, *, error: Exception | None = None) -> None:
        self.configs = configs or {}
        self.error = error
        self.calls: list[tuple[list[str], float]] = []

    async def resolve(self, images: list[str], *, timeout: float) -> dict[str, ImageConfig]:
        self.calls.append((images, timeout))
        if self.error:
            raise self.error
        return {k: v for k, v in self.configs.items() if k in images}


class StandInConfigMaps:
    """Fake ConfigMap reader recording what it was asked for."""

    def __init__(self, keys: dict[str, frozenset[str]]) -> None:
        self.keys = keys
        self.calls: list[tuple[str, list[str]]] = []

    async def configmap_keys(self, namespace: str, names: list[str], *, timeout: float) -> dict[str, frozenset[str]]:
        self.calls.append((namespace, names))
        return {n: self.keys[n] for n in names if n in self.keys}


async def post(app: Webhook, body: Any, query: str = "?timeout=10s") -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://webhook") as client:
        return await client.post(f"/mutate{query}", json=body)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def patch_of(resp: httpx.Response) -> list[dict[str, Any]]:
    return json.loads(base64.b64decode(resp.json()["response"]["patch"]))  # type: ignore[no-any-return]


async def test_image_label_detection_through_the_resolver() -> None:
    resolver = StandInResolver({IMG: LABELLED})
    app = Webhook(Settings(), resolver=resolver)
    resp = await post(app, review(pod(container(image=IMG, cpu="2"))), "?timeout=1s")
    assert resp.status_code == 200
    assert resolver.calls == [([IMG], 0.5)]  # the API server's 1 s, less the answer's margin
    status = json.loads(patch_of(resp)[0]["value"]["concurrency-injector.io/status"])
    assert status["web"]["source"] == "image-label"


async def test_a_broken_image_config_fails_open() -> None:
    broken: dict[str, Any] = {IMG: {"labels": None, "entrypoint": None, "cmd": None, "env": []}}
    app = Webhook(Settings(), resolver=StandInResolver(broken))
    before = metric("concurrency_injector_errors_total", stage="mutate")
    resp = await post(app, review(pod(container(image=IMG)), uid="u-9"))
    assert resp.status_code == 200
    assert resp.json()["response"] == {"uid": "u-9", "allowed": True, "warnings": [FAIL_OPEN_WARNING]}
    assert metric("concurrency_injector_errors_total", stage="mutate") == before + 1


async def test_a_failing_lookup_decides_from_the_rest() -> None:
    app = Webhook(Settings(), resolver=StandInResolver(error=RuntimeError("registry down")))
    before = metric("concurrency_injector_errors_total", stage="registry")
    resp = await post(app, review(pod(container(image=IMG), container("api", command=["uvicorn", "a:b"]))))
    assert resp.status_code == 200
    assert [op["path"] for op in patch_of(resp)] == ["/metadata/annotations", "/spec/containers/1/env"]
    assert metric("concurrency_injector_errors_total", stage="registry") == before + 1


async def test_no_lookup_when_the_command_decides() -> None:
    resolver = StandInResolver({IMG: LABELLED})
    app = Webhook(Settings(), resolver=resolver)
    await post(app, review(pod(container(image=IMG, command=["gunicorn", "a"]))))
    assert resolver.calls == []


async def test_configmaps_are_read_in_the_pods_namespace() -> None:
    reader = StandInConfigMaps({"cfg": frozenset({"WEB_CONCURRENCY"})})
    app = Webhook(Settings(), env_reader=reader)
    p = pod(container(command=["gunicorn", "a"], envFrom=[{"configMapRef": {"name": "cfg"}}]))
    resp = await post(app, review(p))
    assert reader.calls == [("default", ["cfg"])]
    env = patch_of(resp)[1]["value"]
    assert [e["name"] for e in env] == ["CPU_LIMIT", "PYTHON_CPU_COUNT"]


@pytest.mark.parametrize(
    ("method", "body", "headers", "status"),
    [
        ("GET", None, {}, 405),
        ("POST", b"{}", {"content-type": "text/plain"}, 415),
        ("POST", b"x" * 2048, {"content-type": "application/json"}, 413),
        ("POST", b"{", {"content-type": "application/json"}, 400),
    ],
    ids=["get", "content-type", "too-large", "bad-json"],
)
async def test_refusals_are_4xx_json(method: str, body: bytes | None, headers: dict[str, str], status: int) -> None:
    app = Webhook(Settings(max_body_bytes=1024))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://webhook") as client:
        resp = await client.request(method, "/mutate", content=body, headers=headers)
    assert resp.status_code == status
    assert set(resp.json()) == {"error"}


async def test_health_and_metrics_routes() -> None:
    transport = httpx.ASGITransport(app=Webhook(Settings()))
    async with httpx.AsyncClient(transport=transport, base_url="https://webhook") as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert "concurrency_injector_requests_total" in metrics.text
