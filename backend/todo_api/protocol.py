"""The HTTP/1.1 connection: Uvicorn's httptools protocol with bounds on each request, and a clean
goodbye when the worker stops (shutdown.py).

Uvicorn's httptools protocol has no limit on a request head, no timer while a head or a body is
arriving, and no bound on chunked framing; its keep-alive timer is cancelled by any byte, even a
CR/LF that begins no request. So a client could make a worker buffer tens of MiB, or hold a
connection forever by sending a head or a body slowly (or not at all). Its h11 protocol has a size
limit, but costs five times as much CPU per request (70 µs against 13, the protocols alone with a
trivial app). `RequestLimits` adds what is missing and little to the common path (about 2 µs per
request, measured the same way, with the shutdown piece): a comparison and a subtraction per read,
and a timer only while a head or a body is incomplete after a read.

What a request may take, from the first byte after the request before it:
- its head: `max_head_bytes` (431) within `head_timeout` of its first byte (408);
- its body: `max_body_wire_bytes` on the wire, chunk sizes, extensions and trailers included
  (413; the body itself is bounded by the app's MAX_BODY_BYTES), within `body_timeout` of its
  head (408, answered by the app: http.py);
- bytes that begin no request (CR/LF, allowed before a request line) leave the keep-alive timer
  running, with its deadline unchanged.
A request whose response is complete before its body has arrived (a 401 at once, say) closes its
connection: what is left of the body is read and dropped for a moment, then the connection closes.
"""

import asyncio
import logging
from typing import cast

import orjson

from todo_api.http import REFUSED_BY_SERVER
from todo_api.one_send import PairedWrites
from todo_api.security_headers import API_CSP, security_headers
from todo_api.shutdown import GracefulShutdown
from todo_api.uvicorn_internals import UvicornHttp

log = logging.getLogger("uvicorn.error")
# How long a refused connection is still read (and what arrives dropped) before it is closed.
# Closing a socket with unread bytes makes the kernel send a reset, which can destroy the answer
# before the client reads it; a well-behaved client closes first, on our half-close.
LINGER_SECONDS = 2.0
# The app's security headers, on the answers written here too (HSTS, an app setting, is left to
# the app's own responses and the proxy).
_REFUSAL_HEADERS = [
    *security_headers(API_CSP, hsts_seconds=0),
    (b"content-type", b"application/json"),
    (b"connection", b"close"),
]


