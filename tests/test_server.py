"""The real server, called the way kube-apiserver calls a webhook.

`concurrency-injector serve` runs as a subprocess on a free loopback port with a test CA. Every
call goes over a CA-verified TLS connection, HTTP/1.1 keep-alive, `POST /mutate?timeout=10s`.
The server's log is printed after each test, so pytest shows it when the test fails.
"""

from __future__ import annotations

import base64
import copy
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jsonpatch
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.podgen import cpu_limit_env
from tests.servers import (
    LOOPBACK,
    MUTATE_PATH,
    SERVER_NAMES,
    Client,
    Pki,
    Reply,
    WebhookServer,
    admission_review,
    clean_env,
    cli_command,
    client_context,
    dev_server,
    free_port,
    gunicorn_pod,
    peer_serial,
    uvicorn_workers,
    wait_until,
)
from webhook.certificates.authority import KeyPair, build_ca, build_leaf

STATUS = "concurrency-injector.io/status"
MAX_BODY = 4 * 1024 * 1024
CPU_LIMIT_ENV = cpu_limit_env("web")
# The patch for `gunicorn_pod()` (cpu "2", no annotations), op by op.
GUNICORN_PATCH = [
    {
        "op": "add",
        "path": "/metadata/annotations",
        "value": {
            STATUS: '{"web":{"cpu":"2","cpuFrom":"container","runtime":"gunicorn",'
            '"set":{"CPU_LIMIT":"limits.cpu","PYTHON_CPU_COUNT":"2","WEB_CONCURRENCY":"2"},'
            '"source":"command"}}'
        },
    },
    {
        "op": "add",
        "path": "/spec/containers/0/env",
        "value": [
            {"name": "WEB_CONCURRENCY", "value": "2"},
            CPU_LIMIT_ENV,
            {"name": "PYTHON_CPU_COUNT", "value": "2"},
        ],
    },
]


# --- fixtures and helpers -----------------------------------------------------------------


@pytest.fixture(scope="module")
def server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebhookServer]:
    webhook = WebhookServer(pki, tmp_path_factory.mktemp("server") / "stderr.log")
    webhook.start()
    try:
        yield webhook
    finally:
        webhook.stop()


@pytest.fixture
def client(server: WebhookServer) -> Iterator[Client]:
    """A keep-alive connection to the shared server; its log for this test shows on failure."""
    start = server.log_size()
    with server.client() as connection:
        yield connection
    print(f"--- webhook server log during this test ---\n{server.log(start)}")


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 when there are none)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


def metrics_text(client: Client) -> str:
    reply = client.get("/metrics")
    assert reply.status == 200, reply
    assert reply.headers["content-type"].startswith("text/plain"), reply.headers
    return reply.body.decode()


def assert_patched(reply: Reply, uid: str) -> None:
    """`reply` answers a review of `gunicorn_pod()` with its exact patch."""
    assert reply.status == 200, reply
    response = reply.response
    assert {k: v for k, v in response.items() if k != "patch"} == {
        "uid": uid,
        "allowed": True,
        "patchType": "JSONPatch",
        "auditAnnotations": {"injected-web": "2"},
    }
    assert reply.patch() == GUNICORN_PATCH


def assert_allowed_unchanged(reply: Reply, uid: str) -> None:
    assert reply.status == 200, reply
    assert reply.response == {"uid": uid, "allowed": True}


def env_after(pod: dict[str, Any], reply: Reply) -> list[dict[str, Any]]:
    """Apply the answer's patch as the API server would; the first container's env."""
    ops = reply.patch()
    patched = jsonpatch.apply_patch(pod, ops or [])
    # Nothing else in the pod changed.
    rest = copy.deepcopy(patched)
    del rest["spec"]["containers"][0]["env"]
    rest["metadata"].get("annotations", {}).pop(STATUS)
    if not rest["metadata"].get("annotations") and "annotations" not in pod["metadata"]:
        rest["metadata"].pop("annotations", None)
    assert rest == pod
    env: list[dict[str, Any]] = patched["spec"]["containers"][0]["env"]
    return env


# --- a target is patched ------------------------------------------------------------------


