"""Self-managed TLS: a CA and serving certificate kept in a Secret, trusted by the API server.

The chart's default TLS mode needs nothing else installed. Every replica runs the same loop:
read the Secret; decide, with the pure `plan()`, whether anything must change (create, renew the
serving certificate at 2/3 of its lifetime, renew the CA before it expires); write the change
with optimistic concurrency (a 409 means another replica wrote first: re-read and use theirs);
keep the CA bundle in the `caBundle` of every webhook of its own MutatingWebhookConfiguration;
write the serving pair into the certificate directory, where the server's reload picks it up.

The Secret (type kubernetes.io/tls) holds `ca.crt` (the trust bundle: the current CA first, then
any older CA still valid, so a CA rotation overlaps), `ca.key` (the current CA's key), and
`tls.crt`/`tls.key` (the serving pair every replica serves).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
import random
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from webhook import logs
from webhook.certificates import authority as certs
from webhook.certificates.authority import KeyPair

CA_CERT_KEY = "ca.crt"
CA_KEY_KEY = "ca.key"
TLS_CERT_KEY = "tls.crt"
TLS_KEY_KEY = "tls.key"
SECRET_TYPE = "kubernetes.io/tls"
SECRET_LABELS = {
    "app.kubernetes.io/name": "concurrency-injector",
    "app.kubernetes.io/managed-by": "concurrency-injector",
}
# How often every replica re-reads the Secret, so all of them converge on one pair.
RESYNC_INTERVAL = 60.0
# A new CA is published in the caBundle this long before any serving certificate it signs is
# served, so every API server trusts it first (webhook configurations reach them in seconds).
CA_PROPAGATION = dt.timedelta(minutes=10)
# Seconds for one Kubernetes API call.
API_TIMEOUT = 10.0
# Writes lost to other replicas before giving up for this round.
MAX_CONFLICTS = 5
# The self-managed pair on disk: `..data` names the current directory of both files.
DATA_LINK = "..data"
PAIR_PREFIX = "..pair_"
HTTP_NOT_FOUND = 404
HTTP_CONFLICT = 409

log = logs.get("selfmanaged")


@dataclass(frozen=True)
class Material:
    """What the Secret holds: the current CA, the serving pair, and the bundle to trust."""

    ca: KeyPair
    leaf: KeyPair
    trust: bytes


@dataclass(frozen=True)
class Target:
    """Where self-managed TLS lives: the Secret, webhook configuration, Service and files."""

    namespace: str
    secret_name: str
    webhook_config: str
    service_name: str
    cert_file: Path
    key_file: Path
    leaf_lifetime: dt.timedelta = certs.LEAF_LIFETIME
    resync_interval: float = RESYNC_INTERVAL
    kubeconfig: str | None = None

    @property
    def names(self) -> list[str]:
        return certs.service_names(self.service_name, self.namespace)

    @classmethod
    def from_settings(cls, settings: SelfManagedSettings) -> Target:
        """Build from the server's settings; raise ValueError naming the first missing setting."""
        values = {
            "NAMESPACE": settings.namespace,
            "TLS_SECRET": settings.tls_secret,
            "WEBHOOK_CONFIG": settings.webhook_config,
            "SERVICE_NAME": settings.service_name,
            "CERT_FILE": settings.cert_file,
            "KEY_FILE": settings.key_file,
        }
        for key, value in values.items():
            if not value:
                raise ValueError(f"self-managed TLS needs CONCURRENCY_INJECTOR_{key}")
        return cls(
            namespace=str(settings.namespace),
            secret_name=str(settings.tls_secret),
            webhook_config=str(settings.webhook_config),
            service_name=str(settings.service_name),
            cert_file=Path(str(settings.cert_file)),
            key_file=Path(str(settings.key_file)),
            leaf_lifetime=dt.timedelta(seconds=settings.tls_cert_lifetime),
            resync_interval=settings.tls_resync_seconds,
            kubeconfig=settings.kubeconfig,
        )


