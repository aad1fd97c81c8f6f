"""Self-managed TLS: the pure decisions directly; the Kubernetes side against a stand-in.

There is no kube-apiserver here. `StandInApiServer` is a stand-in for the API server: an HTTP
server that keeps Secrets and MutatingWebhookConfigurations in memory and answers the few REST
calls self-managed TLS makes, with the API server's conflict rules (409 on create of an existing
name, 409 on a stale resourceVersion, JSON Patch with `test`). The real `kubernetes` client talks
to it over HTTP. Every test that uses it says "stand-in" in its name; the kind e2e suite runs the
same code against a real cluster.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime as dt
import json
import re
import socket
import ssl
import stat
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
from cryptography import x509
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from webhook.certificates import authority as certs
from webhook.certificates import selfmanaged
from webhook.certificates.selfmanaged import Material, Target, decode_secret, encode_secret, plan

NAMESPACE = "injector-system"
SERVICE = "ci-concurrency-injector"
SECRET = "ci-concurrency-injector-tls"
CONFIG = "ci-concurrency-injector"
NAMES = certs.service_names(SERVICE, NAMESPACE)
T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)

# --- pure decisions ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fresh() -> Material:
    material = plan(None, NAMES, now=T0)
    assert material is not None
    return material


def test_fresh_material_is_a_ca_and_a_leaf_it_signed(fresh: Material) -> None:
    ca, leaf = fresh.ca.cert, fresh.leaf.cert
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert selfmanaged.issued_by(leaf, ca)
    assert fresh.trust == fresh.ca.cert_pem
    assert certs.key_matches(fresh.ca)
    assert certs.key_matches(fresh.leaf)


def test_leaf_names_are_the_service_names(fresh: Material) -> None:
    assert certs.dns_names(fresh.leaf.cert) == {
        SERVICE,
        f"{SERVICE}.{NAMESPACE}",
        f"{SERVICE}.{NAMESPACE}.svc",
        f"{SERVICE}.{NAMESPACE}.svc.cluster.local",
    }


def test_valid_material_is_kept(fresh: Material) -> None:
    assert plan(fresh, NAMES, now=T0 + DAY) is None


def test_leaf_is_renewed_at_two_thirds_of_its_lifetime(fresh: Material) -> None:
    leaf = fresh.leaf.cert
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    turn = leaf.not_valid_before_utc + lifetime * certs.ROTATE_AT_FRACTION
    assert plan(fresh, NAMES, now=turn - dt.timedelta(seconds=1)) is None
    renewed = plan(fresh, NAMES, now=turn)
    assert renewed is not None
    assert renewed.ca == fresh.ca
    assert renewed.trust == fresh.trust
    assert renewed.leaf.cert.serial_number != leaf.serial_number
    assert selfmanaged.issued_by(renewed.leaf.cert, fresh.ca.cert)


def test_leaf_never_outlives_its_ca() -> None:
    ca = certs.build_ca(lifetime=30 * DAY, now=T0)
    material = Material(ca=ca, leaf=certs.build_leaf(ca, NAMES, now=T0), trust=ca.cert_pem)
    assert material.leaf.cert.not_valid_after_utc <= ca.cert.not_valid_after_utc
    # Walk the whole life of the CA day by day: every serving certificate in use is inside it.
    now, current = T0, material
    for _ in range(60):
        now += DAY
        current = plan(current, NAMES, now=now) or current
        leaf_end = current.leaf.cert.not_valid_after_utc
        assert any(
            selfmanaged.issued_by(current.leaf.cert, c) and leaf_end <= c.not_valid_after_utc
            for c in certs.load_bundle(current.trust)
        )
        assert now < leaf_end


def test_ca_is_renewed_with_an_overlapping_bundle() -> None:
    old_ca = certs.build_ca(lifetime=30 * DAY, now=T0)
    start = Material(ca=old_ca, leaf=certs.build_leaf(old_ca, NAMES, now=T0), trust=old_ca.cert_pem)
    at_turn = T0 + 21 * DAY  # past 2/3 of 30 days

    rotated = plan(start, NAMES, now=at_turn)
    assert rotated is not None
    assert rotated.ca != old_ca
    trust = certs.load_bundle(rotated.trust)
    assert trust == [rotated.ca.cert, old_ca.cert]  # new CA first, old one still trusted
    # The serving certificate stays on the old CA until the new CA has reached the API servers.
    assert selfmanaged.issued_by(rotated.leaf.cert, old_ca.cert)

    waiting = plan(rotated, NAMES, now=at_turn + dt.timedelta(minutes=1))
    assert waiting is None or selfmanaged.issued_by(waiting.leaf.cert, old_ca.cert)

    moved = plan(rotated, NAMES, now=at_turn + selfmanaged.CA_PROPAGATION)
    assert moved is not None
    assert selfmanaged.issued_by(moved.leaf.cert, rotated.ca.cert)
    assert certs.load_bundle(moved.trust) == [rotated.ca.cert, old_ca.cert]

    # Once the old CA has expired it leaves the bundle.
    later = plan(moved, NAMES, now=T0 + 31 * DAY)
    assert later is not None
    assert certs.load_bundle(later.trust) == [rotated.ca.cert]


def test_changed_service_names_reissue_the_leaf(fresh: Material) -> None:
    other = certs.service_names("renamed", NAMESPACE)
    renewed = plan(fresh, other, now=T0 + DAY)
    assert renewed is not None
    assert renewed.ca == fresh.ca
    assert set(other) <= certs.dns_names(renewed.leaf.cert)


def test_a_torn_pair_is_reissued(fresh: Material) -> None:
    stranger = certs.build_leaf(fresh.ca, NAMES, now=T0)
    torn = Material(
        ca=fresh.ca, leaf=certs.KeyPair(fresh.leaf.cert_pem, stranger.key_pem), trust=fresh.trust
    )
    renewed = plan(torn, NAMES, now=T0 + DAY)
    assert renewed is not None
    assert certs.key_matches(renewed.leaf)


def test_a_leaf_from_an_untrusted_ca_is_reissued(fresh: Material) -> None:
    foreign_ca = certs.build_ca(now=T0)
    foreign = Material(
        ca=fresh.ca, leaf=certs.build_leaf(foreign_ca, NAMES, now=T0), trust=fresh.trust
    )
    renewed = plan(foreign, NAMES, now=T0 + DAY)
    assert renewed is not None
    assert selfmanaged.issued_by(renewed.leaf.cert, fresh.ca.cert)


def test_an_expired_ca_is_replaced_whole(fresh: Material) -> None:
    after = fresh.ca.cert.not_valid_after_utc + DAY
    renewed = plan(fresh, NAMES, now=after)
    assert renewed is not None
    assert renewed.ca != fresh.ca
    assert certs.load_bundle(renewed.trust) == [renewed.ca.cert]


def test_secret_data_round_trips(fresh: Material) -> None:
    data = encode_secret(fresh)
    assert set(data) == {"ca.crt", "ca.key", "tls.crt", "tls.key"}
    assert decode_secret(data) == fresh


@pytest.mark.parametrize(
    "data",
    [
        None,
        {},
        {"tls.crt": "", "tls.key": ""},
        {"ca.crt": "!!", "ca.key": "", "tls.crt": "", "tls.key": ""},
        {"ca.crt": base64.b64encode(b"not a pem").decode(), "ca.key": "", "tls.crt": "",
         "tls.key": ""},
    ],
    ids=["absent", "empty", "missing-keys", "not-base64", "not-pem"],
)
def test_unreadable_secret_data_is_no_material(data: dict[str, str] | None) -> None:
    assert decode_secret(data) is None
    replaced = plan(decode_secret(data), NAMES, now=T0)
    assert replaced is not None


def test_conflict_convergence_adopts_the_winner(fresh: Material) -> None:
    """After a lost write, the re-read material of the winner is used unchanged."""
    used, write = selfmanaged.next_material(fresh, NAMES, now=T0 + DAY)
    assert used is fresh
    assert write is False
    used, write = selfmanaged.next_material(None, NAMES, now=T0)
    assert write is True


def _config(*bundles: str | None) -> Any:
    webhooks = []
    for i, bundle in enumerate(bundles):
        client_config: dict[str, Any] = {"service": {"name": SERVICE, "namespace": NAMESPACE}}
        if bundle is not None:
            client_config["caBundle"] = bundle
        webhooks.append({"name": f"w{i}.concurrency-injector.io", "clientConfig": client_config,
                         "sideEffects": "None", "admissionReviewVersions": ["v1"]})
    raw = {"metadata": {"name": CONFIG}, "webhooks": webhooks}
    return client.ApiClient().deserialize(
        json.dumps(raw), "V1MutatingWebhookConfiguration", "application/json")


def test_ca_bundle_patch_touches_only_webhooks_that_differ(fresh: Material) -> None:
    wanted = base64.b64encode(fresh.trust).decode()
    assert selfmanaged.ca_bundle_patch(_config(wanted, None, "b2xk"), fresh.trust) == [
        {"op": "test", "path": "/webhooks/1/name", "value": "w1.concurrency-injector.io"},
        {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": wanted},
        {"op": "test", "path": "/webhooks/2/name", "value": "w2.concurrency-injector.io"},
        {"op": "add", "path": "/webhooks/2/clientConfig/caBundle", "value": wanted},
    ]
    assert selfmanaged.ca_bundle_patch(_config(wanted), fresh.trust) == []


def test_key_pair_files_are_written_atomically(fresh: Material, tmp_path: Path) -> None:
    cert_file, key_file = tmp_path / "tls" / "tls.crt", tmp_path / "tls" / "tls.key"
    assert selfmanaged.write_key_pair(fresh.leaf, cert_file=cert_file, key_file=key_file)
    assert cert_file.read_bytes() == fresh.leaf.cert_pem
    assert key_file.read_bytes() == fresh.leaf.key_pem
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    inode = cert_file.stat().st_ino
    assert not selfmanaged.write_key_pair(fresh.leaf, cert_file=cert_file, key_file=key_file)
    assert cert_file.stat().st_ino == inode  # unchanged content: not rewritten
    other = certs.build_leaf(fresh.ca, NAMES, now=T0)
    assert selfmanaged.write_key_pair(other, cert_file=cert_file, key_file=key_file)
    assert cert_file.stat().st_ino != inode  # replaced by rename, never written in place
    # Both files go through one `..data` symlink, swapped in one rename; old pairs are removed.
    names = sorted(p.name for p in cert_file.parent.iterdir())
    assert names[0] == "..data"
    assert names[1].startswith("..pair_")
    assert names[2:] == ["tls.crt", "tls.key"]
    assert cert_file.resolve().parent == key_file.resolve().parent == cert_file.parent / names[1]


def test_key_pair_files_in_two_directories_are_each_replaced(
    fresh: Material, tmp_path: Path
) -> None:
    cert_file, key_file = tmp_path / "a" / "tls.crt", tmp_path / "b" / "tls.key"
    assert selfmanaged.write_key_pair(fresh.leaf, cert_file=cert_file, key_file=key_file)
    assert (cert_file.read_bytes(), key_file.read_bytes()) == (fresh.leaf.cert_pem,
                                                                fresh.leaf.key_pem)
    assert not cert_file.is_symlink()


def _served_serial(server: ssl.SSLContext, ca: certs.KeyPair) -> int:
    """The serial of the certificate `server` presents, by a real TLS handshake in memory."""
    client_ctx = ssl.create_default_context(cadata=ca.cert_pem.decode())
    client_ctx.check_hostname = False
    bios = [ssl.MemoryBIO() for _ in range(4)]
    near = client_ctx.wrap_bio(bios[0], bios[1])
    far = server.wrap_bio(bios[2], bios[3], server_side=True)
    done = [False, False]
    for _ in range(20):
        for i, end in enumerate((near, far)):
            if not done[i]:
                try:
                    end.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
        bios[2].write(bios[1].read())
        bios[0].write(bios[3].read())
        if all(done):
            break
    der = near.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_renewals_under_a_reading_server_never_log_a_mismatch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The self-managed writer renews the pair many times while the server's reload reads it
    as fast as it can: no reload ever fails or logs, and the last pair is the one served."""
    from prometheus_client import REGISTRY

    from webhook.serving import tls

    ca = certs.build_ca("renewal-ca")
    leaves = [certs.build_leaf(ca, NAMES) for _ in range(150)]
    cert_file, key_file = tmp_path / "tls" / "tls.crt", tmp_path / "tls" / "tls.key"
    selfmanaged.write_key_pair(leaves[0], cert_file=cert_file, key_file=key_file)
    reader = tls.ReloadingContext(str(cert_file), str(key_file))
    server = reader.build()
    assert _served_serial(server, ca) == leaves[0].cert.serial_number

    def errors() -> float:
        labels = {"result": "error"}
        return REGISTRY.get_sample_value("concurrency_injector_certificate_reloads_total",
                                         labels) or 0.0

    def renew() -> None:
        for leaf in leaves[1:]:
            selfmanaged.write_key_pair(leaf, cert_file=cert_file, key_file=key_file)

    before = errors()
    caplog.set_level("DEBUG", logger="concurrency_injector")
    writer = threading.Thread(target=renew)
    writer.start()
    reloads = reads = 0
    while writer.is_alive():
        reads += 1
        reloads += reader.reload_if_changed()
    writer.join()
    reloads += reader.reload_if_changed()
    print(f"{reads} checks, {reloads} reloads, over {len(leaves) - 1} renewals")
    warned = [r.getMessage() for r in caplog.records if r.levelno >= 30]
    assert warned == []
    assert errors() == before
    assert reloads >= 2
    assert _served_serial(server, ca) == leaves[-1].cert.serial_number


