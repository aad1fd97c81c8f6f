"""Shared fixtures: a test PKI, and real registries for the registry tests.

Each registry is a real `docker-registry serve` process on a loopback port, one per module:
plain HTTP, htpasswd basic auth, TLS with a test CA, and token auth with a test issuer.
"""

from __future__ import annotations

import base64
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.registry_server import (
    PASSWORD,
    TOKEN_ISSUER,
    TOKEN_SERVICE,
    USER,
    Pusher,
    RegistryServer,
    TokenIssuer,
    free_port,
    registry_binary,
)
from tests.servers import Pki
from webhook.certificates.authority import build_ca, build_leaf

INSTALL_TOOLS = Path(__file__).resolve().parent.parent / "hack" / "install-tools.sh"


@pytest.fixture(scope="session")
def tools() -> Path:
    """helm and kubectl from hack/install-tools.sh (installed once, then reused)."""
    if shutil.which("bash") is None:
        pytest.skip("bash is needed to run hack/install-tools.sh")
    run = subprocess.run(
        ["bash", str(INSTALL_TOOLS)], capture_output=True, text=True, timeout=300, check=False
    )
    if run.returncode != 0:
        pytest.skip(f"hack/install-tools.sh could not get helm: {run.stderr.strip()[-500:]}")
    return Path(run.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A test CA and a serving certificate for localhost and 127.0.0.1, one per module."""
    return Pki.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def registry_bin() -> str:
    """The `docker-registry` binary, or a skip with the reason."""
    binary = registry_binary()
    if binary is None:
        pytest.skip(
            "docker-registry is not on PATH and hack/install-registry.sh could not install it"
        )
    return binary


@pytest.fixture(scope="module")
def plain_registry(
    registry_bin: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RegistryServer, Pusher]]:
    """A plain-HTTP registry with no auth, and a pusher for it."""
    server = RegistryServer(tmp_path_factory.mktemp("plain"), registry_bin)
    server.start()
    pusher = Pusher(server.url)
    yield server, pusher
    pusher.close()
    server.stop()


@pytest.fixture(scope="module")
def basic_registry(
    registry_bin: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RegistryServer, Pusher]]:
    """A registry behind htpasswd basic auth (bcrypt), and a pusher with its credentials."""
    htpasswd = shutil.which("htpasswd")
    if htpasswd is None:
        pytest.skip("htpasswd (apache2-utils) is missing; run hack/install-registry.sh")
    workdir = tmp_path_factory.mktemp("basic")
    line = subprocess.run(
        [htpasswd, "-Bbn", USER, PASSWORD], check=True, capture_output=True, text=True, timeout=30
    ).stdout.strip()
    (workdir / "htpasswd").write_text(line + "\n")
    server = RegistryServer(
        workdir,
        registry_bin,
        auth={"htpasswd": {"realm": "basic-realm", "path": str(workdir / "htpasswd")}},
    )
    server.start()
    basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    pusher = Pusher(server.url, headers_for=lambda _repo: {"Authorization": basic})
    yield server, pusher
    pusher.close()
    server.stop()


@pytest.fixture(scope="module")
def tls_registry(
    registry_bin: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RegistryServer, Pusher, Path]]:
    """A registry serving TLS with a certificate from a test CA; yields the CA file too."""
    workdir = tmp_path_factory.mktemp("tls")
    ca = build_ca("registry-test-ca")
    leaf = build_leaf(ca, ["localhost", "127.0.0.1"])
    ca_file, cert, key = workdir / "ca.pem", workdir / "tls.crt", workdir / "tls.key"
    ca_file.write_bytes(ca.cert_pem)
    cert.write_bytes(leaf.cert_pem)
    key.write_bytes(leaf.key_pem)
    server = RegistryServer(workdir, registry_bin, tls=(cert, key))
    server.start(ca_file=ca_file)
    pusher = Pusher(server.url, verify=ssl.create_default_context(cafile=str(ca_file)))
    yield server, pusher, ca_file
    pusher.close()
    server.stop()


@pytest.fixture(scope="module")
def token_registry(
    registry_bin: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RegistryServer, Pusher, TokenIssuer]]:
    """A registry with token auth, its token issuer, and a pusher with push tokens."""
    workdir = tmp_path_factory.mktemp("token")
    signer = build_ca("registry-token-signer")
    bundle = workdir / "token-signer.pem"
    bundle.write_bytes(signer.cert_pem)
    issuer = TokenIssuer(
        signer, service=TOKEN_SERVICE, issuer=TOKEN_ISSUER, credentials=(USER, PASSWORD)
    )
    issuer.start()
    server = RegistryServer(
        workdir,
        registry_bin,
        auth={
            "token": {
                "realm": issuer.realm,
                "service": TOKEN_SERVICE,
                "issuer": TOKEN_ISSUER,
                "rootcertbundle": str(bundle),
            }
        },
    )
    server.start()

    def push_token(repo: str) -> dict[str, str]:
        access = [{"type": "repository", "name": repo, "actions": ["pull", "push"]}]
        return {"Authorization": f"Bearer {issuer.mint(access, subject='pusher')}"}

    pusher = Pusher(server.url, headers_for=push_token)
    yield server, pusher, issuer
    pusher.close()
    server.stop()
    issuer.stop()


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server on loopback that accepts connections and never answers; yields host:port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", free_port()))
    listener.listen(64)
    listener.settimeout(0.1)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(timeout=2)
    for conn in held:
        conn.close()
    listener.close()
