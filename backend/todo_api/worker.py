"""The Gunicorn worker class: uvicorn-worker's UvicornWorker, with our request log instead of
Uvicorn's access log (one line per request, with the request id and route template)."""

from typing import Any, ClassVar

from uvicorn_worker import UvicornWorker


class Worker(UvicornWorker):
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        "loop": "auto",
        "http": "auto",
        "access_log": False,
        "server_header": False,
        "proxy_headers": True,
    }
