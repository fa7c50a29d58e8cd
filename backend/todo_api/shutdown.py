"""A clean goodbye when a worker stops (recycled after MAX_REQUESTS, or SIGTERM).

Uvicorn closes idle keep-alive connections at once when its worker stops; a request the client has
just sent on one is then lost to a reset. Here every response from then on says `Connection:
close`, and an idle connection gets a short grace in which a request that arrives is still
answered (with `Connection: close`) before it is closed. The worker stops accepting connections
and waits for in-flight requests (GRACEFUL_TIMEOUT) as Uvicorn and Gunicorn do; a drain period
before that belongs to the worker's `StoppingServer` (uvicorn_internals.py), whose `shutdown`
sets the flag that these connections read.
"""

import asyncio

from todo_api.uvicorn_internals import UvicornHttp


class GracefulShutdown(UvicornHttp):
    """The connection's side of a worker's graceful stop (configured by `idle_grace`)."""

    idle_grace = 1.0
    _stopping = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.worker_stopping():
            # Accepted while the worker began to stop, after it told its connections.
            self.stop()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self._stopping:
            self.close_after_responses()

    def stop(self) -> None:
        """The worker is stopping: every answer from now on closes its connection."""
        if self._stopping:
            return
        self._stopping = True
        # A response whose head went out with keep-alive is left as it is: once it is complete,
        # the grace (after_response).
        self.close_after_responses()
        if not self.answering() and not self.receiving():
            # Idle: a request may be on its way already, and is answered if it comes soon.
            self.close_when_idle_after(self.idle_grace)
        # A head that is arriving is answered with `Connection: close`, or times out.

    def after_response(self) -> None:
        super().after_response()
        if self._stopping and not self.answering() and not self.closing():
            self.close_when_idle_after(self.idle_grace)
