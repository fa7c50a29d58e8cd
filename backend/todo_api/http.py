"""HTTP plumbing shared by the routes: JSON responses, error shapes and error handlers."""

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

log = logging.getLogger("todo_api")

_ERROR_DESCRIPTIONS = {
    401: "Missing or invalid bearer token (carries `WWW-Authenticate: Bearer`)",
    403: "The token's subject is not the user in the path",
    404: "No such task for this user",
    413: "Request body too large",
    422: "Invalid path, query or body",
    503: "Database or token keys temporarily unavailable",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can answer with."""
    return {
        code: {
            "description": _ERROR_DESCRIPTIONS[code],
            "content": {"application/json": {"example": {"detail": _ERROR_DESCRIPTIONS[code]}}},
        }
        for code in codes
    }


class JSONBytesResponse(Response):
    """JSON rendered by orjson (datetimes as ISO-8601 with their UTC offset)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class DeclaredBodyLimit:
    """413 as JSON for a request whose Content-Length is over the limit, before anything reads it.

    FastAPI's `max_body_size` enforces the limit on the bytes actually streamed, but for a
    declared length it replaces the response with plain text; clients here always get JSON.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            declared = Headers(scope=scope).get("content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
                detail = f"Request body is larger than {self.max_bytes} bytes"
                response = JSONResponse({"detail": detail}, status.HTTP_413_CONTENT_TOO_LARGE)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    """Database outages become 503 and anything unexpected a bare JSON 500: never a traceback."""

    async def database_unavailable(request: Request, exc: Exception) -> Response:
        log.error("database error: %s", type(exc).__name__, exc_info=exc)
        return JSONResponse(
            {"detail": "Database unavailable; try again shortly"},
            status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "5"},
        )

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("unhandled error", exc_info=exc)
        return JSONResponse({"detail": "Internal server error"}, 500)

    for unavailable in (PoolTimeoutError, OperationalError, InterfaceError):
        app.add_exception_handler(unavailable, database_unavailable)
    app.add_exception_handler(Exception, unexpected)