def test_gunicorn_pod_gets_the_exact_patch(client: Client) -> None:
    pod = gunicorn_pod()
    reply = client.review(admission_review(pod, uid="3f1c2b9a-0001"))

    assert reply.headers["content-type"] == "application/json"
    assert_patched(reply, "3f1c2b9a-0001")
    assert env_after(pod, reply) == [
        {"name": "WEB_CONCURRENCY", "value": "2"},
        CPU_LIMIT_ENV,
        {"name": "PYTHON_CPU_COUNT", "value": "2"},
    ]


@pytest.mark.parametrize(
    ("cpu", "annotations", "workers", "cpu_count"),
    [
        ("2", {}, "2", "2"),
        ("1500m", {}, "1", "1"),
        ("1500m", {"concurrency-injector.io/workers-per-cpu": "2"}, "3", "1"),
        ("250m", {}, "1", "1"),
        ("4", {"concurrency-injector.io/max-workers": "3"}, "3", "4"),
        ("3", {"concurrency-injector.io/min-workers": "5"}, "5", "3"),
    ],
    ids=["cpu-2", "cpu-1500m-floor", "cpu-1500m-2-per-cpu", "cpu-250m-min-1", "cpu-4-max-3",
         "cpu-3-min-5"],
)
def test_env_after_applying_the_patch(
    client: Client, cpu: str, annotations: dict[str, str], workers: str, cpu_count: str
) -> None:
    pod = gunicorn_pod(cpu=cpu, annotations=annotations)
    reply = client.review(admission_review(pod, uid=f"env-{cpu}"))

    assert reply.status == 200, reply
    assert reply.response["patchType"] == "JSONPatch"
    capped = "concurrency-injector.io/max-workers" in annotations  # a cap lowering it is warned
    assert reply.response.get("warnings", []) == (
        [f"container 'web': WEB_CONCURRENCY {cpu} for {cpu} CPU capped to {workers} (max-workers)"]
        if capped else []
    )
    assert env_after(pod, reply) == [
        {"name": "WEB_CONCURRENCY", "value": workers},
        CPU_LIMIT_ENV,
        {"name": "PYTHON_CPU_COUNT", "value": cpu_count},
    ]


def test_fifty_reviews_on_one_keep_alive_connection(client: Client) -> None:
    sock = client.connect()
    local = sock.getsockname()
    for n in range(50):
        uid = f"keep-alive-{n}"
        reply = client.review(admission_review(gunicorn_pod(), uid=uid))
        assert_patched(reply, uid)
        assert reply.headers.get("connection", "keep-alive").lower() != "close"
        # http.client drops its socket when the server closes: the same object means no reconnect.
        assert client.conn.sock is sock, f"reconnected before request {n}"
    assert sock.getsockname() == local


@pytest.mark.slow
def test_idle_connection_outlives_uvicorns_default_keep_alive(client: Client) -> None:
    """Idle 6 s (uvicorn's default keep-alive is 5 s); kube-apiserver reuses such connections."""
    sock = client.connect()
    assert_patched(client.review(admission_review(gunicorn_pod(), uid="before-idle")),
                   "before-idle")
    time.sleep(6)
    assert_patched(client.review(admission_review(gunicorn_pod(), uid="after-idle")),
                   "after-idle")
    assert client.conn.sock is sock


def test_second_pass_over_the_patched_pod_changes_nothing(client: Client) -> None:
    """kube-apiserver may call the webhook again on its own output (reinvocationPolicy)."""
    pod = gunicorn_pod()
    first = client.review(admission_review(pod, uid="u-first"))
    patched = jsonpatch.apply_patch(pod, first.patch() or [])

    second = client.review(admission_review(patched, uid="u-second"))

    assert second.status == 200, second
    assert second.response == {"uid": "u-second", "allowed": True,
                               "auditAnnotations": {"injected-web": "2"}}


def test_audit_annotation_answers_without_a_patch(client: Client) -> None:
    pod = gunicorn_pod(annotations={"concurrency-injector.io/mode": "audit"})
    before = metrics_text(client)

    reply = client.review(admission_review(pod, uid="u-audit"))

    assert reply.status == 200, reply
    response = reply.response
    assert "patch" not in response
    assert "patchType" not in response
    assert response["auditAnnotations"] == {"injected-web": "2", "mode": "audit"}
    assert [w for w in response["warnings"] if w.startswith("audit: would set ")] == [
        "audit: would set WEB_CONCURRENCY=2, CPU_LIMIT=limits.cpu, PYTHON_CPU_COUNT=2 in 'web'"]
    after = metrics_text(client)
    requests = "concurrency_injector_requests_total"
    injections = "concurrency_injector_injections_total"
    assert metric(after, requests, outcome="audit") == metric(before, requests,
                                                              outcome="audit") + 1
    audit = {"runtime": "gunicorn", "source": "command", "mode": "audit"}
    assert metric(after, injections, **audit) == metric(before, injections, **audit) + 1


