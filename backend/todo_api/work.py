"""The request's unit of work, handed to every task route, and the HTTP-level wrapper that runs
a write under its If-Match and Idempotency-Key headers.

`Work` is the one dependency of a task route that touches the database: it verifies the bearer
token for the path's user (todo_api/auth.py) and makes the unit of work for that owner, which
the route's service calls use. `WorkRoute` closes it when the route returns, in the same
threadpool call (the unit of work takes its connection at its first statement, so a request
refused before its route runs holds none).
"""

import functools
import inspect
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, cast

from fastapi import Depends, HTTPException, Path, Request, Response, status
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.routing import APIRoute

from todo_api.auth import PathUser, path_user
from todo_api.conditional import PreconditionFailed, Version, etag, if_match
from todo_api.direct import direct_handler
from todo_api.idempotency import fingerprint, key_of
from todo_api.state import app_state
from todo_api.unit_of_work import UnitOfWork


class OwnersWork(PathUser):
    """The unit of work of the path's user, once their bearer token is verified (401, 403).

    Declared as the same bearer scheme as `scheme` (todo_api.auth.path_user), so the OpenAPI
    document does not change."""

    def __init__(self, scheme: PathUser) -> None:
        model = cast(HTTPBearerModel, scheme.model)
        super().__init__(
            auto_error=scheme.auto_error,
            bearerFormat=model.bearerFormat,
            scheme_name=scheme.scheme_name,
            description=model.description,
        )

    async def __call__(  # type: ignore[override]
        self,
        request: Request,
        user_id: Annotated[str, Path(description="The signed-in user's id (the token's sub)")],
    ) -> UnitOfWork:
        claims = await super().__call__(request, user_id)
        return UnitOfWork(app_state(request).engine, claims)


owners_work = OwnersWork(path_user)
Work = Annotated[UnitOfWork, Depends(owners_work)]
WORK_PARAMETER = "work"


class WorkRoute(APIRoute):
    """A route whose (plain `def`) endpoint closes the request's unit of work, its `work`
    parameter, when it returns: in the threadpool call that ran it, before the response is
    sent, so the connection never waits for a slow client. (A dependency with `yield` would do
    the same in a teardown step that costs every request more.) Its valid requests are solved
    by the direct handler (todo_api/direct.py), the others by FastAPI's."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        closing = getattr(endpoint, "closes_work", False)
        if not closing and WORK_PARAMETER in inspect.signature(endpoint).parameters:
            if inspect.iscoroutinefunction(endpoint):
                raise TypeError(f"{endpoint.__name__}: a route with a unit of work is plain def")
            endpoint = _closing_work(endpoint)
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        declared = super().get_route_handler()  # FastAPI's, for what the direct one cannot solve
        if not getattr(self.endpoint, "closes_work", False):
            return declared  # no unit of work (__init__ wrapped every endpoint that takes one)
        return direct_handler(self.dependant, declared)


def _closing_work(endpoint: Callable[..., Response]) -> Callable[..., Response]:
    @functools.wraps(endpoint)
    def run(*args: Any, **kwargs: Any) -> Response:
        try:
            return endpoint(*args, **kwargs)
        finally:
            kwargs[WORK_PARAMETER].close()

    run.closes_work = True  # type: ignore[attr-defined]
    return run


def expected_versions(request: Request) -> tuple[Version, ...] | None:
    """The versions the request's If-Match accepts; None: any."""
    return if_match(request.headers.get("if-match"))


def write(
    request: Request,
    work: UnitOfWork,
    *,
    body: Callable[[], object],
    action: Callable[[], Response],
    resource: str = "task",
) -> Response:
    """`action()`'s answer: once per Idempotency-Key (todo_api/idempotency.py, in one
    transaction with the kept answer), 412 with the current ETag when If-Match fails.

    `body()`: the accepted body, for the request's fingerprint (only built with a key).
    """

    def conditional() -> Response:
        try:
            return action()
        except PreconditionFailed as failed:
            current = failed.current
            raise HTTPException(
                status.HTTP_412_PRECONDITION_FAILED,
                f"The {resource} has changed since the ETag in If-Match",
                headers={"ETag": etag(current.created_at, current.version)},
            ) from None

    key = key_of(request.headers.get("idempotency-key"))
    if key is None:
        return conditional()
    request_fingerprint = fingerprint(
        request.method, request.url.path, request.headers.get("if-match"), body()
    )
    keys = app_state(request).idempotency_keys
    return keys.run(work, key=key, fingerprint=request_fingerprint, action=conditional)
