"""The application factory: settings -> a FastAPI app with its engine, verifier and routes."""

import gc
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from starlette.routing import Mount

from todo_api import health
from todo_api.auth import TokenVerifier, path_user
from todo_api.config import Settings, get_settings
from todo_api.db import create_db_engine
from todo_api.edge import Edge
from todo_api.http import install_error_handlers
from todo_api.idempotency import REPLAYED, IdempotencyKeys
from todo_api.migrate import migrate
from todo_api.observability import install_metrics, on_not_ready
from todo_api.state import STATE_KEY, AppState
from todo_api.tasks.router import router as tasks_router
from todo_api.work import owners_work

DOCS_ASSETS = "/docs/assets"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    verifier = TokenVerifier(settings)
    idempotency_keys = IdempotencyKeys(ttl_seconds=settings.idempotency_ttl_seconds)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[Mapping[str, Any]]:
        settings.require_token_keys()
        if settings.migrate_on_start:
            await anyio.to_thread.run_sync(migrate, settings)
        engine = create_db_engine(settings)
        metrics.watch_pool(engine)
        # Each request takes one thread and one connection at a time, so as many threads as
        # connections: no request holds a thread while it waits for a connection.
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = settings.db_pool_size + settings.db_max_overflow
        state = AppState(
            settings=settings,
            engine=engine,
            # Readiness opens its own connection: a busy request pool must not look like a
            # database outage (every pod would leave the load balancer at once under load).
            probe_engine=create_db_engine(
                settings, pooled=False, probe_timeout=settings.readiness_timeout_seconds
            ),
            verifier=verifier,
            idempotency_keys=idempotency_keys,
            on_auth_failure=lambda reason: metrics.auth_failures.labels(reason).inc(),
            on_not_ready=on_not_ready(metrics),
        )
        # Everything built so far lives as long as the process: keep the garbage collector from
        # walking it again on every full collection (shorter pauses, so a lower p99).
        gc.collect()
        gc.freeze()
        try:
            yield {STATE_KEY: state}
        finally:
            engine.dispose()
            state.probe_engine.dispose()

    # FastAPIOffline: /docs and /redoc with Swagger UI and ReDoc served from its package, not a
    # CDN, so they work air-gapped and under a Content-Security-Policy of 'self'.
    app = FastAPIOffline(
        title="Todo Task API",
        version="0.1.0",
        summary="Per-user tasks for a Better Auth frontend",
        lifespan=lifespan,
        static_url=DOCS_ASSETS,
        # The request layer serves every path with or without a trailing slash instead.
        redirect_slashes=False,
        # FastAPI's native OpenTelemetry, off: this service's metrics are Prometheus's
        # (/metrics) and its logs JSON lines. Left on, it asked OpenTelemetry's global
        # providers on every request whether anyone had configured them (3 us a request,
        # measured; 0.1 us off), to do nothing when, as here, nobody had.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    metrics, http_metrics = install_metrics(app, settings)
    # The one request layer (todo_api/edge.py): ids, security headers, CORS, body limits, the
    # catch-all 500, HTTP metrics and the access log.
    app.add_middleware(
        Edge,
        metrics=http_metrics,
        # Every error a route answers with (401, 403, 404, 413, 422) carries the CORS headers
        # too, so a browser sees the real status.
        cors={
            "allow_origins": settings.cors_origins,
            "allow_methods": ["GET", "POST", "PUT", "PATCH", "DELETE"],
            "allow_headers": [
                "Authorization",
                "Content-Type",
                "X-Request-ID",
                "Idempotency-Key",
                "If-Match",
                "If-None-Match",
            ],
            "expose_headers": ["Location", "Link", "X-Request-ID", "ETag", REPLAYED],
            "max_age": 600,
        },
        max_body_bytes=settings.max_body_bytes,
        # A request without valid credentials is answered before its body is waited for.
        # (The routes' dependency is the unit of work of the token's user; the check is the
        # token check it starts with.)
        credentials=(
            owners_work,
            lambda request: path_user(request, request.path_params["user_id"]),
        ),
        hsts_seconds=settings.hsts_seconds,
    )
    install_error_handlers(app)
    app.include_router(health.router)
    # The task routes on the app's own router, first, rather than through include_router:
    # FastAPI 0.16x serves an included router's routes through a layer that matches each
    # request's route twice (24 us a request, against 5 this way, measured). The routes carry
    # their prefix, tags and route class already: the OpenAPI document is the same (tested).
    app.router.routes[:0] = tasks_router.routes
    # fastapi-offline mounts its assets first; last, no API request pays for testing the mount.
    app.router.routes.sort(key=lambda route: isinstance(route, Mount))
    return app


def __getattr__(name: str) -> FastAPI:
    # `todo_api.main:app` for gunicorn and uvicorn, built on first access rather than at import,
    # so that importing this module never reads the environment.
    if name == "app":
        return create_app()
    raise AttributeError(name)