class SelfManagedSettings(Protocol):
    """The settings self-managed TLS reads (a subset of the server's Settings)."""

    @property
    def namespace(self) -> str | None: ...
    @property
    def tls_secret(self) -> str | None: ...
    @property
    def webhook_config(self) -> str | None: ...
    @property
    def service_name(self) -> str | None: ...
    @property
    def cert_file(self) -> str | None: ...
    @property
    def key_file(self) -> str | None: ...
    @property
    def tls_cert_lifetime(self) -> float: ...
    @property
    def tls_resync_seconds(self) -> float: ...
    @property
    def kubeconfig(self) -> str | None: ...


class SecretsApi(Protocol):
    """The calls made on `kubernetes.client.CoreV1Api`."""

    def read_namespaced_secret(
        self, name: str, namespace: str, *, _request_timeout: float
    ) -> Any: ...
    def create_namespaced_secret(
        self, namespace: str, body: Any, *, _request_timeout: float
    ) -> Any: ...
    def replace_namespaced_secret(
        self, name: str, namespace: str, body: Any, *, _request_timeout: float
    ) -> Any: ...


class WebhookConfigApi(Protocol):
    """The calls made on `kubernetes.client.AdmissionregistrationV1Api`."""

    def read_mutating_webhook_configuration(self, name: str, *, _request_timeout: float) -> Any: ...
    def patch_mutating_webhook_configuration(
        self, name: str, body: Any, *, _content_type: str, _request_timeout: float
    ) -> Any: ...


# --- pure decisions -------------------------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _valid_at(cert: x509.Certificate, now: dt.datetime) -> bool:
    return cert.not_valid_before_utc <= now < cert.not_valid_after_utc


def _decode_value(value: str | bytes) -> bytes:
    # The client hands Secret data over base64-encoded; accept raw PEM too, should that change.
    if isinstance(value, bytes) and value.lstrip().startswith(b"-----BEGIN"):
        return value
    return base64.b64decode(value, validate=True)


def decode_secret(data: Mapping[str, str | bytes] | None) -> Material | None:
    """The Material in a Secret's `data`, or None when it is absent, incomplete or unreadable."""
    if not data or not all(k in data for k in (CA_CERT_KEY, CA_KEY_KEY, TLS_CERT_KEY, TLS_KEY_KEY)):
        return None
    try:
        trust = certs.load_bundle(_decode_value(data[CA_CERT_KEY]))
        if not trust:
            return None
        ca = KeyPair(certs.dump_bundle(trust[:1]), _decode_value(data[CA_KEY_KEY]))
        leaf = KeyPair(_decode_value(data[TLS_CERT_KEY]), _decode_value(data[TLS_KEY_KEY]))
        leaf.cert  # noqa: B018 -- parse now, so a damaged certificate reads as "no material"
    except ValueError:
        return None
    return Material(ca=ca, leaf=leaf, trust=certs.dump_bundle(trust))


def encode_secret(material: Material) -> dict[str, str]:
    """The Secret `data` (base64 values) that holds `material`."""
    raw = {
        CA_CERT_KEY: material.trust,
        CA_KEY_KEY: material.ca.key_pem,
        TLS_CERT_KEY: material.leaf.cert_pem,
        TLS_KEY_KEY: material.leaf.key_pem,
    }
    return {k: base64.b64encode(v).decode("ascii") for k, v in raw.items()}


def _ca_usable(ca: KeyPair, now: dt.datetime) -> bool:
    try:
        cert = ca.cert
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    return basic.ca and _valid_at(cert, now) and certs.key_matches(ca)