def test_findings_come_back_as_short_warnings(client: Client) -> None:
    command = ["gunicorn", "-w", "4", "--threads", "8", "--bind", "0.0.0.0:8000", "app:app"]
    reply = client.review(admission_review(gunicorn_pod(command=command), uid="u-warn"))

    assert reply.status == 200, reply
    warnings = reply.response["warnings"]
    assert len(warnings) == 1, warnings  # --threads is recorded in the status, not warned
    assert "--workers 4" in warnings[0]
    assert all(len(w) <= 120 for w in warnings)
    assert reply.response["patchType"] == "JSONPatch"  # still set: the warning says who wins


# --- everything else is allowed unchanged -----------------------------------------------------

DEPLOYMENT_KIND = {"group": "apps", "version": "v1", "kind": "Deployment"}
DEPLOYMENTS = {"group": "apps", "version": "v1", "resource": "deployments"}
DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "namespace": "default"},
    "spec": {"template": gunicorn_pod()},
}
NOT_PATCHED = [
    ("non-target", admission_review(
        gunicorn_pod(command=["celery", "-A", "proj", "beat"]), uid="u-celery")),
    ("opted-out", admission_review(
        gunicorn_pod(annotations={"concurrency-injector.io/inject": "false"}), uid="u-opt-out")),
    ("update", admission_review(
        gunicorn_pod(), uid="u-update", operation="UPDATE", old=gunicorn_pod())),
    ("delete", admission_review(None, uid="u-delete", operation="DELETE", old=gunicorn_pod())),
    ("connect", admission_review(
        {"apiVersion": "v1", "kind": "PodExecOptions", "command": ["sh"]}, uid="u-connect",
        operation="CONNECT", sub_resource="exec")),
    ("deployment", admission_review(
        DEPLOYMENT, uid="u-deployment", kind=DEPLOYMENT_KIND, resource=DEPLOYMENTS)),
    ("subresource", admission_review(gunicorn_pod(), uid="u-status", sub_resource="status")),
]


@pytest.mark.parametrize("review", [r for _, r in NOT_PATCHED], ids=[i for i, _ in NOT_PATCHED])
def test_allowed_unchanged(client: Client, review: dict[str, Any]) -> None:
    reply = client.review(review)
    assert_allowed_unchanged(reply, review["request"]["uid"])


def test_env_items_that_are_not_objects_are_bad_input(client: Client) -> None:
    """A pod no API server would send is the caller's fault (400), not an internal error.

    Internal errors failing open are shown in test_app.py, with a fault injected at the edge.
    """
    pod = gunicorn_pod()
    pod["spec"]["containers"][0]["env"] = ["WEB_CONCURRENCY=3"]
    before = metrics_text(client)

    reply = client.review(admission_review(pod, uid="u-bad-env"))

    assert reply.status == 400, reply
    assert reply.json() == {"error": "spec.containers[0].env has items that are not objects"}
    after = metrics_text(client)
    errors = "concurrency_injector_errors_total"
    assert metric(after, errors, stage="mutate") == metric(before, errors, stage="mutate")


# --- bad input: 4xx with a JSON error, and the server keeps serving -------------------------


def _review_with(**changes: Any) -> bytes:
    review = admission_review(gunicorn_pod(), uid="u-bad")
    for path, value in changes.items():
        *parents, last = path.split("__")
        node: Any = review
        for key in parents:
            node = node[key]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return orjson.dumps(review)


