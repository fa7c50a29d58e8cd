"""The application factory: settings -> a FastAPI app with its engine, verifier and routes."""

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline
from starlette.routing import Mount

from todo_api import health
from todo_api.auth import TokenVerifier, path_user
from todo_api.config import Settings, get_settings
from todo_api.db import create_db_engine
from todo_api.http import BodySizeLimit, CatchAll, install_error_handlers
from todo_api.migrate import migrate
from todo_api.observability import RequestContext, install_metrics, on_not_ready
from todo_api.tasks.idempotency import REPLAYED, IdempotencyKeys
from todo_api.tasks.router import router as tasks_router

DOCS_ASSETS = "/docs/assets"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.require_token_keys()
        if settings.migrate_on_start:
            await anyio.to_thread.run_sync(migrate, settings)
        engine = create_db_engine(settings)
        metrics.watch_pool(engine)
        # Readiness opens its own connection: a busy request pool must not look like a database
        # outage (every pod would leave the load balancer at once under load).
        app.state.probe_engine = create_db_engine(
            settings, pooled=False, probe_timeout=settings.readiness_timeout_seconds
        )
        # Each request takes one thread and one connection at a time, so as many threads as
        # connections: no request holds a thread while it waits for a connection.
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = settings.db_pool_size + settings.db_max_overflow
        app.state.engine = engine
        # Everything built so far lives as long as the process: keep the garbage collector from
        # walking it again on every full collection (shorter pauses, so a lower p99).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            engine.dispose()
            app.state.probe_engine.dispose()

    # FastAPIOffline: /docs and /redoc with Swagger UI and ReDoc served from its package, not a
    # CDN, so they work air-gapped and under a Content-Security-Policy of 'self'.
    app = FastAPIOffline(
        title="Todo Task API",
        version="0.1.0",
        summary="Per-user tasks for a Better Auth frontend",
        lifespan=lifespan,
        static_url=DOCS_ASSETS,
        # RequestContext serves every path with or without a trailing slash instead.
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.state.verifier = TokenVerifier(settings)
    app.state.idempotency_keys = IdempotencyKeys(
        ttl_seconds=settings.idempotency_ttl_seconds,
        in_progress_seconds=settings.idempotency_in_progress_seconds,
    )
    app.add_middleware(CatchAll)  # innermost: its 500 passes through metrics, CORS and ids
    metrics = install_metrics(app, settings)
    app.state.on_auth_failure = lambda reason: metrics.auth_failures.labels(reason).inc()
    app.state.on_not_ready = on_not_ready(metrics)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_body_bytes,
        # A request without valid credentials is answered before its body is waited for.
        credentials=(path_user, lambda request: path_user(request, request.path_params["user_id"])),
    )
    # Outside everything that answers with an error, so 401, 403, 404, 413 and 422 carry the
    # CORS headers too and a browser sees the real status.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        allow_headers=[
            "Authorization",
            "Content-Type",
            "X-Request-ID",
            "Idempotency-Key",
            "If-Match",
            "If-None-Match",
        ],
        expose_headers=["Location", "Link", "X-Request-ID", "ETag", REPLAYED],
        max_age=600,
    )
    # Outermost: every response gets its X-Request-ID and the security headers.
    app.add_middleware(RequestContext, hsts_seconds=settings.hsts_seconds)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(tasks_router)
    # fastapi-offline mounts its assets first; last, no API request pays for testing the mount.
    app.router.routes.sort(key=lambda route: isinstance(route, Mount))
    return app


def __getattr__(name: str) -> FastAPI:
    # `todo_api.main:app` for gunicorn and uvicorn, built on first access rather than at import,
    # so that importing this module never reads the environment.
    if name == "app":
        return create_app()
    raise AttributeError(name)