def issued_by(leaf: x509.Certificate, ca: x509.Certificate) -> bool:
    """True when `ca` signed `leaf`."""
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _leaf_reason(
    leaf: KeyPair,
    ca: KeyPair,
    *,
    trust: list[x509.Certificate],
    names: list[str],
    now: dt.datetime,
) -> str | None:
    """Why the serving pair must be reissued, or None when it can stay."""
    cert = leaf.cert
    if not certs.key_matches(leaf):
        return "key does not match certificate"
    if not _valid_at(cert, now) or certs.needs_rotation(cert, now=now):
        return "2/3 of its lifetime passed"
    if not set(names) <= certs.dns_names(cert):
        return "names changed"
    if not any(issued_by(cert, t) for t in trust):
        return "signed by an untrusted CA"
    ca_cert = ca.cert
    settled = ca_cert.not_valid_before_utc + certs.BACKDATE + CA_PROPAGATION
    if not issued_by(cert, ca_cert) and now >= settled:
        return "moving to the new CA"
    return None


def plan(
    current: Material | None,
    names: list[str],
    *,
    now: dt.datetime | None = None,
    leaf_lifetime: dt.timedelta = certs.LEAF_LIFETIME,
) -> Material | None:
    """What the Secret should hold from now on, or None when `current` needs no change.

    Absent or unusable material is replaced whole. The CA is renewed at 2/3 of its lifetime
    with the old CA kept in the trust bundle until it expires; the serving certificate moves to
    the new CA only after CA_PROPAGATION, so the API server trusts the new CA before it sees it.
    The serving certificate never outlives its CA (`certs.build_leaf` caps it).
    """
    now = now or _now()
    if current is None or not _ca_usable(current.ca, now):
        ca = certs.build_ca(now=now)
        leaf = certs.build_leaf(ca, names, lifetime=leaf_lifetime, now=now)
        return Material(ca=ca, leaf=leaf, trust=ca.cert_pem)

    ca, leaf = current.ca, current.leaf
    old_trust = certs.load_bundle(current.trust)
    trust = [c for c in old_trust if _valid_at(c, now)]
    reason = _leaf_reason(leaf, ca, trust=trust, names=names, now=now)
    if reason:
        log.info("issuing a new serving certificate: %s", reason)
        # Signed by the CA in force now: in a round that also renews the CA, that is the old
        # one, which the API servers already trust; the move to the new CA comes later.
        leaf = certs.build_leaf(ca, names, lifetime=leaf_lifetime, now=now)
    if certs.needs_rotation(ca.cert, now=now):
        log.info("renewing the CA; the old one stays trusted until it expires")
        ca = certs.build_ca(now=now)
        trust = [ca.cert, *trust]

    if ca is current.ca and leaf is current.leaf and trust == old_trust:
        return None
    return Material(ca=ca, leaf=leaf, trust=certs.dump_bundle(trust))


def next_material(
    read: Material | None,
    names: list[str],
    *,
    now: dt.datetime | None = None,
    leaf_lifetime: dt.timedelta = certs.LEAF_LIFETIME,
) -> tuple[Material, bool]:
    """The material to use after reading the Secret, and whether it must be written back.

    After losing a write (409), the re-read material of the winner is used as is when `plan`
    has nothing to change in it: that is how replicas starting together converge on one CA.
    """
    wanted = plan(read, names, now=now, leaf_lifetime=leaf_lifetime)
    if wanted is None:
        assert read is not None  # plan() only returns None for material it could keep
        return read, False
    return wanted, True


# --- Kubernetes and files ---------------------------------------------------------------


def _secret_body(
    target: Target, material: Material, *, resource_version: str | None
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": target.secret_name,
        "namespace": target.namespace,
        "labels": dict(SECRET_LABELS),
    }
    if resource_version:
        metadata["resourceVersion"] = resource_version
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": SECRET_TYPE,
        "data": encode_secret(material),
    }


def _read_secret(api: SecretsApi, target: Target) -> Any:
    from kubernetes.client.exceptions import ApiException

    try:
        return api.read_namespaced_secret(
            target.secret_name, target.namespace, _request_timeout=API_TIMEOUT
        )
    except ApiException as exc:
        if exc.status == HTTP_NOT_FOUND:
            return None
        raise


