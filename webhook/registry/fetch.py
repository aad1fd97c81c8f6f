"""The registry HTTP API for one image: manifest, platform entry, config blob, with auth.

Speaks the OCI distribution API (Docker v2 schema 2 and OCI media types), the anonymous and
credentialed bearer-token flow from `WWW-Authenticate`, and basic auth. Every HTTP call has
its own timeout, capped by the lookup's deadline.
"""

from __future__ import annotations

import hashlib
import json
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import certifi
import httpx

from webhook import logs
from webhook.core.types import ImageConfig
from webhook.registry.auth import Challenge, Credentials, CredentialStore, parse_challenge
from webhook.registry.imageref import ImageRef

log = logs.get("registry")

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
INDEX_TYPES = frozenset({DOCKER_LIST, OCI_INDEX})
ACCEPT_MANIFESTS = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))

HTTP_CALL_TIMEOUT = 5.0
MAX_MANIFEST_BYTES = 4 << 20
MAX_CONFIG_BYTES = 8 << 20
TOKEN_DEFAULT_TTL = 60.0
TOKEN_MARGIN = 5.0
USER_AGENT = "concurrency-injector"
# Image names come from pods, so hosts and repositories are many: keep what is learnt bounded.
MAX_HOSTS = 512
MAX_TOKENS_PER_HOST = 256
MAX_REDIRECTS = 5

# Architecture aliases and default variants, as containerd's `platforms.Normalize` has them.
_ARCH_ALIASES = {
    "x86_64": "amd64",
    "x86-64": "amd64",
    "aarch64": "arm64",
    "i386": "386",
    "armhf": "arm",
    "armel": "arm",
}
_DEFAULT_VARIANT = {"arm64": "v8", "arm": "v7"}


class LookupFailed(Exception):
    """A lookup that ended without a config; `outcome` is its metrics label."""

    def __init__(self, outcome: str, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome


@dataclass(frozen=True)
class Platform:
    """An `os/arch[/variant]` platform, normalised so `linux/aarch64` matches `linux/arm64/v8`."""

    os: str
    architecture: str
    variant: str

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse `os/arch[/variant]` as the --platform flag spells it."""
        parts = text.strip().lower().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"platform {text!r} is not os/arch or os/arch/variant")
        return cls.of(parts[0], parts[1], parts[2] if len(parts) == 3 else "")

    @classmethod
    def of(cls, os: str, architecture: str, variant: str = "") -> Platform:
        """A normalised platform from an index entry's fields."""
        arch = _ARCH_ALIASES.get(architecture, architecture)
        variant = variant or _DEFAULT_VARIANT.get(arch, "")
        if arch in _DEFAULT_VARIANT and not variant.startswith("v"):
            variant = f"v{variant}"
        return cls(os, arch, variant)

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True)
class Fetched:
    """An image config, its config blob digest and the digest of the manifest it came from."""

    config: ImageConfig
    config_digest: str
    manifest_digest: str


@dataclass
class _Host:
    """What is learnt about one registry host: its scheme, its challenge, its tokens."""

    scheme: str | None
    challenge: Challenge | None = None
    tokens: dict[str, tuple[float, str]] = field(default_factory=dict)


def _scope(ref: ImageRef) -> str:
    """The token scope that lets a client pull `ref`'s repository."""
    return f"repository:{ref.path}:pull"


def _content_type(headers: httpx.Headers) -> str:
    return str(headers.get("content-type", "")).split(";")[0].strip()


def _verify_digest(body: bytes, digest: str) -> None:
    """Refuse content that does not hash to the digest it was asked for."""
    algorithm, _, expected = digest.partition(":")
    if algorithm not in ("sha256", "sha512"):
        return  # nothing to check it with; the registry is trusted for it
    if hashlib.new(algorithm, body).hexdigest() != expected:
        raise LookupFailed("error", f"content does not match digest {digest}")


