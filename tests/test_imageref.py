"""Image references parse as a container runtime reads them."""

from __future__ import annotations

import pytest

from webhook.registry.imageref import ImageRef, InvalidReference, parse

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("reference", "expected", "host"),
    [
        ("python", ImageRef("docker.io", "library/python", "latest", None), "registry-1.docker.io"),
        (
            "python:3.12",
            ImageRef("docker.io", "library/python", "3.12", None),
            "registry-1.docker.io",
        ),
        (
            "tiangolo/uvicorn-gunicorn:py3.11",
            ImageRef("docker.io", "tiangolo/uvicorn-gunicorn", "py3.11", None),
            "registry-1.docker.io",
        ),
        (
            "docker.io/python:3.12",
            ImageRef("docker.io", "library/python", "3.12", None),
            "registry-1.docker.io",
        ),
        (
            "index.docker.io/library/python",
            ImageRef("docker.io", "library/python", "latest", None),
            "registry-1.docker.io",
        ),
        ("ghcr.io/org/team/app:v1", ImageRef("ghcr.io", "org/team/app", "v1", None), "ghcr.io"),
        (
            "registry.local:5000/app:1.0",
            ImageRef("registry.local:5000", "app", "1.0", None),
            "registry.local:5000",
        ),
        ("127.0.0.1:5000/app", ImageRef("127.0.0.1:5000", "app", "latest", None), "127.0.0.1:5000"),
        ("localhost/app:dev", ImageRef("localhost", "app", "dev", None), "localhost"),
        ("localhost:5000/a/b", ImageRef("localhost:5000", "a/b", "latest", None), "localhost:5000"),
        (
            f"python@{DIGEST}",
            ImageRef("docker.io", "library/python", None, DIGEST),
            "registry-1.docker.io",
        ),
        (f"quay.io/app:1.0@{DIGEST}", ImageRef("quay.io", "app", "1.0", DIGEST), "quay.io"),
        ("[::1]:5000/app:x", ImageRef("[::1]:5000", "app", "x", None), "[::1]:5000"),
        (
            "my_org/my__app-x.y",
            ImageRef("docker.io", "my_org/my__app-x.y", "latest", None),
            "registry-1.docker.io",
        ),
    ],
    ids=[
        "bare-official",
        "official-tag",
        "hub-user",
        "hub-explicit",
        "hub-index-alias",
        "ghcr-nested",
        "host-port",
        "ip-port",
        "localhost",
        "localhost-port",
        "digest-only",
        "tag-and-digest",
        "ipv6-host",
        "separators",
    ],
)
def test_parse(reference: str, expected: ImageRef, host: str) -> None:
    ref = parse(reference)
    assert ref == expected
    assert ref.host == host


@pytest.mark.parametrize(
    ("reference", "name", "manifest_ref", "text"),
    [
        ("python:3.12", "docker.io/library/python", "3.12", "docker.io/library/python:3.12"),
        ("app", "docker.io/library/app", "latest", "docker.io/library/app:latest"),
        (f"r.io/a:t@{DIGEST}", "r.io/a", DIGEST, f"r.io/a:t@{DIGEST}"),
        (f"r.io/a@{DIGEST}", "r.io/a", DIGEST, f"r.io/a@{DIGEST}"),
    ],
    ids=["tag", "default-tag", "digest-wins-over-tag", "digest"],
)
def test_name_reference_and_text(reference: str, name: str, manifest_ref: str, text: str) -> None:
    ref = parse(reference)
    assert (ref.name, ref.reference, str(ref)) == (name, manifest_ref, text)


@pytest.mark.parametrize(
    ("reference", "reason"),
    [
        ("", "empty"),
        (" python", "whitespace"),
        ("Python:3", "lowercase"),
        ("python:", "malformed tag"),
        ("python:-x", "malformed tag"),
        ("python@sha256:" + "a" * 40, "64 lowercase hex"),
        ("python@md5", "malformed digest"),
        ("r.io/", "component ''"),
        ("r.io//app", "component ''"),
        ("-bad.io/app", "malformed registry host"),
        ("r.io/app_", "component 'app_'"),
        (":tag", "no repository"),
        ("a" * 256, "longer than"),
    ],
    ids=[
        "empty",
        "whitespace",
        "uppercase-repo",
        "empty-tag",
        "tag-leading-dash",
        "short-sha256",
        "digest-no-hex",
        "empty-path",
        "double-slash",
        "bad-host",
        "trailing-separator",
        "no-name",
        "too-long",
    ],
)
def test_invalid(reference: str, reason: str) -> None:
    with pytest.raises(InvalidReference, match="invalid image reference") as caught:
        parse(reference)
    assert reason in caught.value.reason
