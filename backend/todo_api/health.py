"""Liveness and readiness probes: unauthenticated and left out of the OpenAPI schema."""

import anyio
import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from todo_api.drain import draining

router = APIRouter(include_in_schema=False)

# Probes get their own thread so that a busy request pool cannot starve them, nor they it.
_probe_threads = anyio.CapacityLimiter(1)


# HEAD as well: load balancers probe with it (Uvicorn sends the headers without the body).
@router.api_route("/livez", methods=["GET", "HEAD"])
async def livez() -> dict[str, str]:
    """The process is up and its event loop answers; touches nothing else."""
    return {"status": "ok"}


@router.api_route("/readyz", methods=["GET", "HEAD"])
async def readyz(request: Request) -> JSONResponse:
    """The database answers within READINESS_TIMEOUT_SECONDS, else 503 with the reason."""
    if draining():  # SIGTERM: out of rotation before the listeners close (todo_api/drain.py)
        return JSONResponse({"status": "unavailable", "reason": "draining"}, status_code=503)
    engine: Engine = request.app.state.probe_engine
    timeout: float = request.app.state.settings.readiness_timeout_seconds
    reason = None
    with anyio.move_on_after(timeout) as scope:
        try:
            await anyio.to_thread.run_sync(
                _ping, engine, abandon_on_cancel=True, limiter=_probe_threads
            )
        except (SQLAlchemyError, OSError) as error:
            reason = f"database unreachable ({type(error).__name__})"
    if scope.cancelled_caught:
        reason = f"database did not answer within {timeout:g}s"
    if reason is not None:
        request.app.state.on_not_ready(reason)
        return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
    return JSONResponse({"status": "ok"})


def _ping(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
