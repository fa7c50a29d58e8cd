"""The Gunicorn worker class: uvicorn-worker's UvicornWorker, with our request log instead of
Uvicorn's access log (one line per request, with the request id and route template), and our
HTTP protocol (bounded request heads, no request lost when the worker stops: protocol.py)."""

import socket
import sys
from typing import Any, ClassVar

import uvicorn
from gunicorn.arbiter import Arbiter
from uvicorn.config import Config
from uvicorn_worker import UvicornWorker

from todo_api.config import ServerSettings
from todo_api.protocol import BoundedHttpToolsProtocol, ServerState, bounded_protocol


class Server(uvicorn.Server):
    """Uvicorn's server, telling connections accepted while it stops that it is stopping."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.state = ServerState()
        self.server_state = self.state

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.state.stopping = True
        await super().shutdown(sockets)


class Worker(UvicornWorker):
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        "loop": "auto",
        "http": BoundedHttpToolsProtocol,  # with the limits of ServerSettings: __init__
        "ws": "none",  # no WebSocket route; an upgrade would also bypass the head limits
        "access_log": False,
        "server_header": False,
        "proxy_headers": True,
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = ServerSettings()
        self.config.http = bounded_protocol(
            max_head_bytes=settings.max_request_head_bytes,
            head_timeout=settings.request_head_timeout_seconds,
            idle_grace=settings.shutdown_idle_grace_seconds,
        )

    async def _serve(self) -> None:
        # uvicorn-worker's own, with our Server.
        self.config.app = self.wsgi
        server = Server(config=self.config)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