BAD_REVIEWS = [
    ("malformed-json", b'{"apiVersion": "admission.k8s.io/v1", "kind": ', "body is not valid JSON"),
    ("empty-body", b"", "body is not valid JSON"),
    ("json-array", b"[]", "body is not a JSON object"),
    ("nested-too-deep", b"[" * 5000 + b"]" * 5000, "body is not valid JSON"),
    ("not-utf-8", b'{"kind": "\xff"}', "body is not valid JSON"),
    ("json-string", b'"AdmissionReview"', "body is not a JSON object"),
    ("missing-request", _review_with(request=None), "request is missing or not an object"),
    ("request-null", b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", '
     b'"request": null}', "request is missing or not an object"),
    ("uid-number", _review_with(request__uid=42), "request.uid is missing or not a string"),
    ("uid-missing", _review_with(request__uid=None), "request.uid is missing or not a string"),
    ("containers-string", _review_with(request__object__spec__containers="web"),
     "spec.containers is missing or empty"),
    ("containers-empty", _review_with(request__object__spec__containers=[]),
     "spec.containers is missing or empty"),
    ("object-string", _review_with(request__object="pod"), "request.object is not an object"),
    ("wrong-apiVersion", _review_with(apiVersion="admission.k8s.io/v1beta1"),
     "apiVersion must be admission.k8s.io/v1"),
    ("wrong-kind", _review_with(kind="Pod"), "kind must be AdmissionReview"),
    ("unknown-operation", _review_with(request__operation="PATCH"), "request.operation"),
    ("kind-string", _review_with(request__kind="Pod"), "request.kind is missing or not an object"),
    ("annotations-list", _review_with(request__object__metadata__annotations=["a"]),
     "metadata.annotations is not an object"),
    ("command-string", _review_with(request__object__spec__containers=[
        {"name": "web", "command": "gunicorn app:app"}]), "spec.containers[0].command is not a list"),
]


@pytest.mark.parametrize(
    ("body", "message"), [(b, m) for _, b, m in BAD_REVIEWS], ids=[i for i, _, _ in BAD_REVIEWS]
)
def test_bad_review_is_400_with_a_json_error(client: Client, body: bytes, message: str) -> None:
    before = metric(metrics_text(client), "concurrency_injector_requests_total", outcome="invalid")

    reply = client.post(body)

    assert reply.status == 400, reply
    assert reply.headers["content-type"] == "application/json"
    error = reply.json()
    assert list(error) == ["error"], error
    assert message in error["error"], error
    after = metric(metrics_text(client), "concurrency_injector_requests_total", outcome="invalid")
    assert after == before + 1
    # Same connection, next review: served as if nothing happened.
    assert_patched(client.review(admission_review(gunicorn_pod(), uid="u-next")), "u-next")


