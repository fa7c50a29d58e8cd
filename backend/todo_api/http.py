"""HTTP plumbing shared by the routes: JSON responses, error shapes, error handlers and the
request body's limits."""

import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import FastAPI, Request, status
from fastapi.dependencies.models import Dependant
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import iter_route_contexts
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from todo_api.deadlines import is_timeout

log = logging.getLogger("todo_api")
# Where the server (protocol.py) puts a refusal, (status, detail), into a request's ASGI `state`
# when the request's body cannot be read (it stopped arriving, or its framing is too large): the
# app answers it as the body is read, so the answer has the request id, CORS and metrics.
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


# The credentials dependency of `BodySizeLimit`, and how to call it on a request by hand.
Credentials = tuple[Any, Callable[[Request], Awaitable[object]]]


class BodySizeLimit:
    """The request body's limits, as FastAPI reads a body:
    - a body over `max_bytes` gets a JSON 413, whether declared or streamed;
    - a route that depends on the `credentials` dependency has it checked before the first byte
      of its body is asked for;
    - a body the server refused (it stopped arriving, or its framing is too large) gets the
      server's status (REFUSED_BY_SERVER).

    FastAPI's own `max_body_size` answers a declared oversize body with plain text (it replaces
    whatever response the app sends), and our clients always get JSON errors; so this small
    middleware. The route never sees a byte past the limit, so nothing is changed.

    FastAPI reads a route's whole body before it solves the route's dependencies, so a request
    without valid credentials would make the server wait for a body it is going to refuse (a
    client with no token could hold a connection and the memory of a body). Here the dependency,
    called by hand, answers such a request at once with the very exception it raises; it then
    runs again as usual, a cache hit for a verified token. Every exception raised while FastAPI
    reads a body that is an HTTPException passes through untouched and is answered by the app's
    handlers, like the dependency's own.
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, credentials: Credentials | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.credentials = credentials
        self._route_needs_credentials: dict[int, bool] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            response = JSONResponse({"detail": self._detail}, status.HTTP_413_CONTENT_TOO_LARGE)
            await response(scope, receive, send)
            return
        received = 0
        state = scope.get("state")
        unchecked = self.credentials is not None

        async def limited_receive() -> Message:
            nonlocal received, unchecked
            if unchecked:
                unchecked = False
                await self._check_credentials(scope)
            message = await receive()
            if state is not None and (refused := state.get(REFUSED_BY_SERVER)) is not None:
                raise HTTPException(*refused)
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, self._detail)
            return message

        await self.app(scope, limited_receive, send)

    async def _check_credentials(self, scope: Scope) -> None:
        assert self.credentials is not None
        dependency, check = self.credentials
        route = scope.get("route")
        needed = self._route_needs_credentials.get(id(route))
        if needed is None:
            dependant = getattr(route, "dependant", None)
            needed = dependant is not None and _depends_on(dependant, dependency)
            self._route_needs_credentials[id(route)] = needed
        if needed:
            await check(Request(scope))

    @property
    def _detail(self) -> str:
        return f"Request body is larger than {self.max_bytes} bytes"


def _depends_on(dependant: Dependant, dependency: Any) -> bool:
    return any(
        sub.call is dependency or _depends_on(sub, dependency) for sub in dependant.dependencies
    )


class CatchAll:
    """Any exception a route lets escape becomes a bare JSON 500, logged once with its request id.

    Starlette runs a handler registered for `Exception` outside every middleware, so such a 500
    would lack the CORS headers and X-Request-ID; this sits inside them instead.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            if started:
                raise
            log.exception("unhandled error")
            response = JSONResponse({"detail": "Internal server error"}, 500)
            await response(scope, receive, send)


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
