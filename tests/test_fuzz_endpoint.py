"""Structure-aware fuzzing of `POST /mutate`: AdmissionReviews from ordinary pods, then broken.

Each review starts as a well-formed Pod CREATE (several containers sharing env, sidecars,
listed containers) and gets a few mutations at random places: wrong types at every level,
unicode and control characters, huge and non-finite numbers, invalid quantities, duplicate env
names, missing or null objects, deep nesting, huge strings. Invariants:
- never a 5xx, never a hang;
- a malformed review is a 4xx with a short JSON error; never the internal-error fail-open
  (which is for our bugs only, and would hide a bad input behind "allowed");
- every 200 with a patch applies to the pod it came with, and changes only what the webhook may.

The bulk runs in-process against the ASGI app (thousands of reviews a minute); a smaller batch
goes to the real server over TLS, on one keep-alive connection.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonpatch
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.podgen import gunicorn, pod, review
from tests.servers import Pki, WebhookServer
from tests.strategies import crowded_pods, places
from webhook.admission.review import FAIL_OPEN_WARNING, ReviewError, _well_formed, walk_pod
from webhook.config import Settings
from webhook.serving.app import Webhook

MAX_ERROR_BYTES = 2048  # a 4xx body names the problem; it does not echo megabytes of input
ALLOWED = re.compile(
    r"^/metadata(/annotations(/concurrency-injector\.io~1status)?)?$"
    r"|^/spec/(initContainers|containers)/\d+/(env|resizePolicy)(/\d+)?$"
)


def deep(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"a": value}
    return value


weird_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 10**30, 1e308, -1e-300, 2**63, 1.5]),
    st.text(max_size=20),
    st.sampled_from(["", "\x00", "\u202e", "\ud7ff\ue000", "a\nb\tc\r", "💥" * 8, "x" * 70_000]),
    st.sampled_from(["abc", "1e999", "-1", "NaN", "Infinity", "0", "1.5.5", "9" * 400, "1Qi",
                     "100m", "0.0001", "-0", "1e-400"]),
    st.sampled_from([[], {}, ["x"], [1, None], {"name": 5}, [{"name": None}], [[[]]]]).map(
        copy.deepcopy  # sampled values are shared between examples; later mutations edit them
    ),
    st.integers(10, 1000).map(deep),  # the request parses up to 1,024 levels deep
)


def _set(document: Any, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        document = document[key]
    document[path[-1]] = value


def _delete(document: Any, path: tuple[Any, ...]) -> None:
    for key in path[:-1]:
        document = document[key]
    del document[path[-1]]


@st.composite
def broken_reviews(draw: st.DrawFn) -> dict[str, Any]:
    body = review(copy.deepcopy(draw(crowded_pods)))  # generated pods share sampled lists
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in places(body, depth=12) if p]
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["set", "set", "set", "delete", "duplicate-env"]))
        if action == "delete":
            _delete(body, path)
        elif action == "duplicate-env":
            for container in body["request"].get("object", {}).get("spec", {}).get("containers", []) \
                    if isinstance(body.get("request"), dict) \
                    and isinstance(body["request"].get("object"), dict) \
                    and isinstance(body["request"]["object"].get("spec"), dict) \
                    and isinstance(body["request"]["object"]["spec"].get("containers"), list) else []:
                if isinstance(container, dict) and isinstance(container.get("env"), list):
                    container["env"] = container["env"] * 2 or [
                        {"name": "WEB_CONCURRENCY", "value": "3"}
                    ] * 2
        else:
            _set(body, path, draw(weird_values))
    return body


def check_answer(body: dict[str, Any], status: int, payload: bytes) -> None:
    """The fuzzing invariants for one answered review."""
    assert status < 500, (status, payload[:500])
    if status != 200:
        assert len(payload) <= MAX_ERROR_BYTES, (status, len(payload))
        assert "error" in json.loads(payload)
        return
    response = json.loads(payload)["response"]
    assert response["allowed"] is True
    assert FAIL_OPEN_WARNING not in response.get("warnings", []), (
        "a malformed review was treated as an internal error",
        body,
    )
    if "patch" in response:
        patch = json.loads(base64.b64decode(response["patch"]))
        assert all(ALLOWED.match(o["path"]) for o in patch), patch
        pod = body["request"]["object"]
        with _deep_recursion():  # a field the webhook leaves alone may be nested very deep
            jsonpatch.apply_patch(copy.deepcopy(pod), patch)


FUZZ = settings(max_examples=1500, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(broken_reviews(), st.booleans())
def test_in_process_endpoint_survives_broken_reviews(body: dict[str, Any], cached: bool) -> None:
    # A fresh app, or one that has seen the well-formed twin first (the cache must not let a
    # broken pod skip the shape check).
    app = Webhook(Settings(no_registry=True))

    async def run() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://webhook") as client:
            if cached:
                await client.post("/mutate?timeout=10s", content=_encode(body))
            answer = await asyncio.wait_for(
                client.post("/mutate?timeout=10s", content=_encode(body),
                            headers={"content-type": "application/json"}),
                timeout=10,
            )
            check_answer(body, answer.status_code, answer.content)

    asyncio.run(run())


@settings(max_examples=3000, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(broken_reviews())
def test_lean_shape_check_is_never_looser_than_the_walk(body: dict[str, Any]) -> None:
    """check_pod trusts the one-pass `_well_formed`: whatever it accepts, the field-by-field
    walk (which names the wrong field) accepts too; whatever the walk accepts is only walked."""
    request = body.get("request")
    pod = request.get("object") if isinstance(request, dict) else None
    if not isinstance(pod, dict):
        return
    try:
        walk_pod(pod)
    except ReviewError:
        assert not _well_formed(pod), pod


def test_lean_shape_check_tells_pods_apart() -> None:
    good = pod(gunicorn())
    assert _well_formed(good)
    for broken in ({"spec": {"containers": [{"name": 5}]}},
                   {"spec": {"containers": [{"name": "a", "env": [{"name": "A", "value": 1}]}]}},
                   {"spec": {"containers": [{"name": "a", "envFrom": [{"secretRef": []}]}]}},
                   {"metadata": {"annotations": {"a": None}}, "spec": good["spec"]}):
        assert not _well_formed(broken)
        with pytest.raises(ReviewError):
            walk_pod(broken)


def test_a_deeply_nested_field_the_webhook_leaves_alone_is_answered_and_checked() -> None:
    """900 levels under `spec.affinity` (the API server's own validation is not ours): answered
    with a patch that applies; the fuzz checks themselves must cope with such a pod."""
    body = review(pod(gunicorn()))
    deep: dict[str, Any] = {}
    inner = deep
    for _ in range(900):
        inner["a"] = {}
        inner = inner["a"]
    body["request"]["object"]["spec"]["affinity"] = deep

    async def run() -> None:
        transport = httpx.ASGITransport(app=Webhook(Settings(no_registry=True)))
        async with httpx.AsyncClient(transport=transport, base_url="https://webhook") as client:
            answer = await client.post("/mutate?timeout=10s", content=_encode(body),
                                       headers={"content-type": "application/json"})
        assert answer.status_code == 200
        assert "patch" in answer.json()["response"]
        check_answer(body, answer.status_code, answer.content)

    asyncio.run(run())


def _encode(body: Any) -> bytes:
    # json, not orjson: it writes huge integers, non-finite floats and deep nesting as the API
    # server never would.
    with _deep_recursion():
        return json.dumps(body).encode()


@contextlib.contextmanager
def _deep_recursion() -> Iterator[None]:
    """Room for the generated documents' deepest nesting (hundreds of levels)."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10_000)
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"kind": NaN}',
        b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": Infinity}',
        b"[" * 5000 + b"]" * 5000,
        b'{"kind": "' + b"A" * 2_000_000 + b'"}',
        b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": {"uid": "'
        + b"\xff\xfe" + b'"}}',
    ],
    ids=["nan", "infinity", "deep-array", "2mb-kind", "not-utf8"],
)
async def test_raw_bodies_are_short_4xx(raw: bytes) -> None:
    app = Webhook(Settings(no_registry=True))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://webhook") as client:
        answer = await client.post("/mutate", content=raw,
                                   headers={"content-type": "application/json"})
    assert 400 <= answer.status_code < 500
    assert len(answer.content) <= MAX_ERROR_BYTES


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebhookServer]:
    pki = Pki.create(tmp_path_factory.mktemp("pki"))
    with WebhookServer(pki, tmp_path_factory.mktemp("fuzz") / "stderr.log") as server:
        yield server


