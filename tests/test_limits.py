"""Work caps per review (webhook/admission/caps.py), on raw review JSON."""

from __future__ import annotations

from typing import Any

import pytest

from webhook.admission.caps import OverLimit, over_limit
from webhook.config import Settings

SETTINGS = Settings(max_containers=4, max_env_entries=10, max_annotation_bytes=100)


def pod(containers: int = 1, *, init: int = 0, env: int = 0, note: int = 0) -> dict[str, Any]:
    def items(prefix: str, n: int) -> list[dict[str, Any]]:
        return [{"name": f"{prefix}{i}", "env": [{"name": f"V{j}"} for j in range(env)]}
                for i in range(n)]

    return {"metadata": {"annotations": {"a": "x" * note}},
            "spec": {"containers": items("c", containers), "initContainers": items("i", init)}}


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (pod(4), None),
        (pod(5), OverLimit("containers", 5, 4)),
        (pod(3, init=2), OverLimit("containers", 5, 4)),
        (pod(2, env=5), None),
        (pod(2, env=6), OverLimit("env-entries", 12, 10)),
        (pod(1, note=99), None),
        (pod(1, note=100), OverLimit("annotation-bytes", 101, 100)),
        ({"spec": "not an object"}, None),  # malformed: the shape check answers 400 later
        ({"spec": {"containers": [1, 2]}}, None),
        ("not a pod", None),
    ],
    ids=["at-cap", "containers", "init-count", "env-at-cap", "env", "notes-at-cap", "notes",
         "bad-spec", "bad-containers", "bad-pod"],
)
def test_over_limit(obj: Any, expected: OverLimit | None) -> None:
    assert over_limit(obj, SETTINGS) == expected


def test_warning_fits_in_120_characters() -> None:
    warning = OverLimit("annotation-bytes", 10**9, 262144).warning
    assert len(warning) <= 120
    assert "admitted unchanged" in warning


async def test_pod_over_a_cap_is_admitted_unchanged_and_counted() -> None:
    import httpx
    from prometheus_client import REGISTRY

    from tests.podgen import container, review
    from tests.podgen import pod as make_pod
    from webhook.serving.app import Webhook

    app = Webhook(Settings(max_containers=2))
    body = review(make_pod(*(container(f"c{i}", command=["gunicorn", "a"]) for i in range(3))),
                  uid="big")
    labels = {"limit": "containers"}
    before = REGISTRY.get_sample_value("concurrency_injector_reviews_over_limit_total", labels)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://webhook") as client:
        resp = await client.post("/mutate?timeout=3s", json=body)
    assert resp.status_code == 200
    assert resp.json()["response"] == {
        "uid": "big", "allowed": True,
        "warnings": ["concurrency-injector: pod over the containers limit (3 > 2), "
                     "admitted unchanged"]}
    after = REGISTRY.get_sample_value("concurrency_injector_reviews_over_limit_total", labels)
    assert after == (before or 0) + 1