def test_served_certificate_verifies_for_the_service_name(tmp_path: Path) -> None:
    """A real TLS handshake: the written pair, verified against the bundle the API server gets,
    for the Service's DNS name as the API server dials it."""
    material = plan(None, NAMES)  # dated now, so the clock check passes too
    assert material is not None
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    selfmanaged.write_key_pair(material.leaf, cert_file=cert_file, key_file=key_file)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_file, key_file)
    client_ctx = ssl.create_default_context(cadata=material.trust.decode())
    left, right = socket.socketpair()

    def serve() -> None:
        with server_ctx.wrap_socket(left, server_side=True) as s:
            s.recv(1)

    thread = threading.Thread(target=serve)
    thread.start()
    with client_ctx.wrap_socket(right, server_hostname=f"{SERVICE}.{NAMESPACE}.svc") as c:
        c.sendall(b"x")
        assert c.version() in {"TLSv1.2", "TLSv1.3"}
    thread.join(5)
    wrong = ssl.create_default_context(cadata=material.trust.decode())
    left, right = socket.socketpair()
    thread = threading.Thread(target=lambda: _serve_quietly(server_ctx, left))
    thread.start()
    with pytest.raises(ssl.SSLCertVerificationError):
        wrong.wrap_socket(right, server_hostname="other.example")
    right.close()
    thread.join(5)


