"""The HTTP/1.1 connection: Uvicorn's httptools protocol, with bounds on the request head and a
clean goodbye when the worker stops.

Uvicorn's httptools protocol has no limit on a request head and no timer while one is arriving,
so a client could make a worker buffer tens of MiB, or hold a connection forever by sending a head
slowly (or not at all). Its h11 protocol has a size limit, but costs five times as much CPU per
request (70 µs against 13, the protocols alone with a trivial app). This subclass adds what is
missing and little to the common path (about 1 µs per request, measured the same way): a
comparison and an addition per read, and a timer only while a head is incomplete after a read.

When the worker stops (recycled after MAX_REQUESTS, or SIGTERM), Uvicorn closes idle keep-alive
connections at once; a request the client has just sent on one is then lost to a reset. Here every
response from then on says `Connection: close`, and an idle connection gets a short grace in
which a request that arrives is still answered (with `Connection: close`) before it is closed.
"""

import asyncio
from typing import Any

import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState as UvicornServerState

from todo_api.security_headers import API_CSP, security_headers

# How long a refused connection is still read (and what arrives dropped) before it is closed.
# Closing a socket with unread bytes makes the kernel send a reset, which can destroy the answer
# before the client reads it; a well-behaved client closes first, on our half-close.
LINGER_SECONDS = 2.0
# The app's security headers, on the answers written here too (HSTS, an app setting, is left to
# the app's own responses and the proxy).
_REFUSAL_HEADERS = security_headers(API_CSP, hsts_seconds=0)


class ServerState(UvicornServerState):
    """Uvicorn's state shared by a worker's connections, and whether the worker is stopping."""

    def __init__(self) -> None:
        super().__init__()
        self.stopping = False


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """Configured through a subclass (`bounded_protocol`): Uvicorn creates one per connection."""

    max_head_bytes = 32 * 1024
    head_timeout = 10.0
    idle_grace = 1.0

    def __init__(
        self,
        config: Config,
        server_state: UvicornServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # Bytes of the request head read so far; None while a request body is being read. Reset
        # when a message completes, so the rest of that read is not counted: a head is bounded by
        # the limit plus one read (256 KiB), however it is cut.
        self._head_bytes: int | None = 0
        self._head_timer: asyncio.TimerHandle | None = None
        # A head has begun and is not complete. Not the same as `_head_bytes`: a head that
        # begins in the read that completed the request before it counts from the next read.
        self._in_head = False
        self._refused = False
        self._stopping = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        state = self.server_state
        if isinstance(state, ServerState) and state.stopping:
            # Accepted while the worker began to stop, after it told its connections.
            self.shutdown()
        else:
            # Uvicorn arms its idle timer only after a response: a connection that never sends
            # a byte would stay open forever.
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        head_bytes = self._head_bytes
        if head_bytes is None:  # a body: Uvicorn's flow control and MAX_BODY_BYTES bound it
            super().data_received(data)
        elif len(data) < self.max_head_bytes - head_bytes:
            self._head_bytes = head_bytes + len(data)
            super().data_received(data)
            if self._in_head and self._head_timer is None:
                # The head is still incomplete: it has head_timeout from its first byte.
                self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)
        else:
            self._data_at_head_limit(data)

    def _data_at_head_limit(self, data: bytes) -> None:
        """Feed the parser what the head may still have; refuse if that does not complete it."""
        while data and not self._refused:
            head_bytes = self._head_bytes
            if head_bytes is None:
                super().data_received(data)
                return
            room = self.max_head_bytes - head_bytes
            if len(data) < room:
                self.data_received(data)
                return
            self._head_bytes = self.max_head_bytes
            super().data_received(data[:room])
            if self.transport.is_closing():
                return
            if self._head_bytes == self.max_head_bytes:
                self._refuse(431, "Request header fields too large")
                return
            data = data[room:]

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True

    def on_headers_complete(self) -> None:
        self._head_bytes = None
        self._in_head = False
        self._cancel_head_timer()
        super().on_headers_complete()
        if self._stopping:
            self.cycle.keep_alive = False

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._head_bytes = 0

    def shutdown(self) -> None:
        """The worker is stopping: every answer from now on closes its connection."""
        if self._stopping:
            return
        self._stopping = True
        for cycle, _ in self.pipeline:
            cycle.keep_alive = False
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if not cycle.response_started:
                cycle.keep_alive = False
            elif not self.pipeline:
                # Its head went out with keep-alive: once it is complete, the grace.
                cycle.on_response = self._last_response_complete
        elif not self._head_bytes:
            # Idle: a request may be on its way already, and is answered if it comes soon.
            self._close_after(self.idle_grace)
        # A head that is arriving is answered with `Connection: close`, or times out.

    def _last_response_complete(self) -> None:
        self.on_response_complete()
        if self.timeout_keep_alive_task is not None:
            self._close_after(self.idle_grace)

    def _unsupported_upgrade_warning(self) -> None:
        # WebSockets are off on purpose (worker.py): the request is served as plain HTTP, and
        # Uvicorn's two warning lines advising to install a WebSocket library would be wrong.
        pass

    def _close_after(self, seconds: float) -> None:
        self._unset_keepalive_if_required()
        self.timeout_keep_alive_task = self.loop.call_later(
            seconds, self.timeout_keep_alive_handler
        )

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self._refuse(408, "Request head timed out")

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _refuse(self, status: int, detail: str) -> None:
        """Answer `status` without reading the request, and close the connection."""
        self.logger.warning("%s (%d); closing the connection", detail, status)
        self._refused = True
        self._head_bytes = self.max_head_bytes  # what still arrives takes the slow path, dropped
        self._unset_keepalive_if_required()
        self._cancel_head_timer()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # A pipelined request is still being answered: its answer goes out, then the
            # connection closes; the refused head gets no answer of its own.
            cycle.keep_alive = False
            self.flow.pause_reading()
            return
        body = orjson.dumps({"detail": detail})
        content = [STATUS_LINE[status]]
        for name, value in (*self.server_state.default_headers, *_REFUSAL_HEADERS):
            content += [name, b": ", value, b"\r\n"]
        content += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
        self.transport.write(b"".join(content))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._head_timer = self.loop.call_later(LINGER_SECONDS, self.transport.close)


def bounded_protocol(
    *, max_head_bytes: int, head_timeout: float, idle_grace: float
) -> type[BoundedHttpToolsProtocol]:
    """The protocol class with these limits (Uvicorn's `http` setting takes a class)."""

    class ConfiguredProtocol(BoundedHttpToolsProtocol):
        pass

    ConfiguredProtocol.max_head_bytes = max_head_bytes
    ConfiguredProtocol.head_timeout = head_timeout
    ConfiguredProtocol.idle_grace = idle_grace
    return ConfiguredProtocol