@pytest.mark.parametrize(
    ("method", "content_type", "status", "message"),
    [
        ("GET", None, 405, "only POST is allowed on /mutate"),
        ("PUT", "application/json", 405, "only POST is allowed on /mutate"),
        ("POST", "text/plain", 415, "content-type must be application/json"),
        ("POST", "application/x-www-form-urlencoded", 415,
         "content-type must be application/json"),
    ],
    ids=["get", "put", "text-plain", "form"],
)
def test_wrong_method_or_content_type(
    client: Client, method: str, content_type: str | None, status: int, message: str
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    body = orjson.dumps(admission_review(gunicorn_pod(), uid="u-wrong")) if method != "GET" else None

    reply = client.request(method, MUTATE_PATH, body, headers)

    assert reply.status == status, reply
    assert reply.json() == {"error": message}
    assert_patched(client.review(admission_review(gunicorn_pod(), uid="u-next")), "u-next")


def _chunks(total: int, size: int = 256 * 1024) -> Iterator[bytes]:
    yield b'{"pad": "'
    sent = 0
    while sent < total:
        yield b"a" * size
        sent += size
    yield b'"}'


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_over_the_cap_is_413(client: Client, chunked: bool) -> None:
    if chunked:
        client.conn.request("POST", MUTATE_PATH, body=_chunks(MAX_BODY + 1024),
                            headers={"Content-Type": "application/json"}, encode_chunked=True)
        answer = client.conn.getresponse()
        reply = Reply(answer.status, dict(answer.getheaders()), answer.read())
    else:
        reply = client.post(b'{"pad": "' + b"a" * MAX_BODY + b'"}')

    assert reply.status == 413, reply
    assert reply.json() == {"error": f"body over {MAX_BODY} bytes"}
    # The server keeps serving: on this connection, or on a new one if it closed this one.
    assert_patched(client.review(admission_review(gunicorn_pod(), uid="u-after-413")),
                   "u-after-413")


def test_chunked_review_under_the_cap_is_answered(client: Client) -> None:
    body = orjson.dumps(admission_review(gunicorn_pod(), uid="u-chunked"))
    pieces = [body[i : i + 100] for i in range(0, len(body), 100)]
    client.conn.request("POST", MUTATE_PATH, body=iter(pieces),
                        headers={"Content-Type": "application/json"}, encode_chunked=True)
    answer = client.conn.getresponse()
    assert_patched(Reply(answer.status, dict(answer.getheaders()), answer.read()), "u-chunked")


def test_three_mib_review_is_accepted(client: Client) -> None:
    """kube-apiserver accepts objects up to 3 MiB, so the cap must let such a review through.

    The bulk is in a field the webhook does not read: annotations over 256 KiB are past a work
    cap (webhook/admission/caps.py; the API server's validation refuses them after admission anyway).
    """
    pod = gunicorn_pod(annotations={"example.com/blob": "x" * (200 * 1024)})
    pod["spec"]["containers"][0]["workingDir"] = "/" + "x" * (3 * 1024 * 1024 - 200 * 1024)
    reply = client.review(admission_review(pod, uid="u-3mib"))

    assert reply.status == 200, reply
    assert len(reply.body) < 4096  # the patch adds the status key, not the whole annotations
    assert (reply.patch() or [])[0]["path"] == "/metadata/annotations/" + STATUS.replace(
        "/", "~1")


def test_server_answers_on_a_new_connection_after_bad_input(server: WebhookServer) -> None:
    start = server.log_size()
    with server.client() as bad:
        for body in (b"{", b"[]", b"\xff\xfe", b"null"):
            assert bad.post(body).status == 400
    with server.client() as fresh:
        assert_patched(fresh.review(admission_review(gunicorn_pod(), uid="u-fresh")), "u-fresh")
    assert server.alive()
    assert '"level":"error"' not in server.log(start)  # bad input is not our error


# --- TLS --------------------------------------------------------------------------------------


def _handshake(port: int, ctx: ssl.SSLContext, name: str = LOOPBACK) -> ssl.SSLSocket:
    raw = socket.create_connection((LOOPBACK, port), timeout=10)
    try:
        return ctx.wrap_socket(raw, server_hostname=name)
    except BaseException:
        raw.close()
        raise


def serves(port: int, ca_pem: bytes, serial: int) -> bool:
    """A new connection that trusts only `ca_pem` gets the certificate with `serial`."""
    try:
        with _handshake(port, client_context(ca_pem)) as sock:
            return peer_serial(sock) == serial
    except (OSError, ssl.SSLError):
        return False


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_1_1_is_refused(server: WebhookServer) -> None:
    ctx = client_context(server.pki.ca.cert_pem, minimum=ssl.TLSVersion.TLSv1_1,
                         maximum=ssl.TLSVersion.TLSv1_1)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this OpenSSL offer TLS 1.1 at all
    with pytest.raises((ssl.SSLError, ConnectionResetError)) as refused:
        _handshake(server.port, ctx).close()
    if "NO_PROTOCOLS_AVAILABLE" in str(refused.value):
        pytest.skip("this OpenSSL cannot offer TLS 1.1, so the server's refusal is not observable")


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"]
)
def test_tls_1_2_and_1_3_are_accepted(server: WebhookServer, version: ssl.TLSVersion) -> None:
    ctx = client_context(server.pki.ca.cert_pem, minimum=version, maximum=version)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with Client(server.port, ctx) as client:
        sock = client.connect()
        assert sock.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2",
                                  ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
        assert sock.selected_alpn_protocol() == "http/1.1"
        assert peer_serial(sock) == server.pki.serial
        assert_patched(client.review(admission_review(gunicorn_pod(), uid="u-tls")), "u-tls")


def test_untrusted_ca_fails_verification(server: WebhookServer) -> None:
    stranger = build_ca("some-other-ca")
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        _handshake(server.port, client_context(stranger.cert_pem)).close()


def test_wrong_server_name_fails_verification(server: WebhookServer) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        _handshake(server.port, client_context(server.pki.ca.cert_pem),
                   name="webhook.elsewhere.svc").close()


def test_certificate_names_the_loopback_addresses(server: WebhookServer) -> None:
    for name in SERVER_NAMES:
        with _handshake(server.port, client_context(server.pki.ca.cert_pem), name) as sock:
            assert peer_serial(sock) == server.pki.serial


# --- concurrency --------------------------------------------------------------------------------


