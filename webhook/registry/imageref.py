"""Image references, parsed as a container runtime reads them (pure, no I/O).

`python:3.12` is `docker.io/library/python:3.12`, pulled from `registry-1.docker.io`; the first
path component names a registry only when it looks like a host (has a `.` or a `:`, or is
`localhost`), exactly as in the distribution project's reference grammar that Docker and
containerd share. A digest pins the content: with both a tag and a digest, the digest wins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DOCKER_HUB = "docker.io"
DOCKER_HUB_HOST = "registry-1.docker.io"
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
OFFICIAL_NAMESPACE = "library"
DEFAULT_TAG = "latest"
MAX_NAME_LENGTH = 255

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}")
_SHA256_HEX = re.compile(r"[a-f0-9]{64}")
_HOST_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"(?:{_HOST_LABEL}(?:\.{_HOST_LABEL})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?")


class InvalidReference(ValueError):
    """An image reference that no container runtime would pull."""

    def __init__(self, reference: str, reason: str) -> None:
        super().__init__(f"invalid image reference {reference!r}: {reason}")
        self.reference = reference
        self.reason = reason


@dataclass(frozen=True)
class ImageRef:
    """A fully qualified image reference: registry domain, repository path, tag and/or digest."""

    domain: str
    path: str
    tag: str | None
    digest: str | None

    @property
    def host(self) -> str:
        """The host (and port) that serves the registry API; Docker Hub's differs from its name."""
        return DOCKER_HUB_HOST if self.domain == DOCKER_HUB else self.domain

    @property
    def name(self) -> str:
        """Domain and repository path, without tag or digest (`docker.io/library/python`)."""
        return f"{self.domain}/{self.path}"

    @property
    def reference(self) -> str:
        """What the manifest endpoint is asked for: the digest when pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def __str__(self) -> str:
        tag = f":{self.tag}" if self.tag else ""
        digest = f"@{self.digest}" if self.digest else ""
        return f"{self.name}{tag}{digest}"


def _split_domain(name: str) -> tuple[str, str]:
    """Split `name` into registry domain and repository path, defaulting to Docker Hub."""
    first, sep, rest = name.partition("/")
    looks_like_host = "." in first or ":" in first or first == "localhost" or first.lower() != first
    if not sep or not looks_like_host:
        domain, path = DOCKER_HUB, name
    else:
        domain, path = first, rest
    if domain in DOCKER_HUB_ALIASES:
        domain = DOCKER_HUB
    if domain == DOCKER_HUB and "/" not in path:
        path = f"{OFFICIAL_NAMESPACE}/{path}"
    return domain, path


def _check_digest(reference: str, digest: str) -> None:
    if not _DIGEST.fullmatch(digest):
        raise InvalidReference(reference, f"malformed digest {digest!r}")
    algorithm, _, encoded = digest.partition(":")
    if algorithm == "sha256" and not _SHA256_HEX.fullmatch(encoded):
        raise InvalidReference(reference, "a sha256 digest is 64 lowercase hex characters")


def parse(reference: str) -> ImageRef:
    """Parse an image reference as a pod spells it into its fully qualified form."""
    if not reference or reference != reference.strip():
        raise InvalidReference(reference, "empty or surrounded by whitespace")
    remainder, at, digest = reference.partition("@")
    if at:
        _check_digest(reference, digest)
    # A tag follows the last ':' that comes after the last '/', so a registry port is no tag.
    tag: str | None = None
    colon, slash = remainder.rfind(":"), remainder.rfind("/")
    if colon > slash:
        remainder, tag = remainder[:colon], remainder[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise InvalidReference(reference, f"malformed tag {tag!r}")
    if not remainder:
        raise InvalidReference(reference, "no repository name")
    domain, path = _split_domain(remainder)
    if not _DOMAIN.fullmatch(domain):
        raise InvalidReference(reference, f"malformed registry host {domain!r}")
    for component in path.split("/"):
        if not _COMPONENT.fullmatch(component):
            raise InvalidReference(
                reference, f"repository component {component!r} must be lowercase [a-z0-9._-]"
            )
    if len(f"{domain}/{path}") > MAX_NAME_LENGTH:
        raise InvalidReference(reference, f"name longer than {MAX_NAME_LENGTH} characters")
    if tag is None and not at:
        tag = DEFAULT_TAG
    return ImageRef(domain=domain, path=path, tag=tag, digest=digest if at else None)
