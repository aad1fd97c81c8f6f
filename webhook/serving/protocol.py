"""The HTTP/1.1 protocol the server runs: uvicorn's httptools protocol with the bounds it lacks.

uvicorn (0.5x) with httptools arms no timer on a new connection, so one that finishes TLS and
sends nothing is held for good; it restarts its keep-alive timer on every byte, so headers sent
a byte a second are never cut off; httptools buffers a header of any size; and any number of
connections are accepted until the process runs out of file descriptors. This subclass adds:

- a deadline for the first request on a new connection (`first_request_seconds`);
- one deadline to read a whole request, headers and body, from its first byte
  (`request_read_seconds`), never restarted by a byte, so a slow sender is cut off;
- caps on header bytes (`max_header_bytes`: the URL, names and values, and also every byte
  that arrives before the headers end, so httptools never buffers more than that and one read)
  and header count (`max_headers`): 431, then the connection is closed;
- a cap on open connections per worker (`max_connections`): past it, a new connection evicts
  the longest-idle one (never-used ones first) that has no request in flight, or is closed;
- an `Upgrade` request (websockets are off, and httptools would stop parsing the connection
  after its headers, body unread) is answered 400 and the connection closed;
- while the worker drains (webhook/serving/shutdown.py), `Connection: close` on every response;
- a connection the server closes is reset if the client has not completed the TLS close within
  `CLOSE_LINGER_SECONDS`: a client that keeps an idle socket without reading never answers
  the close_notify, and uvicorn's shutdown waited for it until its own timeout.

kube-apiserver's own use, one request at a time per connection and idle reuse for up to 90 s,
meets none of these: uvicorn's keep-alive timeout (120 s) still governs idle time between
requests.
"""

from __future__ import annotations

import asyncio
import http
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from webhook import logs, metrics
from webhook.serving.state import ServingState

log = logs.get("server")


