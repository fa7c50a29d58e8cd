"""Metrics (Prometheus, multiprocess-aware), request ids and the access log."""

import hmac
import logging
import re
import secrets
import time
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_fastapi_instrumentator import Instrumentator
from prometheus_fastapi_instrumentator import metrics as http_metrics
from prometheus_fastapi_instrumentator.metrics import Info
from sqlalchemy import Engine, event
from sqlalchemy.pool import ConnectionPoolEntry
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from todo_api.config import Settings
from todo_api.logs import request_id_var
from todo_api.security_headers import API_CSP, DOCS_CSP, security_headers

NOT_MEASURED = ["/metrics", "/livez", "/readyz"]
_NOT_MEASURED_PATTERNS = [f"^{path}$" for path in NOT_MEASURED]
# Per-route latency buckets fine enough for a p99 (the library's default is 0.1, 0.5, 1 s).
ROUTE_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# All requests together, finer (a sample costs the same whatever the number of buckets).
ALL_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1,
    2.5,
    5,
    10,
    30,
    60,
)
TASKS_PATH = "/api/{user_id}/tasks"

DOCS_PAGES = frozenset({"/docs", "/redoc", "/docs/oauth2-redirect"})

access_log = logging.getLogger("todo_api.access")

# ---------------------------------------------------------------------------------------------
# Metrics