@pytest.mark.slow
def test_200_reviews_from_16_threads(server: WebhookServer) -> None:
    threads, total = 16, 200

    def worker(index: int) -> list[tuple[str, str, Reply]]:
        answers = []
        with server.client() as client:  # one keep-alive connection per thread
            for n in range(index, total, threads):
                cpu = str(1 + n % 4)
                uid = f"thread-{index}-review-{n}"
                answers.append((uid, cpu, client.review(
                    admission_review(gunicorn_pod(cpu=cpu), uid=uid))))
        return answers

    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(worker, i) for i in range(threads)]
        answers = [a for f in futures for a in f.result(timeout=60)]
    elapsed = time.monotonic() - started

    assert len(answers) == total
    assert len({uid for uid, _, _ in answers}) == total
    for uid, cpu, reply in answers:
        assert reply.status == 200, reply
        assert reply.response["uid"] == uid
        assert reply.response["auditAnnotations"] == {"injected-web": f"{cpu}"}
        env = {e["name"]: e.get("value") for e in (reply.patch() or [])[1]["value"]}
        assert env == {"WEB_CONCURRENCY": cpu, "CPU_LIMIT": None, "PYTHON_CPU_COUNT": cpu}
    assert elapsed < 60, f"200 reviews took {elapsed:.1f} s"


# --- health and metrics ----------------------------------------------------------------------


def test_health_and_readiness(client: Client) -> None:
    healthz = client.get("/healthz")
    readyz = client.get("/readyz")
    assert (healthz.status, healthz.json()) == (200, {"status": "ok"})
    assert (readyz.status, readyz.json()) == (200, {"status": "ready"})


def test_metrics_count_outcomes_and_injections(client: Client) -> None:
    before = metrics_text(client)
    client.review(admission_review(gunicorn_pod(), uid="m-1"))
    client.review(admission_review(gunicorn_pod(command=["uvicorn", "app:app"]), uid="m-2"))
    client.review(admission_review(gunicorn_pod(), uid="m-3", operation="UPDATE",
                                   old=gunicorn_pod()))
    client.post(b"not json")
    after = metrics_text(client)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    requests = "concurrency_injector_requests_total"
    injections = "concurrency_injector_injections_total"
    assert delta(requests, outcome="patched") == 2
    assert delta(requests, outcome="ignored") == 1
    assert delta(requests, outcome="invalid") == 1
    assert delta(injections, runtime="gunicorn", source="command", mode="enforce") == 1
    assert delta(injections, runtime="uvicorn", source="command", mode="enforce") == 1
    assert delta("concurrency_injector_request_duration_seconds_count") == 3
    assert 'concurrency_injector_requests_total{outcome="patched"}' in after


# --- the server's own worker count ---------------------------------------------------------------


@pytest.mark.slow
def test_own_worker_count_from_web_concurrency(pki: Pki, tmp_path: Path) -> None:
    with WebhookServer(pki, tmp_path / "stderr.log", env={"WEB_CONCURRENCY": "2"}) as server:
        assert wait_until(lambda: len(uvicorn_workers(server.pid)) == 2, timeout=20)
        assert len(uvicorn_workers(server.pid)) == 2
        reviews = 8
        for n in range(reviews):  # new connections, spread over both workers
            with server.client() as client:
                assert_patched(client.review(admission_review(gunicorn_pod(), uid=f"w{n}")),
                               f"w{n}")
        with server.client() as client:
            text = metrics_text(client)
        # One scrape adds up every worker's counts.
        assert metric(text, "concurrency_injector_requests_total", outcome="patched") == reviews


