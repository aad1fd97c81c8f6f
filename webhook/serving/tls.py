"""TLS for the server: a context that picks up a renewed certificate file without a restart.

A Kubernetes Secret mounted as a volume is renewed by the kubelet swapping a symlink, so the
files change under a running server. Each worker process checks the files every few seconds
(on its event loop, so no handshake races the swap) and loads the new pair into the same
SSLContext: new connections get the new certificate, open ones keep theirs.

The two files are read once, and the pair is loaded from those bytes, never from the paths
again: two opens of the paths can straddle a swap (the certificate of one renewal, the key of
the next), even where the writer swaps both atomically. A pair that does not load (a key that
does not match its certificate, a half-written file) keeps the old one in service and is
tried again on the next check; only when the same files still fail then is it an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import ssl
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from webhook import logs
from webhook.certificates import authority as certs
from webhook.metrics import CERT_RELOADS

log = logs.get("tls")
# TLS 1.2 suites: forward secrecy (ECDHE) and AEAD (GCM, ChaCha20-Poly1305) only, no CBC, as
# Mozilla's "intermediate" profile; TLS 1.3 suites are all AEAD and are not affected by this.
# kube-apiserver (Go) offers these first and speaks TLS 1.3 anyway.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def _read_pair(cert_file: str, key_file: str) -> tuple[bytes, bytes, str]:
    """Both files' bytes, read once, and a fingerprint of the two."""
    cert, key = Path(cert_file).read_bytes(), Path(key_file).read_bytes()
    digest = hashlib.sha256(cert)
    digest.update(b"\0")
    digest.update(key)
    return cert, key, digest.hexdigest()


@contextlib.contextmanager
def _pem_paths(cert: bytes, key: bytes) -> Iterator[tuple[str, str]]:
    """Paths that hold exactly these bytes, for `load_cert_chain` (which reads only paths).

    Anonymous memory files on Linux (nothing written to a disk, which is read-only in the
    chart's pod); elsewhere files in a private temporary directory.
    """
    if hasattr(os, "memfd_create"):
        fds = [os.memfd_create(name) for name in ("tls.crt", "tls.key")]
        try:
            for fd, data in zip(fds, (cert, key), strict=True):
                os.write(fd, data)
            yield f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}"
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="concurrency-injector-tls-") as where:
        paths = (Path(where) / "tls.crt", Path(where) / "tls.key")
        for path, data in zip(paths, (cert, key), strict=True):
            path.write_bytes(data)
        yield str(paths[0]), str(paths[1])


def _load(ctx: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    with _pem_paths(cert, key) as (cert_path, key_path):
        ctx.load_cert_chain(cert_path, key_path)


@dataclass
class ReloadingContext:
    """An `ssl_context_factory` for uvicorn that keeps its certificate current.

    Picklable (only paths are state until it is called), so uvicorn can hand it to worker
    processes; each process builds and watches its own context.
    """

    cert_file: str
    key_file: str
    context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)
    loaded: str = ""
    failed: str = ""  # the fingerprint of files that did not load once (tried once more)

    def __getstate__(self) -> dict[str, str]:
        return {"cert_file": self.cert_file, "key_file": self.key_file, "loaded": ""}

    def __setstate__(self, state: dict[str, str]) -> None:
        self.cert_file, self.key_file = state["cert_file"], state["key_file"]
        self.context, self.loaded, self.failed = None, "", ""

    def build(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(TLS12_CIPHERS)
        ctx.set_alpn_protocols(["http/1.1"])
        cert, key, self.loaded = _read_pair(self.cert_file, self.key_file)
        _load(ctx, cert, key)
        self.context = ctx
        return ctx

    def __call__(self, config: object, default: object) -> ssl.SSLContext:
        return self.build()

    def healthy(self) -> bool:
        """Whether this process serves with it (uvicorn built its context)."""
        return self.context is not None

    def reload_if_changed(self) -> bool:
        """Load the files again if their content changed; True when a new pair is in use."""
        if self.context is None:
            return False
        current = ""
        try:
            cert, key, current = _read_pair(self.cert_file, self.key_file)
            if current == self.loaded:
                self.failed = ""
                return False
            # Prove the pair on a scratch context first: a failed load_cert_chain can leave the
            # live context holding the new certificate with the old key, breaking handshakes.
            _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert, key)
            _load(self.context, cert, key)
        except (OSError, ssl.SSLError) as exc:
            seen = current or f"unreadable: {exc}"
            if seen != self.failed:  # maybe caught mid-renewal: once more on the next check
                self.failed = seen
                log.debug("certificate not loaded yet; trying again", extra={"error": str(exc)})
                return False
            CERT_RELOADS.labels("error").inc()
            log.warning(
                "certificate reload failed; keeping the current one", extra={"error": str(exc)}
            )
            return False
        self.loaded, self.failed = current, ""
        CERT_RELOADS.labels("ok").inc()
        log.info("serving certificate reloaded", extra={"cert_file": self.cert_file})
        return True


def pair_problem(cert_file: str, key_file: str) -> str | None:
    """What is wrong with a certificate and key pair, naming the file, or None when it loads.

    Checked before start-up, so a missing or garbage file is one line, not a traceback from
    every worker.
    """
    for flag, path in (("--cert-file", cert_file), ("--key-file", key_file)):
        try:
            Path(path).read_bytes()
        except OSError as exc:
            return f"{flag} {path}: cannot read it: {exc.strerror}"
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        if not _loads(x509.load_pem_x509_certificate, Path(cert_file).read_bytes()):
            return f"--cert-file {cert_file}: not a PEM certificate"
        if not _loads(_private_key, Path(key_file).read_bytes()):
            return f"--key-file {key_file}: not an unencrypted PEM private key"
        return f"--key-file {key_file} does not match --cert-file {cert_file} ({exc.reason})"
    return None


def _private_key(pem: bytes) -> object:
    return serialization.load_pem_private_key(pem, password=None)


def _loads(load: Callable[[bytes], object], pem: bytes) -> bool:
    try:
        load(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


@dataclass(frozen=True)
class DevFiles:
    directory: Path
    ca_file: Path
    cert_file: Path
    key_file: Path


def write_dev_certificates(names: list[str], directory: str | None = None) -> DevFiles:
    """A throwaway CA and a serving certificate for `names`, written to a private directory."""
    where = Path(directory or tempfile.mkdtemp(prefix="concurrency-injector-dev-"))
    where.mkdir(parents=True, exist_ok=True)
    ca = certs.build_ca("concurrency-injector-dev-ca")
    leaf = certs.build_leaf(ca, names)
    files = DevFiles(where, where / "ca.crt", where / "tls.crt", where / "tls.key")
    files.ca_file.write_bytes(ca.cert_pem)
    files.cert_file.write_bytes(leaf.cert_pem)
    fd = os.open(files.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(leaf.key_pem)
    return files
