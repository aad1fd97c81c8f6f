"""A real distribution registry (Debian's `docker-registry`) for tests, and a way to push to it.

`RegistryServer` writes a config, starts `docker-registry serve CONFIG` on a free loopback
port, waits until `/v2/` answers and stops it at teardown. `Pusher` pushes images over the
registry HTTP API: monolithic blob uploads (POST then PUT) and manifest PUTs. `TokenIssuer`
is the small bearer-token service a `auth: token:` registry sends clients to; it signs JWTs
with a key whose certificate is in the registry's `rootcertbundle`.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import ssl
import subprocess
import tarfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from webhook.certificates.authority import KeyPair

REGISTRY_BINARY = "docker-registry"
INSTALL_SCRIPT = Path(__file__).resolve().parent.parent / "hack" / "install-registry.sh"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
TOKEN_LIFETIME = 300
USER, PASSWORD = "puller", "s3cret-pass"
TOKEN_SERVICE, TOKEN_ISSUER = "test-registry", "test-token-issuer"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def registry_binary() -> str | None:
    """The path of `docker-registry`, installing it (as root) when it is missing."""
    found = shutil.which(REGISTRY_BINARY)
    if found is None and os.geteuid() == 0 and INSTALL_SCRIPT.exists():
        try:
            subprocess.run(
                ["bash", str(INSTALL_SCRIPT)], check=False, capture_output=True, timeout=600
            )
        except (OSError, subprocess.SubprocessError):
            return None
        found = shutil.which(REGISTRY_BINARY)
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass
class RegistryServer:
    """One `docker-registry serve` process on a loopback port, with its own storage."""

    workdir: Path
    binary: str
    auth: dict[str, Any] | None = None
    tls: tuple[Path, Path] | None = None
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def config(self) -> dict[str, Any]:
        """The registry's configuration file, as data."""
        http: dict[str, Any] = {"addr": self.host, "secret": uuid.uuid4().hex}
        if self.tls:
            http["tls"] = {"certificate": str(self.tls[0]), "key": str(self.tls[1])}
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.workdir / "data")},
                "delete": {"enabled": True},
            },
            "http": http,
        }
        if self.auth:
            config["auth"] = self.auth
        return config

    def start(self, *, ca_file: Path | None = None) -> None:
        """Start the registry and wait until `/v2/` answers (200 or 401)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "config.yml"
        config_path.write_text(yaml.safe_dump(self.config()))
        self.log_path = self.workdir / "registry.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [self.binary, "serve", str(config_path)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT
        verify = ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
        with httpx.Client(verify=verify, timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break
                try:
                    if client.get(f"{self.url}/v2/").status_code in (200, 401):
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"docker-registry did not start: {self.log_tail()}")

    def stop(self) -> None:
        """Stop the registry: TERM, then KILL if it does not exit in time."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT)

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class Pushed:
    """What a push produced: the manifest digest and the config blob digest."""

    digest: str
    config_digest: str
    size: int
    media_type: str