def sync_secret(api: SecretsApi, target: Target, *, now: dt.datetime | None = None) -> Material:
    """Read the Secret, create or renew what `plan` says, and return the material to serve.

    Writes carry the resourceVersion that was read, so two replicas never overwrite each
    other: the loser gets 409, re-reads, and uses (or renews) what the winner wrote.
    """
    from kubernetes.client.exceptions import ApiException

    for _ in range(MAX_CONFLICTS):
        secret = _read_secret(api, target)
        data = getattr(secret, "data", None) if secret is not None else None
        material, write = next_material(
            decode_secret(data), target.names, now=now, leaf_lifetime=target.leaf_lifetime
        )
        if not write:
            return material
        try:
            if secret is None:
                body = _secret_body(target, material, resource_version=None)
                api.create_namespaced_secret(target.namespace, body, _request_timeout=API_TIMEOUT)
                log.info("created TLS Secret %s/%s", target.namespace, target.secret_name)
            else:
                version = secret.metadata.resource_version
                body = _secret_body(target, material, resource_version=version)
                api.replace_namespaced_secret(
                    target.secret_name, target.namespace, body, _request_timeout=API_TIMEOUT
                )
                log.info("updated TLS Secret %s/%s", target.namespace, target.secret_name)
            return material
        except ApiException as exc:
            if exc.status != HTTP_CONFLICT:
                raise
            log.info("another replica wrote the TLS Secret first; reading theirs")
    raise RuntimeError(f"TLS Secret {target.namespace}/{target.secret_name}: too many conflicts")


def ca_bundle_patch(config: Any, trust: bytes) -> list[dict[str, Any]]:
    """JSON Patch operations that set `trust` as every webhook's caBundle; empty when all match.

    Each change is guarded by a `test` of the webhook's name at its index, so a concurrent edit
    that reorders the list makes the patch fail instead of writing the wrong webhook.
    """
    wanted = base64.b64encode(trust).decode("ascii")
    ops: list[dict[str, Any]] = []
    for i, webhook in enumerate(getattr(config, "webhooks", None) or []):
        current = webhook.client_config.ca_bundle
        if isinstance(current, bytes):
            current = current.decode("ascii")
        if current == wanted:
            continue
        ops.append({"op": "test", "path": f"/webhooks/{i}/name", "value": webhook.name})
        ops.append({"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": wanted})
    return ops


def sync_ca_bundle(api: WebhookConfigApi, name: str, *, trust: bytes) -> bool:
    """Write `trust` into the caBundle of every webhook of configuration `name` when it differs.

    Returns True when it patched. A missing configuration is logged, not raised: the server
    keeps serving, and the next round tries again.
    """
    from kubernetes.client.exceptions import ApiException

    try:
        config = api.read_mutating_webhook_configuration(name, _request_timeout=API_TIMEOUT)
    except ApiException as exc:
        if exc.status == HTTP_NOT_FOUND:
            log.warning("MutatingWebhookConfiguration %s not found; caBundle not written", name)
            return False
        raise
    ops = ca_bundle_patch(config, trust)
    if not ops:
        return False
    api.patch_mutating_webhook_configuration(
        name, ops, _content_type="application/json-patch+json", _request_timeout=API_TIMEOUT
    )
    log.info("wrote the CA bundle into MutatingWebhookConfiguration %s", name)
    return True


