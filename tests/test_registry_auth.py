"""Pure pieces of the registry client: credentials, challenges, platforms, config parsing."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from webhook.core.types import ImageConfig
from webhook.registry.auth import (
    Challenge,
    Credentials,
    CredentialStore,
    parse_challenge,
    parse_docker_config,
    registry_key,
)
from webhook.registry.fetch import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    LookupFailed,
    Platform,
    parse_image_config,
    select_platform,
)
from webhook.registry.resolver import RegistryResolver


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("auths", "expected"),
    [
        (
            {"https://index.docker.io/v1/": {"auth": b64("u:p")}},
            {"docker.io": Credentials("u", "p")},
        ),
        (
            {"registry-1.docker.io": {"auth": b64("u:p:with:colons")}},
            {"docker.io": Credentials("u", "p:with:colons")},
        ),
        ({"ghcr.io": {"username": "u", "password": "t"}}, {"ghcr.io": Credentials("u", "t")}),
        (
            {"http://Host.Local:5000/v2/": {"auth": b64("u:p")}},
            {"host.local:5000": Credentials("u", "p")},
        ),
        ({"quay.io": {"identitytoken": "x"}}, {}),
        ({}, {}),
    ],
    ids=[
        "hub-v1-url",
        "hub-alias-colon-password",
        "user-pass",
        "scheme-path-case",
        "identitytoken-only-skipped",
        "empty",
    ],
)
def test_parse_docker_config(auths: dict[str, Any], expected: dict[str, Credentials]) -> None:
    assert parse_docker_config(json.dumps({"auths": auths, "credsStore": "desktop"})) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not JSON"),
        ("[]", "not a JSON object"),
        ('{"auths": []}', "'auths' is not an object"),
        ('{"auths": {"r.io": {"auth": "!!!"}}}', "not base64"),
        ('{"auths": {"r.io": {"auth": "' + b64("nocolon") + '"}}}', "not base64 of user:password"),
        ('{"auths": {"r.io": 3}}', "is not an object"),
    ],
    ids=["not-json", "not-object", "auths-list", "bad-base64", "no-colon", "entry-not-object"],
)
def test_parse_docker_config_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_docker_config(text)


def test_registry_key_folds_hub_aliases() -> None:
    assert [registry_key(k) for k in ("index.docker.io", "https://docker.io/v1/", "r.io:443")] == [
        "docker.io",
        "docker.io",
        "r.io:443",
    ]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
            'scope="repository:library/python:pull"',
            Challenge(
                "bearer",
                {
                    "realm": "https://auth.docker.io/token",
                    "service": "registry.docker.io",
                    "scope": "repository:library/python:pull",
                },
            ),
        ),
        ('Basic realm="basic-realm"', Challenge("basic", {"realm": "basic-realm"})),
        (
            "Bearer realm=https://r/t, service=svc",
            Challenge("bearer", {"realm": "https://r/t", "service": "svc"}),
        ),
        ('Bearer realm="a", Basic realm="b"', Challenge("bearer", {"realm": "a"})),
        ("", None),
    ],
    ids=["docker-hub", "basic", "unquoted", "two-challenges-first-wins", "empty"],
)
def test_parse_challenge(header: str, expected: Challenge | None) -> None:
    assert parse_challenge(header) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linux/amd64", Platform("linux", "amd64", "")),
        ("linux/x86_64", Platform("linux", "amd64", "")),
        ("linux/arm64", Platform("linux", "arm64", "v8")),
        ("linux/aarch64/8", Platform("linux", "arm64", "v8")),
        ("linux/arm/v6", Platform("linux", "arm", "v6")),
        ("Linux/ARM", Platform("linux", "arm", "v7")),
    ],
    ids=[
        "amd64",
        "x86_64-alias",
        "arm64-default-v8",
        "aarch64-bare-variant",
        "arm-v6",
        "arm-default-v7-case",
    ],
)
def test_platform_parse(text: str, expected: Platform) -> None:
    assert Platform.parse(text) == expected


@pytest.mark.parametrize(
    "text",
    ["linux", "linux/", "/amd64", "a/b/c/d"],
    ids=["no-arch", "empty-arch", "empty-os", "too-many-parts"],
)
def test_platform_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="os/arch"):
        Platform.parse(text)


INDEX: dict[str, Any] = {
    "manifests": [
        {"digest": "sha256:att", "platform": {"os": "unknown", "architecture": "unknown"}},
        {
            "digest": "sha256:armv7",
            "platform": {"os": "linux", "architecture": "arm", "variant": "v7"},
        },
        {"digest": "sha256:arm64", "platform": {"os": "linux", "architecture": "arm64"}},
        {"digest": "sha256:amd64", "platform": {"os": "linux", "architecture": "amd64"}},
        {"digest": "sha256:win", "platform": {"os": "windows", "architecture": "amd64"}},
    ]
}


@pytest.mark.parametrize(
    ("platform", "digest"),
    [
        ("linux/amd64", "sha256:amd64"),
        ("linux/arm64/v8", "sha256:arm64"),
        ("linux/arm", "sha256:armv7"),
        ("windows/amd64", "sha256:win"),
    ],
    ids=["amd64", "arm64-v8-matches-no-variant", "arm-default-v7", "windows"],
)
def test_select_platform(platform: str, digest: str) -> None:
    assert select_platform(INDEX, Platform.parse(platform)) == digest


def test_select_platform_missing() -> None:
    with pytest.raises(LookupFailed, match="no manifest for platform linux/s390x") as caught:
        select_platform(INDEX, Platform.parse("linux/s390x"))
    assert caught.value.outcome == "not_found"


@pytest.mark.parametrize(
    ("blob", "expected"),
    [
        (
            {"config": {"Labels": None, "Env": None, "Cmd": ["sh"]}},
            ImageConfig(labels={}, entrypoint=None, cmd=["sh"], env=[]),
        ),
        (
            {"config": {"Labels": {"a": "b"}, "Entrypoint": ["uvicorn"], "Env": ["X=1"]}},
            ImageConfig(labels={"a": "b"}, entrypoint=["uvicorn"], cmd=None, env=["X=1"]),
        ),
        ({"architecture": "amd64"}, ImageConfig(labels={}, entrypoint=None, cmd=None, env=[])),
    ],
    ids=["nulls", "full", "no-config-section"],
)
def test_parse_image_config(blob: dict[str, Any], expected: ImageConfig) -> None:
    assert parse_image_config(json.dumps(blob).encode()) == expected


@pytest.mark.parametrize(
    "config",
    [{"Cmd": "gunicorn app"}, {"Labels": ["a"]}, {"Env": [1]}],
    ids=["cmd-string", "labels-list", "env-number"],
)
def test_parse_image_config_rejects(config: dict[str, Any]) -> None:
    with pytest.raises(LookupFailed):
        parse_image_config(json.dumps({"config": config}).encode())


def test_resolver_checks_settings_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="platform 'amd64'"):
        RegistryResolver(platform="amd64")
    with pytest.raises(ValueError, match="docker config"):
        RegistryResolver(docker_config=str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not JSON"):
        RegistryResolver(docker_config=str(tmp_path / "bad.json"))


async def test_docker_hub_addressing_with_a_fake_transport() -> None:
    """`python:3.12` goes to registry-1.docker.io with Docker Hub's token flow.

    A fake (httpx.MockTransport) because Docker Hub is out of reach here; the same flow runs
    against a real token-auth registry in test_registry.py.
    """
    config = json.dumps({"config": {"Cmd": ["python3"]}}).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = json.dumps(
        {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": {"digest": config_digest}}
    ).encode()
    manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    index = json.dumps(
        {
            "mediaType": OCI_INDEX,
            "manifests": [
                {"digest": manifest_digest, "platform": {"os": "linux", "architecture": "amd64"}}
            ],
        }
    )
    seen: list[str] = []

    def hub(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url}")
        if request.url.host == "auth.docker.io":
            return httpx.Response(200, json={"token": "t0k", "expires_in": 300})
        if request.headers.get("Authorization") != "Bearer t0k":
            return httpx.Response(
                401,
                headers={
                    "WWW-Authenticate": (
                        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                        'scope="repository:library/python:pull"'
                    )
                },
            )
        if request.url.path.endswith("/manifests/3.12"):
            assert all(t in request.headers["Accept"] for t in (OCI_INDEX, DOCKER_MANIFEST))
            return httpx.Response(200, content=index, headers={"Content-Type": OCI_INDEX})
        if request.url.path.endswith(f"/manifests/{manifest_digest}"):
            return httpx.Response(200, content=manifest, headers={"Content-Type": DOCKER_MANIFEST})
        return httpx.Response(200, content=config)

    resolver = RegistryResolver(transport=httpx.MockTransport(hub))
    try:
        found = await resolver.resolve(["python:3.12"], timeout=2.0)
    finally:
        await resolver.aclose()
    assert found == {
        "python:3.12": ImageConfig(labels={}, entrypoint=None, cmd=["python3"], env=[])
    }
    hub_v2 = "https://registry-1.docker.io/v2/library/python"
    assert seen == [
        f"GET {hub_v2}/manifests/3.12",
        "GET https://auth.docker.io/token?scope=repository%3Alibrary%2Fpython%3Apull"
        "&service=registry.docker.io",
        f"GET {hub_v2}/manifests/3.12",
        f"GET {hub_v2}/manifests/{manifest_digest}",
        f"GET {hub_v2}/blobs/{config_digest}",
    ]


def test_credential_store_reloads_a_changed_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {"r.io": {"auth": b64("old:1")}}}))
    store = CredentialStore(str(path), reload_interval=0.0)
    assert store.get("r.io") == Credentials("old", "1")
    path.write_text(json.dumps({"auths": {"r.io": {"auth": b64("new:2")}}}))
    os.utime(path, (time.time() + 5, time.time() + 5))
    assert store.get("r.io") == Credentials("new", "2")
    path.write_text("{broken")
    os.utime(path, (time.time() + 10, time.time() + 10))
    assert store.get("r.io") == Credentials("new", "2")  # a bad reload keeps what was loaded
    assert CredentialStore(None).get("r.io") is None