def _empty_layer() -> tuple[bytes, str]:
    """A gzipped empty tar layer and its diff ID (digest of the uncompressed tar)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w"):
        pass
    tar = raw.getvalue()
    return gzip.compress(tar, mtime=0), digest_of(tar)


class Pusher:
    """Pushes images to a registry over its HTTP API, as `docker push` would."""

    def __init__(
        self,
        base_url: str,
        *,
        verify: ssl.SSLContext | bool = True,
        headers_for: Callable[[str], dict[str, str]] | None = None,
    ) -> None:
        self._base = base_url
        self._client = httpx.Client(verify=verify, timeout=10.0)
        self._headers_for = headers_for or (lambda _repo: {})

    def close(self) -> None:
        self._client.close()

    def blob(self, repo: str, data: bytes) -> str:
        """Upload `data` as a blob (monolithic: POST for a session, PUT with the digest)."""
        digest = digest_of(data)
        headers = self._headers_for(repo)
        started = self._client.post(f"{self._base}/v2/{repo}/blobs/uploads/", headers=headers)
        assert started.status_code == 202, started.text
        location = httpx.URL(self._base).join(started.headers["location"])
        done = self._client.put(
            location.copy_merge_params({"digest": digest}),
            content=data,
            headers={**headers, "Content-Type": "application/octet-stream"},
        )
        assert done.status_code == 201, done.text
        return digest

    def manifest(self, repo: str, reference: str, body: bytes, media_type: str) -> str:
        """PUT a manifest under a tag or digest; returns its digest."""
        headers = {**self._headers_for(repo), "Content-Type": media_type}
        answer = self._client.put(
            f"{self._base}/v2/{repo}/manifests/{reference}", content=body, headers=headers
        )
        assert answer.status_code == 201, answer.text
        return digest_of(body)

    def image(
        self,
        repo: str,
        tag: str | None,
        *,
        config: dict[str, Any],
        oci: bool = False,
        os_name: str = "linux",
        architecture: str = "amd64",
    ) -> Pushed:
        """Push a one-layer image whose config section is `config`; tag it when `tag` is set."""
        layer, diff_id = _empty_layer()
        layer_digest = self.blob(repo, layer)
        config_blob = json.dumps(
            {
                "architecture": architecture,
                "os": os_name,
                "config": config,
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            }
        ).encode()
        config_digest = self.blob(repo, config_blob)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST if oci else DOCKER_MANIFEST,
                "config": {
                    "mediaType": OCI_CONFIG if oci else DOCKER_CONFIG,
                    "size": len(config_blob),
                    "digest": config_digest,
                },
                "layers": [
                    {
                        "mediaType": OCI_LAYER if oci else DOCKER_LAYER,
                        "size": len(layer),
                        "digest": layer_digest,
                    }
                ],
            }
        ).encode()
        media_type = OCI_MANIFEST if oci else DOCKER_MANIFEST
        digest = self.manifest(repo, tag or digest_of(manifest), manifest, media_type)
        return Pushed(digest, config_digest, len(manifest), media_type)

    def index(
        self,
        repo: str,
        tag: str,
        entries: list[tuple[Pushed, dict[str, str]]],
        *,
        oci: bool = False,
    ) -> str:
        """Push an index (manifest list) of already pushed manifests with their platforms."""
        media_type = OCI_INDEX if oci else DOCKER_LIST
        manifests = [
            {
                "mediaType": pushed.media_type,
                "size": pushed.size,
                "digest": pushed.digest,
                "platform": platform,
            }
            for pushed, platform in entries
        ]
        body = json.dumps(
            {"schemaVersion": 2, "mediaType": media_type, "manifests": manifests}
        ).encode()
        return self.manifest(repo, tag, body, media_type)


class TokenIssuer:
    """A bearer-token service for a `token` auth registry, on a loopback port.

    Grants the requested actions to anyone, except on repositories under `private/`, which
    need `credentials` as HTTP basic auth. Records every request it answers.
    """

    def __init__(
        self, signer: KeyPair, *, service: str, issuer: str, credentials: tuple[str, str]
    ) -> None:
        self.signer, self.service, self.issuer = signer, service, issuer
        self.credentials = credentials
        self.requests: list[dict[str, str]] = []
        self.port = free_port()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def mint(self, access: list[dict[str, Any]], *, subject: str = "") -> str:
        """A JWT the registry accepts: ES256, signed by `signer`, its certificate in `x5c`."""
        key = serialization.load_pem_private_key(self.signer.key_pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        der = self.signer.cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(der).decode()]}
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + TOKEN_LIFETIME,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def grant(self, scope: str, authorization: str) -> list[dict[str, Any]]:
        """The access a token for `scope` carries, given the request's Authorization header."""
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        if kind != "repository" or not name:
            return []
        user, password = self.credentials
        expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        if name.startswith("private/") and authorization != expected:
            return []
        return [{"type": "repository", "name": name, "actions": actions.split(",")}]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                scope = query.get("scope", [""])[0]
                authorization = self.headers.get("Authorization", "")
                issuer.requests.append(
                    {
                        "scope": scope,
                        "service": query.get("service", [""])[0],
                        "authorization": authorization,
                    }
                )
                token = issuer.mint(issuer.grant(scope, authorization))
                body = json.dumps({"token": token, "expires_in": TOKEN_LIFETIME}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


class CountingTransport(httpx.AsyncBaseTransport):
    """Wraps a real transport; records requests sent and those the server answered."""

    def __init__(self, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self.inner = inner or httpx.AsyncHTTPTransport()
        self.attempts: list[tuple[str, str, str]] = []
        self.requests: list[tuple[str, str, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        sent = (request.method, request.url.scheme, request.url.path)
        self.attempts.append(sent)
        response = await self.inner.handle_async_request(request)
        self.requests.append(sent)  # answered: it reached the server
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()

    def paths(self, fragment: str) -> list[str]:
        """Paths of answered requests that contain `fragment`."""
        return [path for _, _, path in self.requests if fragment in path]


def docker_config(path: Path, host: str, *, form: str = "auth") -> str:
    """Write a Docker config.json with credentials for `host`; returns its path."""
    if form == "auth":
        entry = {"auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
    else:
        entry = {"username": USER, "password": PASSWORD}
    path.write_text(json.dumps({"auths": {f"https://{host}/v1/": entry}}))
    return str(path)