@pytest.mark.slow
def test_real_server_survives_broken_reviews(tls_server: WebhookServer, tmp_path: Path) -> None:
    """300 broken reviews over TLS, one keep-alive connection: every answer within 10 s, no 5xx."""
    examples: list[dict[str, Any]] = []

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(broken_reviews())
    def collect(body: dict[str, Any]) -> None:
        examples.append(body)

    collect()
    with tls_server.client(timeout=10) as client:
        for body in examples:
            reply = client.post(_encode(body))
            check_answer(body, reply.status, reply.body)
    assert tls_server.alive()
    with tls_server.client() as client:
        assert client.get("/healthz").status == 200


def _with(path: str, value: Any, *, delete: bool = False) -> dict[str, Any]:
    """A well-formed review of a gunicorn pod with one field set (or deleted)."""
    body = review(pod(gunicorn(cpu="2", env=[{"name": "A", "value": "1"}],
                               envFrom=[{"configMapRef": {"name": "cfg"}}])))
    keys: list[Any] = [int(k) if k.isdigit() else k for k in path.split(".")]
    if delete:
        _delete(body, tuple(keys))
    else:
        _set(body, tuple(keys), value)
    return body


OBJECT = "request.object"
FOUND = [  # each was once a 500, an internal error or an unappliable patch
    ("generateName-not-a-string", _with(f"{OBJECT}.metadata", {"generateName": 5}), 400),
    ("kind-1000-deep", _with("kind", deep(1000)), 400),
    ("apiVersion-1000-deep", _with("apiVersion", deep(1000)), 400),
    ("no-metadata", _with(f"{OBJECT}.metadata", None, delete=True), 200),
    ("metadata-null", _with(f"{OBJECT}.metadata", None), 200),
    ("metadata-empty-string", _with(f"{OBJECT}.metadata", ""), 400),
    ("metadata-list", _with(f"{OBJECT}.metadata", []), 400),
    ("annotation-list-value", _with(f"{OBJECT}.metadata.annotations", {"a": ["x"]}), 400),
    ("envFrom-prefix-number", _with(f"{OBJECT}.spec.containers.0.envFrom.0.prefix", 5), 400),
    ("secretRef-string", _with(f"{OBJECT}.spec.containers.0.envFrom.0", {"secretRef": "x"}), 400),
    ("image-list", _with(f"{OBJECT}.spec.containers.0.image", []), 400),
    ("env-value-number", _with(f"{OBJECT}.spec.containers.0.env.0.value", 1), 400),
    # Not a quantity, whatever the type: that container skipped with a warning, as "abc" is.
    ("limit-bool", _with(f"{OBJECT}.spec.containers.0.resources.limits.cpu", True), 200),
    ("limit-invalid", _with(f"{OBJECT}.spec.containers.0.resources.limits.cpu", "1e999"), 200),
    ("limit-huge", _with(f"{OBJECT}.spec.containers.0.resources.limits.cpu", "9" * 400), 200),
    ("limit-nan", _with(f"{OBJECT}.spec.containers.0.resources.limits.cpu", "NAN"), 200),
    ("memory-infinity", _with(f"{OBJECT}.spec.containers.0.resources.limits.memory", "Infinity"),
     200),
    ("kind-2mb", _with("kind", "K" * 2_000_000), 400),
]


@pytest.mark.parametrize(("body", "status"), [(b, s) for _, b, s in FOUND],
                         ids=[name for name, _, _ in FOUND])
async def test_found_by_fuzzing(body: dict[str, Any], status: int,
                                caplog: pytest.LogCaptureFixture) -> None:
    app = Webhook(Settings(no_registry=True))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://webhook") as client:
        # The well-formed twin first, so a cached decision cannot let the broken one through.
        await client.post("/mutate", json=_with("kind", "AdmissionReview"))
        answer = await client.post("/mutate", content=_encode(body),
                                   headers={"content-type": "application/json"})
    assert answer.status_code == status, answer.text[:300]
    check_answer(body, answer.status_code, answer.content)
    assert all(len(r.getMessage()) + len(str(r.__dict__.get("error", ""))) < 4096
               for r in caplog.records), "a log line echoed the input"