def _strings(value: Any, what: str) -> list[str] | None:
    """A config field that must be null or a list of strings (Entrypoint, Cmd, Env)."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise LookupFailed("error", f"image config {what} is not a list of strings")
    return list(value)


def parse_image_config(body: bytes) -> ImageConfig:
    """The parts of an image config blob that detection reads."""
    data = json.loads(body)
    config = data.get("config") if isinstance(data, dict) else None
    config = config if isinstance(config, dict) else {}
    labels = config.get("Labels") or {}
    if not isinstance(labels, dict):
        raise LookupFailed("error", "image config Labels is not an object")
    return ImageConfig(
        labels={str(k): str(v) for k, v in labels.items()},
        entrypoint=_strings(config.get("Entrypoint"), "Entrypoint"),
        cmd=_strings(config.get("Cmd"), "Cmd"),
        env=_strings(config.get("Env"), "Env") or [],
    )


def select_platform(index: dict[str, Any], platform: Platform) -> str:
    """The digest of the first manifest in `index` built for `platform`."""
    for entry in index.get("manifests") or []:
        spec = entry.get("platform") if isinstance(entry, dict) else None
        if not isinstance(spec, dict) or not isinstance(entry.get("digest"), str):
            continue
        found = Platform.of(
            str(spec.get("os", "")), str(spec.get("architecture", "")), str(spec.get("variant", ""))
        )
        if found == platform:
            return str(entry["digest"])
    raise LookupFailed("not_found", f"no manifest for platform {platform}")


class RegistryClient:
    """HTTP access to registries: TLS per host, auth, size limits and per-call timeouts."""

    def __init__(
        self,
        *,
        insecure_registries: Iterable[str],
        platform: Platform,
        credentials: CredentialStore,
        ca_file: str | None,
        transport: httpx.AsyncBaseTransport | None,
    ) -> None:
        self._insecure = frozenset(h.strip().lower() for h in insecure_registries if h.strip())
        self._platform = platform
        self._credentials = credentials
        context = ssl.create_default_context(cafile=certifi.where())
        if ca_file is not None:
            context.load_verify_locations(cafile=ca_file)
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)

        def client(verify: ssl.SSLContext | bool) -> httpx.AsyncClient:
            return httpx.AsyncClient(
                verify=verify,
                transport=transport,
                limits=limits,
                headers={"User-Agent": USER_AGENT},
                follow_redirects=True,
                max_redirects=MAX_REDIRECTS,
                trust_env=False,
            )

        self._verified = client(context)
        # Unverified TLS, only ever used for hosts named with --insecure-registry.
        self._unverified = client(False)
        self._hosts: dict[str, _Host] = {}

    async def aclose(self) -> None:
        await self._verified.aclose()
        await self._unverified.aclose()

    def _is_insecure(self, ref: ImageRef) -> bool:
        return ref.domain.lower() in self._insecure or ref.host.lower() in self._insecure

    def _host(self, ref: ImageRef) -> _Host:
        host = self._hosts.get(ref.host)
        if host is None:
            host = _Host(scheme=None if self._is_insecure(ref) else "https")
            if len(self._hosts) >= MAX_HOSTS:
                self._hosts.clear()
            self._hosts[ref.host] = host
        return host

    async def fetch(
        self,
        ref: ImageRef,
        *,
        deadline: float,
        known: Callable[[str], ImageConfig | None],
        pinned: Callable[[str], str | None],
        revalidate: bool = False,
    ) -> Fetched:
        """Read `ref`'s config, skipping what the cache already holds.

        `known` answers config digests already cached (no blob fetch); `pinned` answers the
        config digest of a manifest digest of this repository. With `revalidate`, a tag is
        first checked with HEAD, which registries such as Docker Hub do not rate-limit.
        """
        if revalidate and ref.digest is None:
            found = await self._unchanged(ref, deadline=deadline, known=known, pinned=pinned)
            if found is not None:
                return found
        body, headers = await self._manifest(ref, ref.reference, deadline=deadline)
        manifest_digest = ref.digest or "sha256:" + hashlib.sha256(body).hexdigest()
        manifest = json.loads(body)
        if not isinstance(manifest, dict):
            raise LookupFailed("error", "manifest is not a JSON object")
        media_type = str(manifest.get("mediaType") or _content_type(headers))
        if media_type in INDEX_TYPES or "manifests" in manifest:
            body, _ = await self._manifest(
                ref, select_platform(manifest, self._platform), deadline=deadline
            )
            manifest = json.loads(body)
        config = manifest.get("config") if isinstance(manifest, dict) else None
        if not isinstance(config, dict) or not isinstance(config.get("digest"), str):
            raise LookupFailed("error", f"manifest of type {media_type!r} has no config")
        config_digest = str(config["digest"])
        cached = known(config_digest)
        if cached is not None:
            return Fetched(cached, config_digest, manifest_digest)
        blob, _ = await self._request(
            ref, f"blobs/{config_digest}", accept="*/*", limit=MAX_CONFIG_BYTES, deadline=deadline
        )
        _verify_digest(blob, config_digest)
        return Fetched(parse_image_config(blob), config_digest, manifest_digest)

    async def _unchanged(
        self,
        ref: ImageRef,
        *,
        deadline: float,
        known: Callable[[str], ImageConfig | None],
        pinned: Callable[[str], str | None],
    ) -> Fetched | None:
        """The cached config when a HEAD shows the tag still names a known manifest."""
        try:
            _, headers = await self._request(
                ref,
                f"manifests/{ref.reference}",
                method="HEAD",
                accept=ACCEPT_MANIFESTS,
                limit=0,
                deadline=deadline,
            )
        except LookupFailed as exc:
            if exc.outcome != "error":
                raise
            return None  # some registries answer HEAD badly: read the manifest instead
        digest = headers.get("docker-content-digest", "")
        config_digest = pinned(digest) if digest else None
        config = known(config_digest) if config_digest else None
        return Fetched(config, config_digest, digest) if config and config_digest else None

    async def _manifest(
        self, ref: ImageRef, reference: str, *, deadline: float
    ) -> tuple[bytes, httpx.Headers]:
        body, headers = await self._request(
            ref,
            f"manifests/{reference}",
            accept=ACCEPT_MANIFESTS,
            limit=MAX_MANIFEST_BYTES,
            deadline=deadline,
        )
        if reference.startswith("sha"):
            _verify_digest(body, reference)
        return body, headers

    async def _request(
        self,
        ref: ImageRef,
        path: str,
        *,
        method: str = "GET",
        accept: str,
        limit: int,
        deadline: float,
    ) -> tuple[bytes, httpx.Headers]:
        """`method` `/v2/<repo>/<path>`, answering one auth challenge; returns body and headers."""
        host = self._host(ref)
        for attempt in range(2):
            headers = {"Accept": accept}
            authorization = await self._authorization(ref, host, deadline=deadline)
            if authorization:
                headers["Authorization"] = authorization
            status, response_headers, body = await self._send(
                ref, host, path, method=method, headers=headers, limit=limit, deadline=deadline
            )
            challenge = parse_challenge(response_headers.get("www-authenticate", ""))
            if status == 401 and attempt == 0 and challenge is not None:
                # First contact, or a token that expired early: answer the challenge once.
                host.challenge = challenge
                host.tokens.pop(_scope(ref), None)
                continue
            if status == 200:
                return body, response_headers
            outcome = "not_found" if status == 404 else "error"
            raise LookupFailed(outcome, f"{method} {path}: HTTP {status}")
        raise LookupFailed("error", f"{method} {path}: unauthorized")

    def _client(self, host: str) -> httpx.AsyncClient:
        return self._unverified if host.lower() in self._insecure else self._verified

    async def _send(
        self,
        ref: ImageRef,
        host: _Host,
        path: str,
        *,
        method: str,
        headers: dict[str, str],
        limit: int,
        deadline: float,
    ) -> tuple[int, httpx.Headers, bytes]:
        """One request; HTTPS then plain HTTP for an insecure host whose scheme is not known yet."""
        schemes = [host.scheme] if host.scheme else ["https", "http"]
        for scheme in schemes:
            url = f"{scheme}://{ref.host}/v2/{ref.path}/{path}"
            try:
                result = await self._read(
                    self._client(ref.host),
                    url,
                    method=method,
                    headers=headers,
                    limit=limit,
                    deadline=deadline,
                )
            except (httpx.ConnectError, httpx.RemoteProtocolError):
                if scheme == schemes[-1]:
                    raise
                continue
            host.scheme = scheme
            return result
        raise AssertionError("unreachable")

    async def _read(
        self,
        client: httpx.AsyncClient,
        url: str,
        *,
        method: str = "GET",
        headers: dict[str, str],
        limit: int,
        deadline: float,
    ) -> tuple[int, httpx.Headers, bytes]:
        """`method` `url` with a timeout capped by `deadline`, reading at most `limit` bytes."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LookupFailed("timeout", f"no time left for {method} {url}")
        timeout = httpx.Timeout(min(HTTP_CALL_TIMEOUT, remaining))
        async with client.stream(method, url, headers=headers, timeout=timeout) as response:
            if response.status_code != 200:
                return response.status_code, response.headers, b""
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > limit:
                    raise LookupFailed("error", f"{method} {url}: larger than {limit} bytes")
                chunks.append(chunk)
            return response.status_code, response.headers, b"".join(chunks)

    async def _authorization(self, ref: ImageRef, host: _Host, *, deadline: float) -> str | None:
        """The Authorization header the host's last challenge calls for, if any."""
        challenge = host.challenge
        credentials = self._credentials.get(ref.domain)
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            return credentials.basic() if credentials else None
        if challenge.scheme != "bearer" or "realm" not in challenge.params:
            return None
        scope = _scope(ref)
        cached = host.tokens.get(scope)
        if cached is not None and cached[0] > time.monotonic():
            return f"Bearer {cached[1]}"
        token, ttl = await self._token(challenge, scope, credentials, deadline=deadline)
        if len(host.tokens) >= MAX_TOKENS_PER_HOST:
            host.tokens.clear()
        host.tokens[scope] = (time.monotonic() + max(0.0, ttl - TOKEN_MARGIN), token)
        return f"Bearer {token}"

    async def _token(
        self, challenge: Challenge, scope: str, credentials: Credentials | None, *, deadline: float
    ) -> tuple[str, float]:
        """A bearer token from the challenge's realm, anonymous or with the host's credentials."""
        realm = challenge.params["realm"]
        params = {"scope": scope}
        if "service" in challenge.params:
            params["service"] = challenge.params["service"]
        headers = {"Accept": "application/json"}
        realm_url = httpx.URL(realm)
        realm_host = realm_url.netloc.decode("ascii")
        # Credentials travel in clear only to a realm named with --insecure-registry.
        if credentials is not None and (
            realm_url.scheme == "https" or realm_host.lower() in self._insecure
        ):
            headers["Authorization"] = credentials.basic()
        url = str(realm_url.copy_merge_params(params))
        status, _, body = await self._read(
            self._client(realm_host),
            url,
            headers=headers,
            limit=MAX_MANIFEST_BYTES,
            deadline=deadline,
        )
        if status != 200:
            raise LookupFailed("error", f"token endpoint {realm}: HTTP {status}")
        data = json.loads(body)
        if not isinstance(data, dict):
            raise LookupFailed("error", f"token endpoint {realm}: the answer is not an object")
        token = data.get("token") or data.get("access_token")
        if not isinstance(token, str) or not token:
            raise LookupFailed("error", f"token endpoint {realm}: no token in the answer")
        expires_in = data.get("expires_in")
        ttl = float(expires_in) if isinstance(expires_in, int | float) else TOKEN_DEFAULT_TTL
        return token, ttl
