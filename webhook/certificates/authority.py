"""Certificate authority and serving certificates, built with `cryptography` (pure, no I/O).

Used by `serve --dev` (a throwaway CA) and by the self-managed TLS mode, which keeps the CA in
a Secret and renews the serving certificate at 2/3 of its lifetime.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_LIFETIME = dt.timedelta(days=3650)
LEAF_LIFETIME = dt.timedelta(days=365)
ROTATE_AT_FRACTION = 2 / 3
# Clocks across a cluster drift; a certificate valid from "now" can be rejected by a peer behind.
BACKDATE = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, PEM-encoded."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def build_ca(
    common_name: str = "concurrency-injector-ca",
    *,
    lifetime: dt.timedelta = CA_LIFETIME,
    now: dt.datetime | None = None,
) -> KeyPair:
    """A self-signed CA that signs serving certificates only (path length 0)."""
    now = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def build_leaf(
    ca: KeyPair,
    names: list[str],
    *,
    lifetime: dt.timedelta = LEAF_LIFETIME,
    now: dt.datetime | None = None,
) -> KeyPair:
    """A serving certificate for `names` (DNS names or IP addresses), signed by `ca`.

    The leaf never outlives its CA: its expiry is capped at the CA's.
    """
    if not names:
        raise ValueError("a serving certificate needs at least one name")
    now = now or _now()
    ca_cert = ca.cert
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key is not an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    not_after = min(now + lifetime, ca_cert.not_valid_after_utc)
    # The backdate counts in the lifetime that rotation measures: keep it a small part of it,
    # or a short-lived certificate would be due for renewal the moment it is issued.
    backdate = min(BACKDATE, lifetime / 10)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - backdate)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def needs_rotation(cert: x509.Certificate, *, now: dt.datetime | None = None) -> bool:
    """True once 2/3 of the certificate's lifetime has passed."""
    now = now or _now()
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return now >= start + (end - start) * ROTATE_AT_FRACTION


def service_names(service: str, namespace: str) -> list[str]:
    """The names kube-apiserver may dial a webhook Service by."""
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def load_bundle(pem: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle, in order (a caBundle may hold several CAs)."""
    return x509.load_pem_x509_certificates(pem) if pem.strip() else []


def dump_bundle(bundle: list[x509.Certificate]) -> bytes:
    """A PEM bundle of `bundle`, in order."""
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in bundle)


def key_matches(pair: KeyPair) -> bool:
    """True when the private key belongs to the certificate (a torn write can split a pair)."""
    try:
        key = serialization.load_pem_private_key(pair.key_pem, password=None)
        cert = pair.cert
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return bool(
        key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        == cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def dns_names(cert: x509.Certificate) -> set[str]:
    """The DNS names and IP addresses a certificate's SubjectAlternativeName lists."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {
        *san.get_values_for_type(x509.DNSName),
        *(str(ip) for ip in san.get_values_for_type(x509.IPAddress)),
    }