def _serve_quietly(ctx: ssl.SSLContext, sock: socket.socket) -> None:
    try:
        with ctx.wrap_socket(sock, server_side=True) as s:
            s.recv(1)
    except (OSError, ssl.SSLError):
        pass


# --- against the stand-in ------------------------------------------------------------------

SECRET_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/secrets(?:/([^/?]+))?$")
MWC_PATH = re.compile(
    r"^/apis/admissionregistration\.k8s\.io/v1/mutatingwebhookconfigurations/([^/?]+)$")


class StandInApiServer:
    """Stand-in for the API server: Secrets and MutatingWebhookConfigurations, in memory."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.configs: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.version = 0
        self.lock = threading.Lock()
        # Called with (method, path) before a request is handled: lets a test play another replica.
        self.before: Callable[[str, str], None] = lambda method, path: None
        self.fail_with: int | None = None
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(
            target=self.http.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}"

    def next_version(self) -> str:
        self.version += 1
        return str(self.version)

    def put_secret(self, data: dict[str, str]) -> None:
        with self.lock:
            self.secrets[(NAMESPACE, SECRET)] = {
                "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "data": data,
                "metadata": {"name": SECRET, "namespace": NAMESPACE,
                             "resourceVersion": self.next_version()},
            }

    def add_config(self, webhooks: int = 1) -> None:
        self.configs[CONFIG] = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": CONFIG, "resourceVersion": self.next_version()},
            "webhooks": [
                {"name": f"w{i}.concurrency-injector.io", "sideEffects": "None",
                 "admissionReviewVersions": ["v1"],
                 "clientConfig": {"service": {"name": SERVICE, "namespace": NAMESPACE}}}
                for i in range(webhooks)
            ],
        }

    def ca_bundles(self) -> list[bytes | None]:
        return [
            base64.b64decode(w["clientConfig"]["caBundle"]) if "caBundle" in w["clientConfig"]
            else None
            for w in self.configs[CONFIG]["webhooks"]
        ]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, code: int, body: dict[str, Any]) -> None:
                raw = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _status(self, code: int, reason: str) -> None:
                self._reply(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                   "reason": reason, "code": code})

            def _body(self) -> Any:
                return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

            def _handle(self, method: str) -> None:
                path = self.path.split("?")[0]
                server.requests.append((method, path))
                server.before(method, path)
                if server.fail_with:
                    return self._status(server.fail_with, "InternalError")
                with server.lock:
                    if m := SECRET_PATH.match(path):
                        return self._secret(method, m.group(1), m.group(2))
                    if m := MWC_PATH.match(path):
                        return self._config(method, m.group(1))
                return self._status(404, "NotFound")

            def _secret(self, method: str, namespace: str, name: str | None) -> None:
                if method == "GET" and name:
                    found = server.secrets.get((namespace, name))
                    return self._reply(200, found) if found else self._status(404, "NotFound")
                if method == "POST" and name is None:
                    body = self._body()
                    key = (namespace, body["metadata"]["name"])
                    if key in server.secrets:
                        return self._status(409, "AlreadyExists")
                    body["metadata"]["resourceVersion"] = server.next_version()
                    server.secrets[key] = body
                    return self._reply(201, body)
                if method == "PUT" and name:
                    body = self._body()
                    current = server.secrets.get((namespace, name))
                    if current is None:
                        return self._status(404, "NotFound")
                    if body["metadata"].get("resourceVersion") != (
                            current["metadata"]["resourceVersion"]):
                        return self._status(409, "Conflict")
                    body["metadata"]["resourceVersion"] = server.next_version()
                    server.secrets[(namespace, name)] = body
                    return self._reply(200, body)
                return self._status(405, "MethodNotAllowed")

            def _config(self, method: str, name: str) -> None:
                found = server.configs.get(name)
                if found is None:
                    return self._status(404, "NotFound")
                if method == "GET":
                    return self._reply(200, found)
                if method == "PATCH":
                    if self.headers["Content-Type"] != "application/json-patch+json":
                        return self._status(415, "UnsupportedMediaType")
                    try:
                        patched = jsonpatch.apply_patch(copy.deepcopy(found), self._body())
                    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException):
                        return self._status(422, "Invalid")
                    patched["metadata"]["resourceVersion"] = server.next_version()
                    server.configs[name] = patched
                    return self._reply(200, patched)
                return self._status(405, "MethodNotAllowed")

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_PUT(self) -> None:
                self._handle("PUT")

            def do_PATCH(self) -> None:
                self._handle("PATCH")

        return Handler


@pytest.fixture
def standin() -> Iterator[StandInApiServer]:
    server = StandInApiServer()
    server.add_config()
    server.thread.start()
    yield server
    server.http.shutdown()
    server.http.server_close()


def apis(standin: StandInApiServer) -> tuple[Any, Any]:
    configuration = client.Configuration()
    configuration.host = standin.url
    api_client = client.ApiClient(configuration)
    return client.CoreV1Api(api_client), client.AdmissionregistrationV1Api(api_client)


@pytest.fixture
def target(tmp_path: Path) -> Target:
    return Target(namespace=NAMESPACE, secret_name=SECRET, webhook_config=CONFIG,
                  service_name=SERVICE, cert_file=tmp_path / "tls.crt", key_file=tmp_path / "tls.key")


def stored(standin: StandInApiServer) -> Material:
    material = decode_secret(standin.secrets[(NAMESPACE, SECRET)]["data"])
    assert material is not None
    return material


def test_standin_first_start_creates_secret_bundle_and_files(
    standin: StandInApiServer, target: Target
) -> None:
    standin.add_config(webhooks=2)
    core, admission = apis(standin)
    leaf = selfmanaged.ensure_certificates(core, admission, target)
    material = stored(standin)
    assert standin.secrets[(NAMESPACE, SECRET)]["type"] == "kubernetes.io/tls"
    assert material.leaf == leaf
    assert standin.ca_bundles() == [material.trust, material.trust]
    assert target.cert_file.read_bytes() == leaf.cert_pem
    assert target.key_file.read_bytes() == leaf.key_pem
    assert [m for m, _ in standin.requests] == ["GET", "POST", "GET", "PATCH"]


def test_standin_second_round_changes_nothing(standin: StandInApiServer, target: Target) -> None:
    core, admission = apis(standin)
    first = selfmanaged.ensure_certificates(core, admission, target)
    standin.requests.clear()
    assert selfmanaged.ensure_certificates(core, admission, target) == first
    assert [m for m, _ in standin.requests] == ["GET", "GET"]  # no write, no patch


def test_standin_create_conflict_uses_the_winners_secret(
    standin: StandInApiServer, target: Target, fresh: Material
) -> None:
    """Another replica creates the Secret between our read and our create: we use theirs."""

    planned = plan(None, NAMES)
    assert planned is not None
    winner: Material = planned

    def other_replica(method: str, path: str) -> None:
        if method == "POST" and (NAMESPACE, SECRET) not in standin.secrets:
            standin.put_secret(encode_secret(winner))

    standin.before = other_replica
    core, admission = apis(standin)
    leaf = selfmanaged.ensure_certificates(core, admission, target)
    assert leaf == winner.leaf
    assert stored(standin) == winner
    assert standin.ca_bundles() == [winner.trust]
    assert [m for m, _ in standin.requests] == ["GET", "POST", "GET", "GET", "PATCH"]


def test_standin_update_conflict_rereads(standin: StandInApiServer, target: Target) -> None:
    """Our renewal races another replica's: the stale write gets 409, we re-read theirs."""
    core, admission = apis(standin)
    old = plan(None, NAMES, now=dt.datetime.now(dt.UTC) - 300 * DAY)  # leaf past 2/3 by now
    assert old is not None
    standin.put_secret(encode_secret(old))
    theirs = plan(old, NAMES)
    assert theirs is not None

    def other_replica(method: str, path: str) -> None:
        if method == "PUT" and stored(standin) == old:
            standin.put_secret(encode_secret(theirs))

    standin.before = other_replica
    assert selfmanaged.ensure_certificates(core, admission, target) == theirs.leaf
    assert [m for m, _ in standin.requests][:4] == ["GET", "PUT", "GET", "GET"]