class RequestLimits(UvicornHttp):
    """Bounds on what each request may take (configured by the class attributes)."""

    max_head_bytes = 32 * 1024
    head_timeout = 10.0
    max_body_wire_bytes = 96 * 1024
    body_timeout = 10.0

    # Per connection (class values are the defaults, set on the instance as they change).
    _room: int  # set by connection_made
    _in_head = False  # a head has begun and is not complete
    _in_body = False  # a head is complete and its message is not
    _deadline: asyncio.TimerHandle | None = None  # of the head or the body
    _refused = False

    def receiving(self) -> bool:
        return self._in_head or self._in_body

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # A head and its body in one send (one_send.py): Uvicorn writes them apart.
        paired = PairedWrites(transport, asyncio.get_running_loop())
        super().connection_made(cast(asyncio.Transport, paired))
        # What the current phase (a head, a body) may still read before the slow path. Set
        # afresh when a phase begins, so that the rest of that read is not counted: a phase
        # is bounded by its limit plus one read (256 KiB), however it is cut.
        self._room = self.max_head_bytes
        # Uvicorn arms its idle timer only after a response: a connection that never sends
        # a byte would stay open forever.
        self.close_when_idle_after()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        room = self._room
        if len(data) >= room:
            self._data_at_limit(data)
            return
        self._room = room = room - len(data)
        idle = self.idle_timer()
        super().data_received(data)
        if self._deadline is None and not self._refused:
            if self._in_head:
                # The head is still incomplete: it has head_timeout from its first byte.
                self._deadline = self.later(self.head_timeout, self._head_timed_out)
            elif self._in_body:
                # The body is: it has body_timeout from (about) the end of its head.
                self._deadline = self.later(self.body_timeout, self._body_timed_out)
            elif idle is not None and self._room == room and not self.closing():
                # The read began no request (a message that did reset the room): only CR/LF,
                # which Uvicorn takes as activity. Still idle, on the same deadline.
                self.restore_idle_timer(idle)

    def _data_at_limit(self, data: bytes) -> None:
        """Feed the parser what the phase may still take; refuse if that does not end it."""
        while data and not self._refused:
            room = self._room
            if len(data) < room:
                self.data_received(data)
                return
            self._room = 0
            super().data_received(data[:room])
            if self._refused or self.closing():
                return
            if self._room == 0:  # the phase did not end within its room
                if self._in_body:
                    self._refuse(413, "Request body framing is too large")
                else:
                    self._refuse(431, "Request header fields too large")
                return
            data = data[room:]

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._in_body = True
        self._room = self.max_body_wire_bytes
        if self._deadline is not None:
            self._cancel_deadline()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_body = False
        self._room = self.max_head_bytes
        if self._deadline is not None:
            self._cancel_deadline()

    def after_response(self) -> None:
        super().after_response()
        if self._in_body and not self.answering() and not self.closing():
            # Answered before its body arrived (a 401 at once, a refusal): nothing after that
            # body can be read, so the connection closes.
            self._linger()

    def invalid_request(self, message: str) -> None:
        # Uvicorn's answer is plain text; ours is JSON like every other error.
        self._refuse(400, "Invalid HTTP request")

    def _head_timed_out(self) -> None:
        self._deadline = None
        if not self.closing():
            self._refuse(408, "Request head timed out")

    def _body_timed_out(self) -> None:
        self._deadline = None
        if self.closing() or not self._in_body:
            return
        if self.reading_paused() or self.waiting_for_100_continue():
            # Not the client's delay: the app has not asked for (the rest of) the body yet.
            self._deadline = self.later(self.body_timeout, self._body_timed_out)
            return
        self._refuse(408, "Request body timed out")

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _refuse(self, status: int, detail: str) -> None:
        """Answer `status` and close the connection, reading no more of it."""
        log.warning("%s (%d); closing the connection", detail, status)
        self._stop_reading()
        if self._in_body and self.answering():
            # The app serves this request: it answers (with the request id, CORS and metrics
            # of every answer), then the connection closes (after_response).
            self.refuse_in_app(REFUSED_BY_SERVER, (status, detail))
            return
        if self.answering():
            # A pipelined request is still being answered: its answer goes out, then the
            # connection closes; the refused head gets no answer of its own.
            self.close_after_responses(started_too=True)
            self.pause_reading()
            return
        self.write_response(status, _REFUSAL_HEADERS, orjson.dumps({"detail": detail}))
        self._linger()

    def _stop_reading(self) -> None:
        self._refused = True
        self._room = 0  # what still arrives takes the slow path, dropped
        self.stop_idle_timer()
        self._cancel_deadline()

    def _linger(self) -> None:
        """Half-close, drop what still arrives, and close after LINGER_SECONDS."""
        self._stop_reading()
        self.half_close()
        self._deadline = self.later(LINGER_SECONDS, self.close)


class HttpProtocol(GracefulShutdown, RequestLimits):
    """Configured through a subclass (`http_protocol`): Uvicorn creates one per connection."""


def http_protocol(
    *,
    max_head_bytes: int,
    head_timeout: float,
    max_body_wire_bytes: int,
    body_timeout: float,
    idle_grace: float,
) -> type[HttpProtocol]:
    """The protocol class with these limits (Uvicorn's `http` setting takes a class)."""

    class ConfiguredProtocol(HttpProtocol):
        pass

    ConfiguredProtocol.max_head_bytes = max_head_bytes
    ConfiguredProtocol.head_timeout = head_timeout
    ConfiguredProtocol.max_body_wire_bytes = max_body_wire_bytes
    ConfiguredProtocol.body_timeout = body_timeout
    ConfiguredProtocol.idle_grace = idle_grace
    return ConfiguredProtocol