class AppMetrics:
    """Our own metrics, beside the instrumentator's HTTP ones. No label ever holds a user id."""

    def __init__(self, registry: CollectorRegistry, *, pool_limit: int) -> None:
        self.auth_failures = Counter(
            "todo_auth_failures_total",
            "Requests refused for their token, by reason",
            ["reason"],
            registry=registry,
        )
        self.task_changes = Counter(
            "todo_task_changes_total",
            "Tasks created, updated, completed (toggled or set) and deleted",
            ["action"],
            registry=registry,
        )
        self.readiness_failures = Counter(
            "todo_readiness_failures_total", "Readiness probes answered 503", registry=registry
        )
        self.pool_in_use = Gauge(
            "todo_db_pool_connections_in_use",
            "Database connections checked out of the pool",
            registry=registry,
            multiprocess_mode="livesum",
        )
        # The denominator of pool saturation (dashboards and alerts divide by it), so that no
        # query has to restate DB_POOL_SIZE. Set once per worker, never on the request path.
        self.pool_limit = Gauge(
            "todo_db_pool_connections_limit",
            "Connections the pool may hand out (DB_POOL_SIZE + DB_MAX_OVERFLOW)",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._pool_limit = pool_limit

    def watch_pool(self, engine: Engine) -> None:
        # Counted per connection record: SQLAlchemy also fires `checkin` for a connection that
        # failed to open and so was never checked out, which drove a plain inc/dec below zero
        # with every refused connection of a database outage.
        def checked_out(_dbapi: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
            if record.record_info is not None:
                record.record_info[_COUNTED] = True
            self.pool_in_use.inc()

        def checked_in(_dbapi: Any, record: ConnectionPoolEntry) -> None:
            if record.record_info is not None and record.record_info.pop(_COUNTED, False):
                self.pool_in_use.dec()

        event.listen(engine, "checkout", checked_out)
        event.listen(engine, "checkin", checked_in)
        # Here, in the worker that owns the pool (after the fork), so `livesum` counts it once
        # per live worker, as it does the connections in use.
        self.pool_limit.set(self._pool_limit)

    def count_task_changes(self, info: Info) -> None:
        if info.modified_handler.startswith(TASKS_PATH) and info.response is not None:
            action = _TASK_ACTIONS.get(
                (info.method, info.response.status_code, info.modified_handler)
            )
            if action is not None:
                self.task_changes.labels(action).inc()


# Marks a pool entry whose checkout was counted (record_info outlives a connection's invalidation).
_COUNTED = "todo_api.counted_in_use"

_TASK_ACTIONS = {
    ("POST", 201, TASKS_PATH): "created",
    ("PUT", 200, TASKS_PATH + "/{task_id}"): "updated",
    ("PATCH", 200, TASKS_PATH + "/{task_id}/complete"): "completed",
    ("DELETE", 204, TASKS_PATH + "/{task_id}"): "deleted",
}


def install_metrics(app: FastAPI, settings: Settings) -> AppMetrics:
    """HTTP metrics by route template and grouped status, our own metrics, and GET /metrics.

    Each app gets its own registry (the instrumentator records nothing for a second app on the
    default one). Under Gunicorn, PROMETHEUS_MULTIPROC_DIR makes /metrics sum all workers.
    """
    registry = CollectorRegistry()
    metrics = AppMetrics(registry, pool_limit=settings.db_pool_size + settings.db_max_overflow)
    instrumentator = Instrumentator(
        should_group_status_codes=True,
        should_ignore_untemplated=False,
        should_group_untemplated=True,
        excluded_handlers=_NOT_MEASURED_PATTERNS,
        registry=registry,
    )
    # The library's defaults minus its two body-size summaries: every sample is a locked write to
    # a shared file in multiprocess mode, and sizes answered no question worth that on each request.
    instrumentator.add(
        http_metrics.requests(registry=registry),
        http_metrics.latency(
            registry=registry, should_include_status=False, buckets=ROUTE_LATENCY_BUCKETS
        ),
        http_metrics.latency(
            metric_name="http_request_duration_highr_seconds",
            metric_doc="Latency of all requests, in fine buckets (no labels)",
            should_include_handler=False,
            should_include_method=False,
            should_include_status=False,
            buckets=ALL_LATENCY_BUCKETS,
            registry=registry,
        ),
        metrics.count_task_changes,
    )
    instrumentator.instrument(app)
    instrumentator.expose(
        app,
        include_in_schema=False,
        dependencies=[Depends(_metrics_guard(settings.metrics_token))],
    )
    return metrics


def _metrics_guard(token: str | None) -> Any:
    scheme = HTTPBearer(auto_error=False)

    async def guard(
        credentials: HTTPAuthorizationCredentials | None = Depends(scheme),  # noqa: B008
    ) -> None:
        if token is None:
            return
        given = credentials.credentials if credentials else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "Metrics require the METRICS_TOKEN bearer token",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return guard


# ---------------------------------------------------------------------------------------------
# Request ids and access logs

_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestContext:
    """Gives each request an id (a valid incoming X-Request-ID, or a new one), returns it as
    X-Request-ID with the security headers, and writes one access log line with the route
    template, status and duration. Every path is served with or without one trailing slash.
    Written as plain ASGI so that it costs one function call per request, not a task hop."""

    def __init__(self, app: ASGIApp, hsts_seconds: int = 0) -> None:
        self.app = app
        self.api_headers = security_headers(API_CSP, hsts_seconds)
        self.docs_headers = security_headers(DOCS_CSP, hsts_seconds)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path[-1:] == "/" and path != "/":
            # Rather than Starlette's redirect, which built an absolute URL from the Host
            # header and lost POST bodies. Before routing and metrics, so that the route
            # template (not the raw path) is what they see.
            scope["path"] = path = path[:-1]
        extra = self.docs_headers if path in DOCS_PAGES else self.api_headers
        request_id = _incoming_request_id(scope) or secrets.token_hex(16)
        reset = request_id_var.set(request_id)
        started = time.perf_counter()
        status_code = 500

        async def send_with_id(message: Message) -> None:
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
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "none"
            if template not in NOT_MEASURED and access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    "%s %s %s",
                    scope["method"],
                    template,
                    status_code,
                    extra={
                        "method": scope["method"],
                        "route": template,
                        "status": status_code,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    },
                )
            request_id_var.reset(reset)


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _VALID_REQUEST_ID.fullmatch(text) else None
    return None


def on_not_ready(metrics: AppMetrics) -> Any:
    def record(reason: str) -> None:
        metrics.readiness_failures.inc()
        logging.getLogger("todo_api").warning("not ready: %s", reason)

    return record