def test_standin_replicas_starting_together_converge(
    standin: StandInApiServer, tmp_path: Path
) -> None:
    """Four replicas at once, each with its own client and files: one CA, one serving pair."""
    barrier = threading.Barrier(4)
    results: list[certs.KeyPair] = []

    def replica(i: int) -> None:
        core, admission = apis(standin)
        mine = Target(namespace=NAMESPACE, secret_name=SECRET, webhook_config=CONFIG,
                      service_name=SERVICE, cert_file=tmp_path / f"{i}" / "tls.crt",
                      key_file=tmp_path / f"{i}" / "tls.key")
        barrier.wait()
        results.append(selfmanaged.ensure_certificates(core, admission, mine))

    threads = [threading.Thread(target=replica, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 4
    assert len({r.cert_pem for r in results}) == 1
    assert standin.ca_bundles() == [stored(standin).trust]
    assert sum(1 for m, _ in standin.requests if m == "POST") >= 1
    files = {(tmp_path / f"{i}" / "tls.crt").read_bytes() for i in range(4)}
    assert files == {results[0].cert_pem}


def test_standin_renewal_updates_secret_and_files_not_bundle(
    standin: StandInApiServer, target: Target
) -> None:
    core, admission = apis(standin)
    now = dt.datetime.now(dt.UTC)
    first = selfmanaged.ensure_certificates(core, admission, target, now=now)
    bundle = standin.ca_bundles()
    later = now + 250 * DAY  # past 2/3 of the 365-day serving certificate
    renewed = selfmanaged.ensure_certificates(core, admission, target, now=later)
    assert renewed != first
    assert stored(standin).leaf == renewed
    assert target.cert_file.read_bytes() == renewed.cert_pem
    assert standin.ca_bundles() == bundle  # same CA: the API server's trust is untouched


def test_standin_missing_webhook_configuration_is_not_fatal(
    standin: StandInApiServer, target: Target
) -> None:
    standin.configs.clear()
    core, admission = apis(standin)
    leaf = selfmanaged.ensure_certificates(core, admission, target)
    assert target.cert_file.read_bytes() == leaf.cert_pem


def test_standin_api_errors_fail_start_up(standin: StandInApiServer, target: Target) -> None:
    standin.fail_with = 500
    core, admission = apis(standin)
    with pytest.raises(ApiException) as raised:
        selfmanaged.ensure_certificates(core, admission, target)
    assert raised.value.status == 500
    assert not target.cert_file.exists()


async def test_standin_loop_resyncs_until_stopped(
    standin: StandInApiServer, target: Target
) -> None:
    """The background loop converges on what the Secret holds and stops when told."""
    core, admission = apis(standin)
    await asyncio.to_thread(selfmanaged.ensure_certificates, core, admission, target)
    replacement = plan(None, NAMES)
    assert replacement is not None
    standin.put_secret(encode_secret(replacement))  # e.g. another replica rotated everything
    stop = asyncio.Event()
    loop = asyncio.create_task(
        selfmanaged.run_self_managed(target, stop, core=core, admission=admission, interval=0.05))
    for _ in range(100):
        await asyncio.sleep(0.05)
        if target.cert_file.read_bytes() == replacement.leaf.cert_pem and (
                standin.ca_bundles() == [replacement.trust]):
            break
    assert target.cert_file.read_bytes() == replacement.leaf.cert_pem
    assert standin.ca_bundles() == [replacement.trust]
    standin.fail_with = 500  # a failing round is logged; the loop goes on
    await asyncio.sleep(0.2)
    assert not loop.done()
    stop.set()
    await asyncio.wait_for(loop, 2)


def test_target_from_settings_names_what_is_missing(tmp_path: Path) -> None:
    class Settings:
        namespace = NAMESPACE
        tls_secret = SECRET
        webhook_config = CONFIG
        service_name: str | None = SERVICE
        cert_file = str(tmp_path / "tls.crt")
        key_file = str(tmp_path / "tls.key")
        tls_cert_lifetime = 120.0
        tls_resync_seconds = 5.0
        kubeconfig = "/etc/kubeconfig"

    target = Target.from_settings(Settings())
    assert target.names == NAMES
    assert target.cert_file == tmp_path / "tls.crt"
    assert target.leaf_lifetime == dt.timedelta(seconds=120)
    assert target.resync_interval == 5.0
    assert target.kubeconfig == "/etc/kubeconfig"
    broken = Settings()
    broken.service_name = None
    with pytest.raises(ValueError, match="CONCURRENCY_INJECTOR_SERVICE_NAME"):
        Target.from_settings(broken)


def test_a_short_lived_certificate_is_not_due_for_renewal_when_issued() -> None:
    """The backdate is a small part of a short lifetime: renewal comes at 2/3 of it, not at once."""
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    lifetime = dt.timedelta(seconds=60)
    material = plan(None, NAMES, now=now, leaf_lifetime=lifetime)
    assert material is not None
    assert material.leaf.cert.not_valid_after_utc == now + lifetime
    assert plan(material, NAMES, now=now + dt.timedelta(seconds=30), leaf_lifetime=lifetime) is None
    renewed = plan(material, NAMES, now=now + dt.timedelta(seconds=40), leaf_lifetime=lifetime)
    assert renewed is not None
    assert renewed.ca == material.ca
    assert renewed.leaf != material.leaf
