"""Metrics (Prometheus, multiprocess-aware): the HTTP ones, ours, and GET /metrics."""

import hmac
import logging
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_fastapi_instrumentator import Instrumentator
from sqlalchemy import Engine, event
from sqlalchemy.pool import ConnectionPoolEntry

from todo_api.config import Settings

NOT_MEASURED = frozenset({"/metrics", "/livez", "/readyz"})
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

# ---------------------------------------------------------------------------------------------
# Metrics


class AppMetrics:
    """Our own metrics, beside the HTTP ones. No label ever holds a user id."""

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


# Marks a pool entry whose checkout was counted (record_info outlives a connection's invalidation).
_COUNTED = "todo_api.counted_in_use"

_TASK_ACTIONS = {
    ("POST", TASKS_PATH, 201): "created",
    ("PUT", TASKS_PATH + "/{task_id}", 200): "updated",
    ("PATCH", TASKS_PATH + "/{task_id}/complete", 200): "completed",
    ("DELETE", TASKS_PATH + "/{task_id}", 204): "deleted",
}


class HttpMetrics:
    """The HTTP metrics, by route template, method and grouped status, with the names, labels
    and help texts prometheus-fastapi-instrumentator gives them (the dashboards, alerts and
    rule tests read these), and the task changes.

    Recorded by the request layer (todo_api/edge.py) from the route Starlette already matched,
    rather than by the instrumentator's middleware, which matched every request's route a
    second time and looked up each metric's labelled child on every request: about 7% of a
    worker's CPU on a GET. Here each combination's children are looked up once (templates,
    methods and five status groups: a bounded set) and kept.
    """

    def __init__(self, registry: CollectorRegistry, task_changes: Counter) -> None:
        self.requests = Counter(
            "http_requests_total",
            "Total number of requests by method, status and handler.",
            ["handler", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Duration of HTTP requests in seconds",
            ["handler", "method"],
            buckets=ROUTE_LATENCY_BUCKETS,
            registry=registry,
        )
        self.latency_all = Histogram(
            "http_request_duration_highr_seconds",
            "Latency of all requests, in fine buckets (no labels)",
            buckets=ALL_LATENCY_BUCKETS,
            registry=registry,
        )
        self.task_changes = task_changes
        self._children: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}

    def record(self, method: str, template: str, status_code: int, seconds: float) -> None:
        key = (method, template, status_code)
        children = self._children.get(key)
        if children is None:
            action = _TASK_ACTIONS.get(key)
            children = self._children[key] = (
                self.requests.labels(template, method, f"{str(status_code)[0]}xx"),
                self.latency.labels(template, method),
                None if action is None else self.task_changes.labels(action),
            )
        requests, latency, changes = children
        requests.inc()
        latency.observe(seconds)
        self.latency_all.observe(seconds)
        if changes is not None:
            changes.inc()


def install_metrics(app: FastAPI, settings: Settings) -> tuple[AppMetrics, HttpMetrics]:
    """Our metrics and the HTTP ones, and GET /metrics (the instrumentator's exposition).

    Each app gets its own registry, so that two apps in one process (the tests) never share a
    series. Under Gunicorn, PROMETHEUS_MULTIPROC_DIR makes /metrics sum all workers.
    """
    registry = CollectorRegistry()
    metrics = AppMetrics(registry, pool_limit=settings.db_pool_size + settings.db_max_overflow)
    Instrumentator(registry=registry).expose(
        app,
        include_in_schema=False,
        dependencies=[Depends(_metrics_guard(settings.metrics_token))],
    )
    return metrics, HttpMetrics(registry, metrics.task_changes)


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


def on_not_ready(metrics: AppMetrics) -> Any:
    def record(reason: str) -> None:
        metrics.readiness_failures.inc()
        logging.getLogger("todo_api").warning("not ready: %s", reason)

    return record
