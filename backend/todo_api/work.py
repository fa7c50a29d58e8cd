"""The request's unit of work, handed to every task route, and the HTTP-level wrapper that runs
a write under its If-Match and Idempotency-Key headers.

`Work` is the one dependency of a task route that touches the database: it verifies the bearer
token for the path's user (todo_api/auth.py) and makes the unit of work for that owner, which
the route's service calls use and which is closed as soon as the route returns.
"""

from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, Response, status

from todo_api.auth import PathUser
from todo_api.conditional import PreconditionFailed, Version, etag, if_match
from todo_api.idempotency import fingerprint, key_of
from todo_api.state import app_state
from todo_api.unit_of_work import UnitOfWork


class OwnersWork(PathUser):
    """The unit of work of the path's user, once their bearer token is verified (401, 403)."""

    async def __call__(  # type: ignore[override]
        self,
        request: Request,
        user_id: Annotated[str, Path(description="The signed-in user's id (the token's sub)")],
    ) -> AsyncIterator[UnitOfWork]:
        claims = await super().__call__(request, user_id)
        work = UnitOfWork(app_state(request).engine, claims)
        try:
            yield work
        finally:
            # Right after the route returns (scope="function"), before the response is sent:
            # the connection goes back to the pool without waiting for a slow client.
            work.close()


owners_work = OwnersWork(
    auto_error=False,
    bearerFormat="JWT",
    scheme_name="HTTPBearer",  # the name the OpenAPI document has always used
    description="A Better Auth JWT (EdDSA/ES256/RS256 via JWKS, or HS256 with the shared secret)",
)
Work = Annotated[UnitOfWork, Depends(owners_work, scope="function")]


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
