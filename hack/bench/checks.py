"""One CA-verified review before each load run: the server presents a certificate valid for the
name under the test CA, and answers a correct AdmissionReview.

wrk, which makes the load, does not verify the certificate chain; this check is what does.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
from typing import Any

Obj = dict[str, Any]

HOST = "127.0.0.1"
REQUEST_TIMEOUT_SECONDS = 10.0


class CheckError(Exception):
    """The server's certificate or answer is wrong."""


def client_context(ca_file: str) -> ssl.SSLContext:
    """What kube-apiserver does: trust only the webhook's CA bundle, check the name."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def post_review(context: ssl.SSLContext, *, port: int, server_name: str, body: bytes) -> Obj:
    """POST `body` to /mutate over a TLS connection to 127.0.0.1, verified for `server_name`."""
    with socket.create_connection((HOST, port), timeout=REQUEST_TIMEOUT_SECONDS) as raw, \
            context.wrap_socket(raw, server_hostname=server_name) as tls:
        head = (f"POST /mutate?timeout=10s HTTP/1.1\r\nHost: {server_name}:{port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n")
        tls.sendall(head.encode() + body)
        response = http.client.HTTPResponse(tls)  # type: ignore[arg-type]
        response.begin()
        data = response.read()
    if response.status != 200:
        raise CheckError(f"HTTP {response.status}: {data[:200]!r}")
    answer: Obj = json.loads(data)
    return answer


def patch_ops(answer: Obj) -> list[Obj]:
    response = answer.get("response") or {}
    encoded = response.get("patch")
    if not encoded:
        return []
    if response.get("patchType") != "JSONPatch":
        raise CheckError(f"patch without patchType JSONPatch: {response.get('patchType')!r}")
    ops: list[Obj] = json.loads(base64.b64decode(encoded))
    return ops


def check_answer(answer: Obj, *, uid: str, expect_patch: bool | None) -> str:
    """Raise CheckError unless `answer` is a valid allowing review; return a one-line summary.

    `expect_patch`: True for a target pod (a patch that sets WEB_CONCURRENCY), False for a
    non-target (no patch), None when the server is not a mutation (the floor).
    """
    if answer.get("apiVersion") != "admission.k8s.io/v1" or answer.get("kind") != "AdmissionReview":
        raise CheckError(f"not an admission.k8s.io/v1 AdmissionReview: {str(answer)[:200]}")
    response = answer.get("response") or {}
    if response.get("uid") != uid:
        raise CheckError(f"uid {response.get('uid')!r} does not match the request's {uid!r}")
    if response.get("allowed") is not True:
        raise CheckError(f"pod not allowed: {response}")
    ops = patch_ops(answer)
    if expect_patch is True and "WEB_CONCURRENCY" not in json.dumps(ops):
        raise CheckError(f"target pod, but no WEB_CONCURRENCY in the patch: {ops}")
    if expect_patch is False and ops:
        raise CheckError(f"non-target pod, but patched: {ops}")
    return f"{len(ops)} patch op(s), {len(response.get('warnings') or [])} warning(s)"


def check_wrong_name_rejected(context: ssl.SSLContext, *, port: int, body: bytes) -> None:
    """The client really checks names: a name not in the certificate must fail the handshake."""
    try:
        post_review(context, port=port, server_name="not-the-webhook.invalid", body=body)
    except ssl.SSLCertVerificationError:
        return
    raise CheckError("a certificate check for a wrong name passed: verification is off")
