"""The registry resolver against real registries: formats, platforms, auth, TLS, budget, cache."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from tests.registry_server import (
    CountingTransport,
    Pushed,
    Pusher,
    RegistryServer,
    TokenIssuer,
    docker_config,
)
from webhook.core.types import ImageConfig
from webhook.registry import fetch as registry_fetch
from webhook.registry.resolver import RegistryResolver

BUDGET = 2.0
RUNTIME_LABEL = "io.concurrency-injector.runtime"
# The `config` section of an image config blob, as pushed.
Section = dict[str, Any]
LABELLED: Section = {
    "Labels": {RUNTIME_LABEL: "gunicorn"},
    "Cmd": ["python", "app.py"],
    "Env": ["PATH=/usr/local/bin:/usr/bin", "PYTHONUNBUFFERED=1"],
}
UNLABELLED: Section = {"Cmd": ["python3"], "Env": ["PATH=/usr/bin"]}
CMD_GUNICORN: Section = {"Cmd": ["gunicorn", "--bind", "0.0.0.0:8000", "app:app"]}
ENTRYPOINT_UVICORN: Section = {"Entrypoint": ["uvicorn"], "Cmd": ["main:app", "--host", "0.0.0.0"]}
ARM_ONLY: Section = {"Labels": {"arch": "arm64"}, "Entrypoint": ["/arm64-only"]}
AMD_ONLY: Section = {"Labels": {"arch": "amd64"}, "Entrypoint": ["gunicorn"]}


def image_config(config: Section) -> ImageConfig:
    """The ImageConfig the resolver should return for an image config section."""
    labels = config.get("Labels")
    entrypoint, cmd, env = config.get("Entrypoint"), config.get("Cmd"), config.get("Env")
    return ImageConfig(
        labels=dict(labels) if isinstance(labels, dict) else {},
        entrypoint=list(entrypoint) if isinstance(entrypoint, list) else None,
        cmd=list(cmd) if isinstance(cmd, list) else None,
        env=list(env) if isinstance(env, list) else [],
    )


def lookups(outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "concurrency_injector_registry_lookups_total", {"outcome": outcome}
    )
    return value or 0.0


@pytest.fixture(scope="module")
def images(plain_registry: tuple[RegistryServer, Pusher]) -> dict[str, Pushed]:
    """The test images, pushed once: name -> what the push produced."""
    _, push = plain_registry
    pushed = {
        "labelled": push.image("apps/labelled", "1.0", config=LABELLED),
        "unlabelled": push.image("apps/unlabelled", "1.0", config=UNLABELLED),
        "cmd-gunicorn": push.image("apps/web", "gunicorn", config=CMD_GUNICORN),
        "entrypoint-uvicorn": push.image(
            "apps/web", "uvicorn", config=ENTRYPOINT_UVICORN, oci=True
        ),
    }
    for oci, tag in ((False, "docker-list"), (True, "oci-index")):
        arm = push.image("apps/multi", None, config=ARM_ONLY, oci=oci, architecture="arm64")
        amd = push.image("apps/multi", None, config=AMD_ONLY, oci=oci)
        push.index(
            "apps/multi",
            tag,
            [
                (arm, {"os": "linux", "architecture": "arm64", "variant": "v8"}),
                (amd, {"os": "linux", "architecture": "amd64"}),
            ],
            oci=oci,
        )
        pushed[tag] = amd
    return pushed


@pytest.fixture
def host(plain_registry: tuple[RegistryServer, Pusher]) -> str:
    return plain_registry[0].host


@pytest.mark.parametrize(
    ("reference", "config"),
    [
        ("apps/labelled:1.0", LABELLED),
        ("apps/unlabelled:1.0", UNLABELLED),
        ("apps/web:gunicorn", CMD_GUNICORN),
        ("apps/web:uvicorn", ENTRYPOINT_UVICORN),
        ("apps/multi:docker-list", AMD_ONLY),
        ("apps/multi:oci-index", AMD_ONLY),
    ],
    ids=[
        "labelled",
        "unlabelled",
        "cmd-gunicorn",
        "entrypoint-uvicorn-oci",
        "index-docker-list-amd64-second",
        "index-oci-amd64-second",
    ],
)
async def test_reads_image_config(
    images: dict[str, Pushed], host: str, reference: str, config: Section
) -> None:
    resolver = RegistryResolver(insecure_registries=[host])
    try:
        image = f"{host}/{reference}"
        assert await resolver.resolve([image], timeout=BUDGET) == {image: image_config(config)}
    finally:
        await resolver.aclose()


@pytest.mark.parametrize(
    ("platform", "expected"),
    [
        ("linux/arm64/v8", ARM_ONLY),
        ("linux/arm64", ARM_ONLY),
        ("linux/aarch64", ARM_ONLY),
        ("linux/amd64", AMD_ONLY),
        ("linux/s390x", None),
    ],
    ids=["arm64-v8", "arm64-default-variant", "aarch64-alias", "amd64", "no-such-platform"],
)
async def test_index_entry_for_platform(
    images: dict[str, Pushed], host: str, platform: str, expected: Section | None
) -> None:
    resolver = RegistryResolver(insecure_registries=[host], platform=platform)
    try:
        image = f"{host}/apps/multi:oci-index"
        found = await resolver.resolve([image], timeout=BUDGET)
        assert found == ({image: image_config(expected)} if expected else {})
    finally:
        await resolver.aclose()


async def test_digest_reference_wins_over_tag(images: dict[str, Pushed], host: str) -> None:
    digest = images["labelled"].digest
    pinned, both = f"{host}/apps/labelled@{digest}", f"{host}/apps/labelled:no-such-tag@{digest}"
    transport = CountingTransport()
    resolver = RegistryResolver(insecure_registries=[host], transport=transport)
    try:
        found = await resolver.resolve([pinned, both], timeout=BUDGET)
        assert found == {pinned: image_config(LABELLED), both: image_config(LABELLED)}
        assert not transport.paths("no-such-tag")
    finally:
        await resolver.aclose()


async def test_missing_image_is_absent(images: dict[str, Pushed], host: str) -> None:
    before = lookups("not_found")
    resolver = RegistryResolver(insecure_registries=[host])
    try:
        present, missing = f"{host}/apps/labelled:1.0", f"{host}/apps/nothing-here:1"
        found = await resolver.resolve([present, missing, "UPPER/case:bad"], timeout=BUDGET)
        assert list(found) == [present]
        assert lookups("not_found") == before + 1
    finally:
        await resolver.aclose()


@pytest.mark.parametrize("form", ["auth", "username-password"], ids=["auth-base64", "user-pass"])
async def test_basic_auth_with_docker_config(
    basic_registry: tuple[RegistryServer, Pusher], tmp_path: Path, form: str
) -> None:
    server, push = basic_registry
    push.image("private/app", "1", config=LABELLED)
    image = f"{server.host}/private/app:1"
    anonymous = RegistryResolver(insecure_registries=[server.host])
    config_path = docker_config(tmp_path / "config.json", server.host, form=form)
    authed = RegistryResolver(insecure_registries=[server.host], docker_config=config_path)
    try:
        assert await anonymous.resolve([image], timeout=BUDGET) == {}
        assert await authed.resolve([image], timeout=BUDGET) == {image: image_config(LABELLED)}
    finally:
        await anonymous.aclose()
        await authed.aclose()


async def test_tls_registry_behind_private_ca(
    tls_registry: tuple[RegistryServer, Pusher, Path],
) -> None:
    server, push, ca_file = tls_registry
    push.image("apps/tls", "1", config=ENTRYPOINT_UVICORN)
    image = f"{server.host}/apps/tls:1"
    trusting = RegistryResolver(ca_file=str(ca_file))
    untrusting = RegistryResolver()
    insecure = RegistryResolver(insecure_registries=[server.host])
    expected = {image: image_config(ENTRYPOINT_UVICORN)}
    try:
        assert await trusting.resolve([image], timeout=BUDGET) == expected
        assert await untrusting.resolve([image], timeout=BUDGET) == {}
        assert await insecure.resolve([image], timeout=BUDGET) == expected
    finally:
        for resolver in (trusting, untrusting, insecure):
            await resolver.aclose()


async def test_token_auth_flow(
    token_registry: tuple[RegistryServer, Pusher, TokenIssuer], tmp_path: Path
) -> None:
    server, push, issuer = token_registry
    push.image("public/app", "1", config=CMD_GUNICORN)
    push.image("private/app", "1", config=LABELLED)
    public, private = f"{server.host}/public/app:1", f"{server.host}/private/app:1"
    anonymous = RegistryResolver(insecure_registries=[server.host])
    config_path = docker_config(tmp_path / "config.json", server.host)
    issuer_host = f"127.0.0.1:{issuer.port}"
    # Credentials go to a plain-HTTP token realm only when it is named insecure too.
    careful = RegistryResolver(insecure_registries=[server.host], docker_config=config_path)
    authed = RegistryResolver(
        insecure_registries=[server.host, issuer_host], docker_config=config_path
    )
    try:
        assert await careful.resolve([private], timeout=BUDGET) == {}
        assert issuer.requests[-1]["authorization"] == ""
        issuer.requests.clear()
        found = await anonymous.resolve([public, private], timeout=BUDGET)
        assert found == {public: image_config(CMD_GUNICORN)}
        assert {r["scope"] for r in issuer.requests} >= {"repository:public/app:pull"}
        assert all(
            r["service"] == "test-registry" and not r["authorization"] for r in issuer.requests
        )
        issuer.requests.clear()
        assert await authed.resolve([private], timeout=BUDGET) == {private: image_config(LABELLED)}
        assert [r["scope"] for r in issuer.requests] == ["repository:private/app:pull"]
        assert issuer.requests[0]["authorization"].startswith("Basic ")
        # A second image in the same repository reuses the token: no new issuer request.
        other = push.image("private/app", None, config=UNLABELLED)
        pinned = f"{server.host}/private/app@{other.digest}"
        assert await authed.resolve([pinned], timeout=BUDGET) == {pinned: image_config(UNLABELLED)}
        assert len(issuer.requests) == 1
    finally:
        for resolver in (anonymous, careful, authed):
            await resolver.aclose()


async def test_unresponsive_registry_returns_within_budget(
    images: dict[str, Pushed], host: str, silent_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Short HTTP timeouts let the background lookups end before teardown, not be cancelled.
    monkeypatch.setattr(registry_fetch, "HTTP_CALL_TIMEOUT", 0.5)
    before = lookups("timeout")
    budget = 0.3
    resolver = RegistryResolver(insecure_registries=[host, silent_server])
    plain = RegistryResolver()
    try:
        good = f"{host}/apps/labelled:1.0"
        started = time.monotonic()
        found = await resolver.resolve([f"{silent_server}/apps/x:1", good], timeout=budget)
        assert time.monotonic() - started < budget + 0.2
        assert found == {good: image_config(LABELLED)}
        started = time.monotonic()
        assert await plain.resolve([f"{silent_server}/apps/x:1"], timeout=budget) == {}
        assert time.monotonic() - started < budget + 0.2
        assert lookups("timeout") == before + 2
    finally:
        await resolver.aclose()
        await plain.aclose()


async def test_concurrent_admissions_share_one_lookup(
    plain_registry: tuple[RegistryServer, Pusher], host: str
) -> None:
    _, push = plain_registry
    pushed = push.image("apps/scaled", "1", config=CMD_GUNICORN)
    image = f"{host}/apps/scaled:1"
    transport = CountingTransport()
    resolver = RegistryResolver(insecure_registries=[host], transport=transport)
    try:
        results = await asyncio.gather(
            *(resolver.resolve([image], timeout=BUDGET) for _ in range(100))
        )
        assert all(r == {image: image_config(CMD_GUNICORN)} for r in results)
        # One manifest and one config blob reach the registry; the only other attempt is
        # the HTTPS probe of an --insecure-registry host, refused at the TLS handshake.
        assert transport.paths("apps/scaled") == [
            "/v2/apps/scaled/manifests/1",
            f"/v2/apps/scaled/blobs/{pushed.config_digest}",
        ]
        assert len(transport.attempts) == 3
        print(
            f"\n100 concurrent admissions -> {len(transport.requests)} registry requests "
            f"({len(transport.attempts)} attempts incl. the scheme probe)"
        )
    finally:
        await resolver.aclose()


async def test_concurrent_admissions_share_one_lookup_over_tls_and_token_auth(
    tls_registry: tuple[RegistryServer, Pusher, Path],
    token_registry: tuple[RegistryServer, Pusher, TokenIssuer],
) -> None:
    tls_server, tls_push, ca_file = tls_registry
    token_server, token_push, issuer = token_registry
    tls_image = f"{tls_server.host}/apps/scaled:1"
    token_image = f"{token_server.host}/public/scaled:1"
    tls_pushed = tls_push.image("apps/scaled", "1", config=CMD_GUNICORN)
    # A different config: the same content from the TLS registry would already be cached.
    token_pushed = token_push.image("public/scaled", "1", config=ENTRYPOINT_UVICORN)
    transport = CountingTransport(
        httpx.AsyncHTTPTransport(verify=ssl.create_default_context(cafile=str(ca_file)))
    )
    resolver = RegistryResolver(insecure_registries=[token_server.host], transport=transport)
    issuer.requests.clear()
    try:
        results = await asyncio.gather(
            *(resolver.resolve([tls_image, token_image], timeout=BUDGET) for _ in range(100))
        )
        assert all(len(r) == 2 for r in results)
        assert transport.paths("apps/scaled") == [
            "/v2/apps/scaled/manifests/1",
            f"/v2/apps/scaled/blobs/{tls_pushed.config_digest}",
        ]
        # Token auth: one challenge (401), one token, then the manifest and the blob.
        assert transport.paths("public/scaled") == [
            "/v2/public/scaled/manifests/1",
            "/v2/public/scaled/manifests/1",
            f"/v2/public/scaled/blobs/{token_pushed.config_digest}",
        ]
        assert len(issuer.requests) == 1
    finally:
        await resolver.aclose()


async def test_cache_tag_ttl_and_failure_ttl(
    plain_registry: tuple[RegistryServer, Pusher], host: str
) -> None:
    _, push = plain_registry
    push.image("apps/cached", "1", config=UNLABELLED)
    image, missing = f"{host}/apps/cached:1", f"{host}/apps/cached:later"
    transport = CountingTransport()
    resolver = RegistryResolver(
        insecure_registries=[host], transport=transport, tag_ttl=0.5, failure_ttl=0.5
    )
    hits = REGISTRY.get_sample_value("concurrency_injector_registry_cache_hits_total") or 0.0
    try:
        assert await resolver.resolve([image, missing], timeout=BUDGET) == {
            image: image_config(UNLABELLED)
        }
        count = len(transport.requests)
        # Within the TTLs: the config and the failure come from the cache, no request.
        assert await resolver.resolve([image, missing], timeout=BUDGET) == {
            image: image_config(UNLABELLED)
        }
        assert len(transport.requests) == count
        assert (
            REGISTRY.get_sample_value("concurrency_injector_registry_cache_hits_total") == hits + 1
        )
        # The tag moves and the missing tag appears; after the TTLs both are read again.
        push.image("apps/cached", "1", config=LABELLED)
        push.image("apps/cached", "later", config=CMD_GUNICORN)
        await asyncio.sleep(0.6)
        assert await resolver.resolve([image, missing], timeout=BUDGET) == {
            image: image_config(LABELLED),
            missing: image_config(CMD_GUNICORN),
        }
        manifest_requests = sorted((m, p) for m, _, p in transport.requests if "/manifests/" in p)
        # The moved tag is checked with HEAD, then read; the tag that failed is read again.
        assert manifest_requests == [
            ("GET", "/v2/apps/cached/manifests/1"),
            ("GET", "/v2/apps/cached/manifests/1"),
            ("GET", "/v2/apps/cached/manifests/later"),
            ("GET", "/v2/apps/cached/manifests/later"),
            ("HEAD", "/v2/apps/cached/manifests/1"),
        ]
    finally:
        await resolver.aclose()


async def test_unchanged_tag_revalidates_with_head_only(
    plain_registry: tuple[RegistryServer, Pusher], host: str
) -> None:
    _, push = plain_registry
    push.image("apps/stable", "1", config=CMD_GUNICORN)
    image = f"{host}/apps/stable:1"
    transport = CountingTransport()
    resolver = RegistryResolver(insecure_registries=[host], transport=transport, tag_ttl=0.2)
    try:
        assert image in await resolver.resolve([image], timeout=BUDGET)
        await asyncio.sleep(0.3)
        del transport.requests[:]
        assert await resolver.resolve([image], timeout=BUDGET) == {
            image: image_config(CMD_GUNICORN)
        }
        assert transport.requests == [("HEAD", "http", "/v2/apps/stable/manifests/1")]
    finally:
        await resolver.aclose()


async def test_lookup_past_budget_fills_cache_for_next_caller(
    images: dict[str, Pushed], host: str
) -> None:
    transport = CountingTransport()
    resolver = RegistryResolver(insecure_registries=[host], transport=transport)
    image = f"{host}/apps/web:gunicorn"
    try:
        assert await resolver.resolve([image], timeout=0.0) == {}
        for _ in range(100):
            await asyncio.sleep(0.02)
            if await resolver.resolve([image], timeout=0.0):
                break
        assert await resolver.resolve([image], timeout=0.0) == {image: image_config(CMD_GUNICORN)}
    finally:
        await resolver.aclose()


async def test_cache_is_bounded(images: dict[str, Pushed], host: str) -> None:
    transport = CountingTransport()
    resolver = RegistryResolver(insecure_registries=[host], transport=transport, max_entries=1)
    first, second = f"{host}/apps/labelled:1.0", f"{host}/apps/unlabelled:1.0"
    try:
        for image in (first, second, first):
            assert image in await resolver.resolve([image], timeout=BUDGET)
        assert len(transport.paths("apps/labelled/manifests")) == 2
    finally:
        await resolver.aclose()


def percentiles(samples: list[float]) -> tuple[float, float]:
    """p50 and p99 of `samples`, in milliseconds."""
    ordered = sorted(samples)

    def pick(quantile: float) -> float:
        return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))] * 1000

    return pick(0.50), pick(0.99)


@pytest.mark.slow
async def test_lookup_latency(plain_registry: tuple[RegistryServer, Pusher], host: str) -> None:
    """Cold and cached lookup latency against the local registry (printed, loosely bounded)."""
    _, push = plain_registry
    count = 300
    for n in range(count):
        push.image("apps/bench", f"t{n}", config={"Labels": {"n": str(n)}, "Cmd": ["gunicorn"]})
    images = [f"{host}/apps/bench:t{n}" for n in range(count)]
    fresh: list[float] = []
    for image in images[:30]:
        resolver = RegistryResolver(insecure_registries=[host])
        started = time.perf_counter()
        assert image in await resolver.resolve([image], timeout=BUDGET)
        fresh.append(time.perf_counter() - started)
        await resolver.aclose()
    resolver = RegistryResolver(insecure_registries=[host])
    try:
        await resolver.resolve([f"{host}/apps/labelled:1.0"], timeout=BUDGET)  # connection up
        timings: dict[str, list[float]] = {"cold": [], "cached": []}
        for phase in ("cold", "cached"):
            for image in images:
                started = time.perf_counter()
                assert image in await resolver.resolve([image], timeout=BUDGET)
                timings[phase].append(time.perf_counter() - started)
    finally:
        await resolver.aclose()
    report = {"cold, new client": fresh, **timings}
    for name, samples in report.items():
        p50, p99 = percentiles(samples)
        print(f"\n{name}: n={len(samples)} p50={p50:.3f} ms p99={p99:.3f} ms", end="")
    assert percentiles(timings["cached"])[0] < 5.0
    assert percentiles(timings["cold"])[0] < 250.0


async def test_resolve_cached_answers_only_what_the_cache_decides(
    plain_registry: tuple[RegistryServer, Pusher], host: str
) -> None:
    _, push = plain_registry
    push.image("apps/fast", "1", config=UNLABELLED)
    image, missing = f"{host}/apps/fast:1", f"{host}/apps/fast:absent"
    transport = CountingTransport()
    resolver = RegistryResolver(insecure_registries=[host], transport=transport)
    try:
        assert resolver.resolve_cached([image, missing]) is None  # nothing known yet
        expected = {image: image_config(UNLABELLED)}
        assert await resolver.resolve([image, missing], timeout=BUDGET) == expected
        count = len(transport.requests)
        # A cached config and a cached failure: answered without a lookup, as resolve would.
        assert resolver.resolve_cached([image, missing, "Not A Reference"]) == expected
        assert resolver.resolve_cached([image, f"{host}/apps/fast:2"]) is None
        assert len(transport.requests) == count
    finally:
        await resolver.aclose()