@pytest.mark.parametrize(
    ("value", "message"),
    [("0", "WEB_CONCURRENCY='0': expected at least 1"),
     ("two", "WEB_CONCURRENCY='two': expected a whole number")],
    ids=["zero", "not-a-number"],
)
def test_bad_own_worker_count_exits_2(pki: Pki, value: str, message: str) -> None:
    command = [*cli_command(), "serve", "--cert-file", str(pki.cert_file), "--key-file",
               str(pki.key_file), "--host", LOOPBACK, "--port", str(free_port()),
               "--no-registry"]
    done = subprocess.run(command, env=clean_env(WEB_CONCURRENCY=value), capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 2, done
    assert message in done.stderr


# --- a certificate renewed on disk ----------------------------------------------------------------


class KubeletVolume:
    """A Secret volume as the kubelet writes it: files behind a `..data` symlink, swapped whole."""

    def __init__(self, root: Path, pair: KeyPair) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.version = 0
        self.write(pair)
        for name in ("tls.crt", "tls.key"):
            (root / name).symlink_to(f"..data/{name}")

    def write(self, pair: KeyPair) -> None:
        self.version += 1
        payload = self.root / f"..2026_11_25_{self.version:06d}"
        payload.mkdir()
        (payload / "tls.crt").write_bytes(pair.cert_pem)
        (payload / "tls.key").write_bytes(pair.key_pem)
        staged = self.root / "..data_tmp"
        staged.symlink_to(payload.name)
        os.replace(staged, self.root / "..data")  # the one atomic step


class Load:
    """Reviews sent in a loop until stopped, recording every failure."""

    def __init__(self, run: Any, limit: int = 20_000) -> None:
        self.stop = threading.Event()
        self.sent = 0
        self.failures: list[str] = []
        self.limit = limit
        self.thread = threading.Thread(target=self._loop, args=(run,), daemon=True)
        self.thread.start()

    def _loop(self, run: Any) -> None:
        deadline = time.monotonic() + 90
        while not self.stop.is_set() and self.sent < self.limit and time.monotonic() < deadline:
            uid = f"load-{threading.get_ident()}-{self.sent}"
            try:
                reply = run(uid)
                assert_patched(reply, uid)
            except Exception as exc:
                self.failures.append(f"{uid}: {exc!r}")
            self.sent += 1

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"], ids=["1-worker", "2-workers"])
def test_certificate_swapped_on_disk_is_served_without_a_failed_request(
    tmp_path: Path, workers: str
) -> None:
    old_ca, new_ca = build_ca("old-ca"), build_ca("new-ca")
    old, new = build_leaf(old_ca, SERVER_NAMES), build_leaf(new_ca, SERVER_NAMES)
    volume = KubeletVolume(tmp_path / "secret", old)
    pki = Pki(old_ca, old, tmp_path / "ca.crt", volume.root / "tls.crt", volume.root / "tls.key")
    env = {"CONCURRENCY_INJECTOR_CERT_RELOAD_SECONDS": "1", "WEB_CONCURRENCY": workers}
    with WebhookServer(pki, tmp_path / "stderr.log", env=env) as server:
        # Two API server connections that stay open across the swap...
        kept = [server.client(old_ca.cert_pem) for _ in range(2)]
        sockets = [c.connect() for c in kept]
        loads = [Load(lambda uid, c=c: c.review(admission_review(gunicorn_pod(), uid=uid)))
                 for c in kept]

        # ...and one that dials anew each time, trusting both CAs (a caBundle mid-rotation).
        def fresh(uid: str) -> Reply:
            with server.client(old_ca.cert_pem, new_ca.cert_pem) as client:
                return client.review(admission_review(gunicorn_pod(), uid=uid))

        loads.append(Load(fresh, limit=2_000))
        try:
            time.sleep(1)
            volume.write(new)

            # Every worker reloads on its own: twenty new connections in a row must all see it.
            serial = new.cert.serial_number
            assert wait_until(lambda: all(serves(server.port, new_ca.cert_pem, serial)
                                          for _ in range(20)), timeout=60, interval=0.2)
            time.sleep(1)  # keep the load running on the new certificate too
        finally:
            for load in loads:
                load.finish()

        assert new.cert.serial_number != old.cert.serial_number
        for load in loads:
            assert load.sent > 0
            assert load.failures == [], load.failures[:5]
        for client, sock in zip(kept, sockets, strict=True):
            assert client.conn.sock is sock  # the open connections were never dropped
            assert peer_serial(sock) == old.cert.serial_number
            client.close()
        with pytest.raises(ssl.SSLCertVerificationError):
            _handshake(server.port, client_context(old_ca.cert_pem)).close()
        with server.client(new_ca.cert_pem) as client:
            assert_patched(client.review(admission_review(gunicorn_pod(), uid="u-new")), "u-new")
            reloads = metric(metrics_text(client), "concurrency_injector_certificate_reloads_total",
                             result="ok")
        assert reloads >= int(workers)  # each worker reloaded its own context
        print(f"requests during the swap: {[load.sent for load in loads]}")


@pytest.mark.slow
def test_half_written_renewal_keeps_serving_the_old_pair(tmp_path: Path) -> None:
    """The cert file is renewed before the key file (no atomic swap): the old pair stays in use."""
    new_ca = build_ca("new-ca")
    pki = Pki.create(tmp_path / "pki", "old-ca")
    new = build_leaf(new_ca, SERVER_NAMES)
    env = {"CONCURRENCY_INJECTOR_CERT_RELOAD_SECONDS": "1"}
    with WebhookServer(pki, tmp_path / "stderr.log", env=env) as server, \
            server.client() as watcher:
        staged = pki.cert_file.with_suffix(".tmp")
        staged.write_bytes(new.cert_pem)
        os.replace(staged, pki.cert_file)  # the key file is still the old one

        def reload_failed() -> bool:
            text = metrics_text(watcher)
            return metric(text, "concurrency_injector_certificate_reloads_total",
                          result="error") >= 1

        assert wait_until(reload_failed, timeout=15, interval=0.2)
        trust_both = (pki.ca.cert_pem, new_ca.cert_pem)
        with _handshake(server.port, client_context(*trust_both)) as sock:
            assert peer_serial(sock) == pki.serial

        staged = pki.key_file.with_suffix(".tmp")
        staged.write_bytes(new.key_pem)
        os.replace(staged, pki.key_file)

        assert wait_until(lambda: serves(server.port, new_ca.cert_pem, new.cert.serial_number),
                          timeout=15, interval=0.2)


# --- serve --dev -----------------------------------------------------------------------------


@pytest.mark.slow
def test_serve_dev_prints_a_curl_that_works(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    directory: Path | None = None
    try:
        with dev_server(tmp_path) as dev:
            printed = dev.printed
            ca_file = dev.printed_path("CA certificate")
            review_file = dev.printed_path("example review")
            directory = ca_file.parent
            assert ca_file.is_file()
            assert review_file.is_file()
            lines = printed.splitlines()
            call = lines.index("Call it the way kube-apiserver does:")
            # The printed command, continuation line joined, run by a shell exactly as written.
            curl = "\n".join(lines[call + 1 : call + 3])
            assert curl.lstrip().startswith("curl --cacert")
            done = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=30,
                                  check=False)
            assert done.returncode == 0, done
            review = orjson.loads(review_file.read_bytes())
            answer = orjson.loads(done.stdout)
            assert answer["response"]["uid"] == review["request"]["uid"]
            assert answer["response"]["allowed"] is True
            assert orjson.loads(base64.b64decode(answer["response"]["patch"])) == GUNICORN_PATCH

            decode = lines.index("Decode the patch:")
            pipeline = "\n".join(lines[decode + 1 : decode + 3])
            done = subprocess.run(["bash", "-c", pipeline], capture_output=True, text=True,
                                  timeout=30, check=False)
            assert done.returncode == 0, done
            assert orjson.loads(done.stdout) == GUNICORN_PATCH
    finally:
        out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
        print(f"--- serve --dev stdout ---\n{out.read_text()}\n--- stderr ---\n{err.read_text()}")
        if directory is not None and directory.name.startswith("concurrency-injector-dev-"):
            shutil.rmtree(directory, ignore_errors=True)


# --- informal latency ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("distinct", [False, True], ids=["same-pod", "distinct-pods"])
def test_latency_of_2000_sequential_reviews(client: Client, distinct: bool) -> None:
    """Not a benchmark: p50/p99 of /mutate over TLS on loopback, one keep-alive connection.

    The same pod again and again is a Deployment's replicas (the server may remember its
    decision); distinct pods (a unique annotation each) make it decide every time.
    """
    def body(n: int) -> bytes:
        annotations = {"example.com/n": str(n)} if distinct else None
        return orjson.dumps(admission_review(gunicorn_pod(annotations=annotations), uid=f"b{n}"))

    bodies = [body(n) for n in range(2050)]
    client.connect()
    for warm_up in bodies[:50]:
        assert client.post(warm_up).status == 200
    timings = []
    for review in bodies[50:]:
        started = time.perf_counter()
        reply = client.post(review)
        timings.append(time.perf_counter() - started)
        assert reply.status == 200
    cuts = statistics.quantiles(timings, n=100)
    print(f"\n/mutate over TLS, one keep-alive connection, 2000 reviews, "
          f"{'distinct pods' if distinct else 'the same pod'}: p50 {cuts[49] * 1000:.2f} ms, "
          f"p99 {cuts[98] * 1000:.2f} ms, max {max(timings) * 1000:.2f} ms")
