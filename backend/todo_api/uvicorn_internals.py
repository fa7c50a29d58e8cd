"""Every private name of Uvicorn and uvicorn-worker that the server relies on, and only here.

Uvicorn's httptools protocol, its request cycle, its server state and uvicorn-worker's `_serve` are
not public API: an upgrade may rename or remove any of them. The request limits (protocol.py) and
the graceful shutdown (shutdown.py) therefore use them only through the small vocabulary below, and
tests/server/test_uvicorn_internals.py checks each name against the installed versions, so that an
upgrade that changes one fails there, loudly, instead of quietly switching a limit off. Names of
asyncio's Protocol interface (`connection_made`, `data_received`, `connection_lost`) and of the
httptools parser callbacks (`on_message_begin`, `on_headers_complete`, `on_message_complete`) are
public contracts and used as such. pyproject.toml pins both packages to the versions checked here.
"""

import asyncio
import sys
from collections.abc import Callable
from typing import Any

import uvicorn
from gunicorn.arbiter import Arbiter
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState as UvicornServerState
from uvicorn_worker import UvicornWorker

# The attributes of Uvicorn's objects read or written below, by object (checked by the test).
PROTOCOL_ATTRIBUTES = (
    "loop",
    "transport",
    "flow",
    "cycle",
    "pipeline",
    "server_state",
    "timeout_keep_alive",
    "timeout_keep_alive_task",
)
PROTOCOL_METHODS = (
    "timeout_keep_alive_handler",
    "_unset_keepalive_if_required",
    "on_response_complete",
    "shutdown",
    "send_400_response",
    "_unsupported_upgrade_warning",
)
CYCLE_ATTRIBUTES = (
    "scope",
    "keep_alive",
    "response_started",
    "response_complete",
    "waiting_for_100_continue",
    "message_event",
)
FLOW_ATTRIBUTES = ("read_paused", "pause_reading")
SERVER_STATE_ATTRIBUTES = ("default_headers", "connections")
WORKER_METHODS = ("_serve", "_install_sigquit_handler")
WORKER_ATTRIBUTES = ("config",)  # Uvicorn's Config, built from CONFIG_KWARGS


class StoppingState(UvicornServerState):
    """Uvicorn's state shared by a worker's connections, and whether the worker is stopping."""

    def __init__(self) -> None:
        super().__init__()
        self.stopping = False


class UvicornHttp(HttpToolsProtocol):
    """Uvicorn's httptools protocol, seen through the few internals the pieces above it use.

    Hooks for subclasses: `after_response` (a response was sent in full), `stop` (the worker
    is stopping), `invalid_request` (the parser refused the bytes) and `receiving`.
    """

    # Hooks ---------------------------------------------------------------------------------

    def receiving(self) -> bool:
        """Whether part of a request has been read and not yet its end (a subclass that counts
        bytes knows; Uvicorn does not say)."""
        return False

    def after_response(self) -> None:
        """A response has been sent in full (the connection may be closing)."""

    def stop(self) -> None:
        """The worker is stopping: Uvicorn's own behaviour closes idle connections at once."""
        super().shutdown()

    def invalid_request(self, message: str) -> None:
        super().send_400_response(message)

    # Uvicorn's methods, routed to the hooks -------------------------------------------------

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.after_response()

    def shutdown(self) -> None:
        self.stop()

    def send_400_response(self, msg: str) -> None:
        self.invalid_request(msg)

    def _unsupported_upgrade_warning(self) -> None:
        # WebSockets are off on purpose (worker.py): the request is served as plain HTTP, and
        # Uvicorn's two warning lines advising to install a WebSocket library would be wrong.
        pass

    # The connection ----------------------------------------------------------------------

    def later(self, delay: float, callback: Callable[[], object]) -> asyncio.TimerHandle:
        return self.loop.call_later(delay, callback)

    def closing(self) -> bool:
        return self.transport.is_closing()

    def close(self) -> None:
        self.transport.close()

    def pause_reading(self) -> None:
        self.flow.pause_reading()

    def reading_paused(self) -> bool:
        """Reading is paused by flow control (the app has not taken the body read so far), so a
        body cannot be late by the client's fault."""
        return self.flow.read_paused

    def worker_stopping(self) -> bool:
        state = self.server_state
        return isinstance(state, StoppingState) and state.stopping

    def write_response(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Write a whole response, with the server's default headers (its `date`)."""
        content = [STATUS_LINE[status]]
        for name, value in (*self.server_state.default_headers, *headers):
            content += [name, b": ", value, b"\r\n"]
        content += [b"content-length: %d\r\n\r\n" % len(body), body]
        self.transport.write(b"".join(content))

    def half_close(self) -> None:
        """End the sending side: the client reads what was sent, then the end of it."""
        if self.transport.can_write_eof():
            self.transport.write_eof()

    # The keep-alive timer: Uvicorn arms it after each response and cancels it on any byte read.

    def idle_timer(self) -> asyncio.TimerHandle | None:
        return self.timeout_keep_alive_task

    def restore_idle_timer(self, timer: asyncio.TimerHandle) -> None:
        """Re-arm a keep-alive timer that a read cancelled, with its deadline unchanged."""
        self.timeout_keep_alive_task = self.loop.call_at(
            timer.when(), self.timeout_keep_alive_handler
        )

    def close_when_idle_after(self, seconds: float | None = None) -> None:
        """(Re-)arm the keep-alive timer: `seconds`, or KEEPALIVE."""
        self._unset_keepalive_if_required()
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive if seconds is None else seconds,
            self.timeout_keep_alive_handler,
        )

    def stop_idle_timer(self) -> None:
        self._unset_keepalive_if_required()

    # The requests of the connection: Uvicorn's RequestResponseCycle, one per request.

    def answering(self) -> bool:
        """A request has been read up to its body and its response is not complete."""
        cycle = self.cycle
        return cycle is not None and not cycle.response_complete

    def waiting_for_100_continue(self) -> bool:
        cycle = self.cycle
        return cycle is not None and cycle.waiting_for_100_continue

    def close_after_responses(self, *, started_too: bool = False) -> None:
        """Every response not yet begun (and, if `started_too`, the one being sent) closes the
        connection when it is complete."""
        for cycle, _ in self.pipeline:
            cycle.keep_alive = False
        cycle = self.cycle
        if cycle is not None and (started_too or not cycle.response_started):
            cycle.keep_alive = False

    def refuse_in_app(self, key: str, refusal: tuple[int, str]) -> None:
        """Hand a refusal to the app that serves the current request: it is put under `key` in
        the request's ASGI `state`, and a wait for the body ends at once (http.py answers it)."""
        cycle = self.cycle
        cycle.scope["state"][key] = refusal
        cycle.message_event.set()


class StoppingServer(uvicorn.Server):
    """Uvicorn's server, telling its connections (and those it accepts while it stops) that it
    is stopping."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.state = StoppingState()
        self.server_state = self.state

    async def shutdown(self, sockets: Any = None) -> None:
        self.state.stopping = True
        await super().shutdown(sockets)


class Worker(UvicornWorker):
    """uvicorn-worker's worker, serving with our `StoppingServer`."""

    def use_http_protocol(self, protocol: type[UvicornHttp]) -> None:
        """Serve with this protocol class (set after CONFIG_KWARGS, which are class-level)."""
        self.config.http = protocol

    async def _serve(self) -> None:
        # uvicorn-worker's own, with our server class.
        self.config.app = self.wsgi
        server = StoppingServer(config=self.config)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
