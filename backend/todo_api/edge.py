"""The app's one request layer: what every request passes through before and after its route.

In the order a request meets it:
- a path with one trailing slash is served as the path without it;
- the request gets its id (a valid incoming X-Request-ID, or a new one), returned as
  X-Request-ID with the security headers on every response;
- a request with an `Origin` goes through CORS (Starlette's CORSMiddleware, which answers
  preflights); one without pays nothing for it;
- the body's limits: a body over `max_bytes` gets a JSON 413, whether declared or streamed; a
  route that depends on the `credentials` dependency has it checked before the first byte of
  its body is asked for; a body the server refused (it stopped arriving, or its framing is too
  large) gets the server's status (REFUSED_BY_SERVER);
- any exception a route lets escape becomes a bare JSON 500, logged once with the request id;
- when the answer is sent: the HTTP metrics (by route template, todo_api/observability.py) and
  one access log line.

One layer rather than one middleware per concern: each layer wraps `send` and costs every
request a call and a closure, and a profile of a GET put five such layers at about a fifth of
a worker's CPU. The order above is the order the separate layers had, so every error (413,
500) still carries the request id, the security headers and the CORS headers.
"""

import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request, status
from fastapi.dependencies.models import Dependant
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from todo_api.http import REFUSED_BY_SERVER
from todo_api.logs import request_id_var
from todo_api.observability import NOT_MEASURED, HttpMetrics
from todo_api.security_headers import API_CSP, DOCS_CSP, security_headers

log = logging.getLogger("todo_api")
access_log = logging.getLogger("todo_api.access")

DOCS_PAGES = frozenset({"/docs", "/redoc", "/docs/oauth2-redirect"})
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

# The credentials dependency of the body limits, and how to call it on a request by hand.
Credentials = tuple[Any, Callable[[Request], Awaitable[object]]]


class Edge:
    """The request layer described in the module's docstring (plain ASGI: one call a request)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: HttpMetrics,
        cors: dict[str, Any],
        max_body_bytes: int,
        credentials: Credentials | None = None,
        hsts_seconds: int = 0,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.cors = CORSMiddleware(self._guarded, **cors)
        self.max_body_bytes = max_body_bytes
        self.too_large = f"Request body is larger than {max_body_bytes} bytes"
        self.credentials = credentials
        self._route_needs_credentials: dict[int, bool] = {}
        self.api_headers = security_headers(API_CSP, hsts_seconds)
        self.docs_headers = security_headers(DOCS_CSP, hsts_seconds)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path[-1:] == "/" and path != "/":
            # Rather than Starlette's redirect, which built an absolute URL from the Host
            # header and lost POST bodies. Before routing, so that the route template (not the
            # raw path) is what the metrics and the log see.
            scope["path"] = path = path[:-1]
        extra = self.docs_headers if path in DOCS_PAGES else self.api_headers
        request_id = origin = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                text = value.decode("latin-1")
                request_id = text if _VALID_REQUEST_ID.fullmatch(text) else None
            elif name == b"origin":
                origin = value
        request_id = request_id or secrets.token_hex(16)
        reset = request_id_var.set(request_id)
        started = time.perf_counter()
        status_code = 500

        async def send_with_context(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
                message["headers"] = [
                    *message.get("headers", ()),
                    *extra,
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        try:
            if origin is None:
                await self._guarded(scope, receive, send_with_context)
            else:
                await self.cors(scope, receive, send_with_context)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "none"
            if template not in NOT_MEASURED:
                seconds = time.perf_counter() - started
                method = scope["method"]
                # A preflight is CORS's own answer, not a request to a route.
                if route is not None or origin is None or method != "OPTIONS":
                    self.metrics.record(method, template, status_code, seconds)
                if access_log.isEnabledFor(logging.INFO):
                    access_log.info(
                        "%s %s %s",
                        method,
                        template,
                        status_code,
                        extra={
                            "method": method,
                            "route": template,
                            "status": status_code,
                            "duration_ms": round(seconds * 1000, 2),
                        },
                    )
            request_id_var.reset(reset)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app, within the body's limits, and with a 500 for an exception it lets escape.

        (FastAPI's own `max_body_size` answers a declared oversize body with plain text, and a
        handler registered for `Exception` runs outside every middleware, so its 500 would lack
        the CORS headers and the request id: so these.)
        """
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            response = JSONResponse({"detail": self.too_large}, status.HTTP_413_CONTENT_TOO_LARGE)
            await response(scope, receive, send)
            return
        started = False

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, self._limited(scope, receive), watched_send)
        except Exception:
            if started:
                raise
            log.exception("unhandled error")
            response = JSONResponse({"detail": "Internal server error"}, 500)
            await response(scope, receive, send)

    def _limited(self, scope: Scope, receive: Receive) -> Receive:
        """`receive` for FastAPI, which reads a route's whole body before it solves the route's
        dependencies: a request without valid credentials would make the server wait for a
        body it is going to refuse (a client with no token could hold a connection and the
        memory of a body). So the credentials dependency, called by hand, answers such a
        request at once with the very exception it raises; it then runs again as usual, a
        cache hit for a verified token. An HTTPException raised here is answered by the app's
        handlers, like the dependency's own."""
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
                if received > self.max_body_bytes:
                    raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, self.too_large)
            return message

        return limited_receive

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


def _depends_on(dependant: Dependant, dependency: Any) -> bool:
    return any(
        sub.call is dependency or _depends_on(sub, dependency) for sub in dependant.dependencies
    )
