"""HTTP plumbing shared by the routes: JSON responses, error shapes and error handlers."""

import json
import logging
import math
from typing import Any

import orjson
from fastapi import FastAPI, Request, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import iter_route_contexts
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException

from todo_api.deadlines import is_timeout

log = logging.getLogger("todo_api")
# Where the server (protocol.py) puts a refusal, (status, detail), into a request's ASGI `state`
# when the request's body cannot be read (it stopped arriving, or its framing is too large): the
# request layer (edge.py) answers it as the body is read, so the answer has the request id, CORS
# and metrics.
REFUSED_BY_SERVER = "todo_api.refused"

_ERROR_DESCRIPTIONS = {
    401: "Missing or invalid bearer token (carries `WWW-Authenticate: Bearer`)",
    403: "The token's subject is not the user in the path",
    404: "No such task for this user",
    409: "A request with the same Idempotency-Key is still in progress (carries `Retry-After`)",
    412: "If-Match did not name the task's current ETag (carries the current `ETag`)",
    413: "Request body too large",
    422: "Invalid path, query, body or header, or an Idempotency-Key reused for another request",
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


def install_error_handlers(app: FastAPI) -> None:
    """Database outages become 503, and invalid requests a 422 that always renders."""

    async def database_unavailable(request: Request, exc: Exception) -> Response:
        # The engine hides bound parameters, so the message carries no user data.
        log.error("database unavailable: %s", exc)
        detail = "Database unavailable; try again shortly"
        if is_timeout(exc):
            # A statement timeout or the client's deadline: specs/api.md says what a client
            # may assume about a write answered this way.
            detail = "Database did not answer in time; a write may or may not have been applied"
        return JSONResponse(
            {"detail": detail},
            status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "5"},
        )

    async def invalid_request(request: Request, exc: Exception) -> Response:
        # FastAPI's shape, made safe to render (see _renderable).
        assert isinstance(exc, RequestValidationError)
        return _unprocessable(exc.errors())

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == status.HTTP_400_BAD_REQUEST and isinstance(
            exc.__cause__, ValueError | RecursionError
        ):
            # FastAPI answers 422 for a body json.loads rejects as JSON, but a bare 400 for one
            # it cannot even read: not UTF-8, nested past the recursion limit, an integer over
            # 4,300 digits. One documented status for every unparsable body: 422, same shape.
            reason = _unparsable_reason(exc.__cause__)
            log.info("unparsable request body: %s", reason)
            return _unprocessable([_json_invalid(reason)])
        if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
            # The router names only the first route that matched the path (one method); the
            # client needs them all. Rare, so computed here rather than kept per request.
            exc.headers = {**(exc.headers or {}), "Allow": _allowed_methods(request)}
        return await http_exception_handler(request, exc)

    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, http_error)
    for unavailable in (PoolTimeoutError, OperationalError, InterfaceError):
        app.add_exception_handler(unavailable, database_unavailable)


def _unprocessable(errors: Any) -> Response:
    body = json.dumps({"detail": _renderable(errors)}, ensure_ascii=True, allow_nan=False)
    return Response(body, status.HTTP_422_UNPROCESSABLE_CONTENT, media_type="application/json")


def _unparsable_reason(cause: Exception) -> str:
    if isinstance(cause, UnicodeDecodeError):
        return "Body is not valid UTF-8"
    if isinstance(cause, RecursionError):
        return "Body is nested too deeply"
    return "Body holds a number too long to read"


def _json_invalid(reason: str) -> dict[str, Any]:
    # The shape FastAPI gives a body that is not JSON.
    return {
        "type": "json_invalid",
        "loc": ["body"],
        "msg": "JSON decode error",
        "input": {},
        "ctx": {"error": reason},
    }


_METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> str:
    path = request.scope["path"].removeprefix(request.scope.get("root_path", ""))
    methods: set[str] = set()
    for route in iter_route_contexts(request.app.routes):
        regex = getattr(route, "path_regex", None)
        if route.methods and regex is not None and regex.match(path):
            methods |= route.methods
    return ", ".join(method for method in _METHOD_ORDER if method in methods)


# The error list, an error, then the first four levels of its input: any real body's echo.
_ECHO_DEPTH = 6


def _renderable(value: Any, depth: int = 0) -> Any:
    """A JSON-safe copy of validation errors, cut `_ECHO_DEPTH` levels down.

    Hand-written rather than jsonable_encoder: the echoed input may be bytes that are not
    UTF-8, a non-finite float or an exception (on which FastAPI's handler fails), and a 1 KB
    body can nest 500 levels deep, past the recursion limit of any encoder that follows it.
    """
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict | list | tuple):
        if depth >= _ECHO_DEPTH:
            return "..."
        if isinstance(value, dict):
            return {str(key): _renderable(item, depth + 1) for key, item in value.items()}
        return [_renderable(item, depth + 1) for item in value]
    return str(value)
