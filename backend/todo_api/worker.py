"""The Gunicorn worker class: uvicorn-worker's UvicornWorker, with our request log instead of
Uvicorn's access log (one line per request, with the request id and route template), and our
HTTP protocol (bounded requests: protocol.py; no request lost when the worker stops: shutdown.py).
"""

from typing import Any, ClassVar

from todo_api.config import ServerSettings, get_settings
from todo_api.protocol import HttpProtocol, http_protocol
from todo_api.uvicorn_internals import Worker as UvicornWorker


class Worker(UvicornWorker):
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        "loop": "auto",
        "http": HttpProtocol,  # with the limits of ServerSettings: __init__
        "ws": "none",  # no WebSocket route; an upgrade would also bypass the request limits
        "access_log": False,
        "server_header": False,
        "proxy_headers": True,
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = ServerSettings()
        self.use_http_protocol(
            http_protocol(
                max_head_bytes=settings.max_request_head_bytes,
                head_timeout=settings.request_head_timeout_seconds,
                # The body on the wire, chunked framing included: the body's own limit, plus as
                # much again as a head may take for chunk sizes, extensions and trailers.
                max_body_wire_bytes=get_settings().max_body_bytes + settings.max_request_head_bytes,
                body_timeout=settings.request_body_timeout_seconds,
                idle_grace=settings.shutdown_idle_grace_seconds,
            )
        )
