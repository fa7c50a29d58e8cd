"""The application's state, typed: what the lifespan builds once and every request reads.

The lifespan (main.py) yields it under one key of Starlette's lifespan state, which the server
copies into each request's scope; `app_state(request)` is the one place that reads it back.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from starlette.requests import HTTPConnection

from todo_api.config import Settings

if TYPE_CHECKING:
    from todo_api.auth import TokenVerifier
    from todo_api.idempotency import IdempotencyKeys

STATE_KEY = "todo_api"


@dataclass(frozen=True, slots=True)
class AppState:
    settings: Settings
    engine: Engine  # the request engine: pooled, autocommit, statements as a unit of work's owner
    probe_engine: Engine  # the readiness probe's: a connection of its own per probe
    verifier: "TokenVerifier"
    idempotency_keys: "IdempotencyKeys"
    on_auth_failure: Callable[[str], None]  # a refused token's reason, for the metrics
    on_not_ready: Callable[[str], None]  # a failed readiness probe's reason


def app_state(connection: HTTPConnection) -> AppState:
    state: AppState = connection.scope["state"][STATE_KEY]
    return state
