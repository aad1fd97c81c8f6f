"""Connection bounds and shutdown of the real server (webhook/serving/protocol.py, webhook/serving/shutdown.py).

A server with short bounds (1 s to the first request, 1.5 s to read one, 3 connections) runs
as a subprocess; each test opens raw TLS sockets to it, so it can send what no HTTP client
would (a byte at a time, a header of megabytes). hack/reliability.py runs the same probes at
full size.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.servers import (
    LOOPBACK,
    Pki,
    WebhookServer,
    admission_review,
    client_context,
    gunicorn_pod,
    wait_until,
)

pytestmark = pytest.mark.slow

BOUNDS = {
    "CONCURRENCY_INJECTOR_FIRST_REQUEST_SECONDS": "1",
    "CONCURRENCY_INJECTOR_REQUEST_READ_SECONDS": "1.5",
    "CONCURRENCY_INJECTOR_MAX_CONNECTIONS": "3",
    "CONCURRENCY_INJECTOR_MAX_HEADER_BYTES": "8192",
    "CONCURRENCY_INJECTOR_MAX_HEADERS": "20",
    "CONCURRENCY_INJECTOR_DRAIN_SECONDS": "1",
}


@pytest.fixture(scope="module")
def server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebhookServer]:
    with WebhookServer(pki, tmp_path_factory.mktemp("bounded") / "log", env=BOUNDS) as webhook:
        yield webhook


def tls_socket(server: WebhookServer) -> ssl.SSLSocket:
    raw = socket.create_connection((LOOPBACK, server.port), timeout=5)
    return client_context(server.pki.ca.cert_pem).wrap_socket(raw, server_hostname="localhost")


def closed_after(sock: ssl.SSLSocket, limit: float) -> float | None:
    """Seconds until the server closes `sock` (reading and dropping what it sends), or None."""
    started = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - started < limit:
        try:
            if not sock.recv(4096):
                return time.monotonic() - started
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - started
    return None


def request(path: str = "/healthz", *, extra: bytes = b"") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: localhost\r\n".encode() + extra + b"\r\n"


def answer(sock: ssl.SSLSocket) -> bytes:
    """One whole response (head and a Content-Length body); its head is returned."""
    sock.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                   if line.startswith(b"content-length:")), 0)
    while len(body) < length and (chunk := sock.recv(4096)):
        body += chunk
    return head + b"\r\n\r\n"


def test_connection_that_sends_nothing_is_closed(server: WebhookServer) -> None:
    with tls_socket(server) as sock:
        elapsed = closed_after(sock, 5)
    assert elapsed is not None
    assert 0.8 < elapsed < 3


def test_headers_a_byte_at_a_time_are_cut_off(server: WebhookServer) -> None:
    data = request(extra=b"X-Slow: " + b"a" * 100)
    started = time.monotonic()
    with tls_socket(server) as sock:
        sock.settimeout(0.3)
        closed = False
        for i in range(len(data)):
            try:
                sock.send(data[i:i + 1])
                closed = sock.recv(10) == b""
            except TimeoutError:
                continue
            except OSError:
                closed = True
            if closed or time.monotonic() - started > 6:
                break
    assert closed
    assert time.monotonic() - started < 4


def test_keep_alive_connection_idle_past_the_first_request_timeout_is_reused(
    server: WebhookServer,
) -> None:
    """kube-apiserver reuses idle connections for 90 s: only uvicorn's keep-alive (120 s) applies."""
    with tls_socket(server) as sock:
        sock.sendall(request("/readyz"))
        assert answer(sock).startswith(b"HTTP/1.1 200")
        time.sleep(2.5)  # past both the first-request and the read deadline
        sock.sendall(request("/readyz"))
        assert answer(sock).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (b"X-Big: " + b"a" * 2_000_000 + b"\r\n", "bytes"),
        (b"".join(b"X-%d: 1\r\n" % i for i in range(25)), "count"),
    ],
    ids=["two-megabyte-header", "twenty-five-headers"],
)
def test_header_over_the_cap_is_431(server: WebhookServer, extra: bytes, reason: str) -> None:
    with tls_socket(server) as sock:
        # Closed while we are still sending: the answer is already there.
        with contextlib.suppress(OSError):
            sock.sendall(request(extra=extra))
        head = answer(sock)
    assert head.startswith(b"HTTP/1.1 431"), (reason, head[:80])
    assert b"connection: close" in head


def test_websocket_upgrade_is_refused(server: WebhookServer) -> None:
    body = orjson.dumps(admission_review(gunicorn_pod(), uid="ws"))
    with tls_socket(server) as sock:
        sock.sendall(b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n"
                     b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nContent-Type: "
                     b"application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        head = answer(sock)
        assert head.startswith(b"HTTP/1.1 400")
        assert closed_after(sock, 2) is not None


def test_past_the_connection_cap_the_longest_idle_is_evicted(server: WebhookServer) -> None:
    idle = [tls_socket(server) for _ in range(3)]
    time.sleep(0.2)
    try:
        with tls_socket(server) as fresh:
            fresh.sendall(request("/readyz"))
            assert answer(fresh).startswith(b"HTTP/1.1 200")
        assert closed_after(idle[0], 1) is not None  # the oldest went to make room
    finally:
        for sock in idle:
            sock.close()


def test_sigterm_drains_then_exits(pki: Pki, tmp_path: Path) -> None:
    with WebhookServer(pki, tmp_path / "log", env=BOUNDS) as server, tls_socket(server) as kept:
        kept.sendall(request("/readyz"))
        assert answer(kept).startswith(b"HTTP/1.1 200")
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        # Draining: still serving, but not ready, and every answer closes its connection.
        kept.sendall(request("/readyz"))
        head = answer(kept)
        assert head.startswith(b"HTTP/1.1 503"), head[:80]
        assert b"connection: close" in head
        with tls_socket(server) as fresh:
            fresh.sendall(request("/healthz"))
            head = answer(fresh)
        assert head.startswith(b"HTTP/1.1 200")
        assert b"connection: close" in head
        assert wait_until(lambda: not server.alive(), timeout=10)


def test_read_deadline_shorter_than_the_first_request_timeout_applies(
    pki: Pki, tmp_path: Path
) -> None:
    env = {**BOUNDS, "CONCURRENCY_INJECTOR_FIRST_REQUEST_SECONDS": "30"}
    with WebhookServer(pki, tmp_path / "log", env=env) as server, tls_socket(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # a request begun, never finished
        elapsed = closed_after(sock, 10)
    assert elapsed is not None
    assert elapsed < 4