def _write_atomically(path: Path, content: bytes, *, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_key_pair(pair: KeyPair, *, cert_file: Path, key_file: Path) -> bool:
    """Write the serving pair for the server to load; True when it changed.

    Both files in one directory (the chart's layout) are swapped together, as the kubelet swaps
    a Secret volume (Kubernetes' AtomicWriter): written into a new hidden directory, then one
    rename of the `..data` symlink, through which `cert_file` and `key_file` are symlinks. A
    reader never finds the certificate of one renewal beside the key of another. Files in two
    directories are each replaced atomically, key first.
    """
    try:
        if cert_file.read_bytes() == pair.cert_pem and key_file.read_bytes() == pair.key_pem:
            return False
    except FileNotFoundError:
        pass
    if cert_file.parent == key_file.parent:
        _swap_pair(
            cert_file.parent,
            {key_file.name: (pair.key_pem, 0o600), cert_file.name: (pair.cert_pem, 0o644)},
        )
        return True
    for path, content, mode in ((key_file, pair.key_pem, 0o600), (cert_file, pair.cert_pem, 0o644)):
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, content, mode=mode)
    return True


def _swap_pair(directory: Path, files: Mapping[str, tuple[bytes, int]]) -> None:
    """Write `files` into a new directory and make them current with one rename."""
    directory.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(dir=directory, prefix=PAIR_PREFIX))
    for name, (content, mode) in files.items():
        fd = os.open(fresh / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
    _replace_with_link(directory / DATA_LINK, fresh.name)
    for name in files:
        link = directory / name
        wanted = f"{DATA_LINK}/{name}"
        if not (link.is_symlink() and os.readlink(link) == wanted):
            _replace_with_link(link, wanted)
    for old in directory.glob(f"{PAIR_PREFIX}*"):
        if old != fresh:
            shutil.rmtree(old, ignore_errors=True)


def _replace_with_link(path: Path, target: str) -> None:
    """Point `path` at `target` with one rename (a symlink made beside it first)."""
    staged = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    staged.unlink(missing_ok=True)
    os.symlink(target, staged)
    os.replace(staged, path)


def ensure_certificates(
    core: SecretsApi,
    admission: WebhookConfigApi,
    target: Target,
    *,
    now: dt.datetime | None = None,
) -> KeyPair:
    """One full round: Secret, caBundle, files. Blocking; call it before the server binds.

    Raises on API errors other than conflicts, so a pod that cannot reach the API at start-up
    fails (and restarts) rather than serving a certificate nobody trusts.
    """
    material = sync_secret(core, target, now=now)
    sync_ca_bundle(admission, target.webhook_config, trust=material.trust)
    if write_key_pair(material.leaf, cert_file=target.cert_file, key_file=target.key_file):
        log.info("serving certificate written to %s", target.cert_file)
    return material.leaf


def in_cluster_apis(kubeconfig: str | None = None) -> tuple[SecretsApi, WebhookConfigApi]:
    """The two API groups self-managed TLS uses, with the pod's service account.

    Outside a cluster, with the credentials of `kubeconfig` (CONCURRENCY_INJECTOR_KUBECONFIG).
    """
    from kubernetes import client

    from webhook.kube import api_client

    shared = api_client(kubeconfig)
    return client.CoreV1Api(shared), client.AdmissionregistrationV1Api(shared)


async def run_self_managed(
    target: Target,
    stop: asyncio.Event,
    *,
    core: SecretsApi | None = None,
    admission: WebhookConfigApi | None = None,
    interval: float | None = None,
) -> None:
    """Re-sync every `interval` seconds (default: the target's), with jitter, until `stop` is set.

    The blocking client runs in a thread, off the event loop. A failed round is logged and the
    current certificate stays in service; the next round tries again.
    """
    if core is None or admission is None:
        core, admission = in_cluster_apis(target.kubeconfig)
    period = target.resync_interval if interval is None else interval
    while not stop.is_set():
        delay = period * random.uniform(0.9, 1.1)  # spreads replicas; not security
        try:
            await asyncio.wait_for(stop.wait(), timeout=delay)
            return
        except TimeoutError:
            pass
        try:
            await asyncio.to_thread(ensure_certificates, core, admission, target)
        except Exception:
            log.exception("self-managed TLS round failed; the current certificate stays in service")