# A closed TLS connection waits for the client's close_notify; a client that holds the socket
# without reading never sends it, and uvicorn's shutdown would wait on it. Past this it is reset.
CLOSE_LINGER_SECONDS = 1.0


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request we answer with an error."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with deadlines and caps (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The app's serving state (bounds, shutdown); an app of another kind serves on defaults.
        self.serving: ServingState = getattr(self.app, "serving", None) or ServingState()
        self.bounds = self.serving.bounds
        self.deadline: asyncio.TimerHandle | None = None
        self.due: float | None = None  # when the current deadline closes the connection
        self.due_reason = ""
        self.reset: asyncio.TimerHandle | None = None
        self.header_bytes = 0
        self.header_count = 0
        self.header_size = 0  # the URL, names and values that httptools has handed over
        self.in_body = False  # between a request's headers and its end
        self.reading = False  # between a request's first byte and its end
        self.requests = 0
        self.idle_since = self.loop.time()

    # --- connections ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if (
            self.serving.shutdown.stopping
        ):  # accepted while uvicorn closes its listeners: nobody will serve it
            self._close("stopping")
            return
        if len(self.connections) > self.bounds.max_connections and not self._evict_one():
            self._close("over-capacity", reset=True)
            return
        self._arm(self.bounds.first_request_seconds, "first-request-timeout")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.deadline is not None:
            self.deadline.cancel()
        if self.reset is not None:
            self.reset.cancel()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        super().shutdown()
        if self.transport.is_closing():
            self._reset_later()

    def timeout_keep_alive_handler(self) -> None:
        super().timeout_keep_alive_handler()
        self._reset_later()

    def _reset_later(self) -> None:
        """Reset a closing connection whose client has not finished the close in time."""
        if self.reset is None:
            self.reset = self.loop.call_later(CLOSE_LINGER_SECONDS, self.transport.abort)

    def _busy(self) -> bool:
        return self.reading or (self.cycle is not None and not self.cycle.response_complete)

    def _evict_one(self) -> bool:
        """Close the longest-idle other connection with no request in flight; False if none."""
        idle = [
            c
            for c in self.connections
            if isinstance(c, BoundedHttpToolsProtocol)
            and c is not self
            and not c._busy()
            and not c.transport.is_closing()  # evicted before, its close not yet over
        ]
        if not idle:
            return False
        victim = min(idle, key=lambda c: (c.requests > 0, c.idle_since))
        victim._close("evicted", reset=True)
        return True

    def _close(self, reason: str, *, reset: bool = False) -> None:
        """Close the connection; `reset` frees its file descriptor now, without the TLS close
        (at the connection cap, where a graceful close would hold the descriptor a while)."""
        metrics.child(metrics.CONNECTIONS_CLOSED, reason).inc()
        if reset:
            self.transport.abort()
            return
        if not self.transport.is_closing():
            self.transport.close()
        self._reset_later()

    def _arm(self, seconds: float, reason: str) -> None:
        """Close the connection in `seconds` unless `_disarm` comes first.

        A request sets a deadline rather than a timer: the one timer of a connection is only
        re-armed when it fires early, so a busy keep-alive connection costs no timer per request.
        """
        self.due = self.loop.time() + seconds
        self.due_reason = reason
        if self.deadline is not None and self.deadline.when() > self.due:
            self.deadline.cancel()  # a shorter deadline than the timer's (first request, 10 s)
            self.deadline = None
        if self.deadline is None:
            self.deadline = self.loop.call_at(self.due, self._check_deadline)

    def _disarm(self) -> None:
        self.due = None

    def _check_deadline(self) -> None:
        self.deadline = None
        if self.due is None:
            return
        if self.loop.time() >= self.due:
            self._close(self.due_reason)
        else:
            self.deadline = self.loop.call_at(self.due, self._check_deadline)

    # --- requests -------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if not self.in_body:
            self.header_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # not reached: refused at its headers
            self._refuse(400, "upgrade")
            return
        except httptools.HttpParserError as exc:
            refused = exc.__context__ if isinstance(exc.__context__, _Refused) else None
            if refused is None:
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
            else:
                self._refuse(refused.status, refused.reason)
            return
        if not self.in_body and self.header_bytes > self.bounds.max_header_bytes:
            self._refuse(431, "header-bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.reading = True
        self.header_count = 0
        self.header_size = 0
        self._arm(self.bounds.request_read_seconds, "read-timeout")

    def on_url(self, url: bytes) -> None:
        self.header_size += len(url)
        if self.header_size > self.bounds.max_header_bytes:
            raise _Refused(431, "header-bytes")
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_count += 1
        self.header_size += len(name) + len(value)
        if self.header_count > self.bounds.max_headers:
            raise _Refused(431, "header-count")
        if self.header_size > self.bounds.max_header_bytes:
            raise _Refused(431, "header-bytes")
        # uvicorn's on_header, inlined: this runs for every header of every request.
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.parser.should_upgrade():
            raise _Refused(400, "upgrade")
        self.in_body = True
        self.header_bytes = 0
        super().on_headers_complete()
        if self.serving.shutdown.draining and self.cycle is not None:
            self.cycle.keep_alive = False  # uvicorn adds `connection: close` and closes after

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.reading = False
        self.in_body = False
        self.requests += 1
        self._disarm()

    def on_response_complete(self) -> None:
        self.idle_since = self.loop.time()
        super().on_response_complete()
        if self.transport.is_closing():  # `Connection: close` (draining, or asked for)
            self._reset_later()

    def _refuse(self, status: int, reason: str) -> None:
        """Answer `status` with `Connection: close` and close, without reading further."""
        metrics.child(metrics.CONNECTIONS_CLOSED, reason).inc()
        self._disarm()
        phrase = http.HTTPStatus(status).phrase
        body = f"{phrase}\n".encode()
        self.transport.write(
            f"HTTP/1.1 {status} {phrase}\r\ncontent-type: text/plain; charset=utf-8\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
            + body
        )
        self.transport.close()
        self._reset_later()
