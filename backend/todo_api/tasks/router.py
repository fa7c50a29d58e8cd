"""Thin HTTP handlers for /api/{user_id}/tasks: parse, call the service, shape the response.

Handlers are plain `def`: FastAPI runs each in the threadpool once, and all of a request's
database work happens inside that one call, on the request's unit of work (`Work`: the verified
owner's, see todo_api/work.py), which WorkRoute closes as soon as the handler returns.
"""

from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Body, HTTPException, Path, Query, Request, Response, status
from pydantic import BaseModel, BeforeValidator, Field

from todo_api.conditional import IF_MATCH_PARAMETER, IF_NONE_MATCH_PARAMETER, etag, none_match
from todo_api.http import JSONBytesResponse, error_responses
from todo_api.idempotency import KEY_PARAMETER
from todo_api.tasks import service
from todo_api.tasks.models import (
    CompletionSet,
    SortOrder,
    TaskCreate,
    TaskPublic,
    TaskSort,
    TaskStatus,
    TaskUpdate,
)
from todo_api.work import Work, WorkRoute, expected_versions, write

LIST_LIMIT_DEFAULT = 100
LIST_LIMIT_MAX = 500
INT32_MAX = 2**31 - 1

router = APIRouter(prefix="/api/{user_id}/tasks", tags=["tasks"], route_class=WorkRoute)


def _digits_only(value: object) -> object:
    # Pydantic would also read "1.0", "+1", " 1" and "1_0" (= 10) as integers.
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError("must be a whole number written in digits")
    return value


TaskId = Annotated[
    int, Path(ge=1, le=INT32_MAX, description="The task's id"), BeforeValidator(_digits_only)
]


def _tasks_url(request: Request, owner_id: str) -> str:
    # Relative (nothing taken from the Host header) and percent-encoded by hand: a user id may
    # hold any character, and headers are latin-1.
    return f"{request.scope.get('root_path', '')}/api/{quote(owner_id, safe='')}/tasks"


class ListQuery(BaseModel):
    """The list's query parameters, validated as one model: FastAPI solves each declared
    parameter on its own, at a cost per parameter on every request."""

    status: TaskStatus = "all"
    sort: TaskSort = "created"
    order: SortOrder | None = Field(None, description="Default: desc for dates, asc for title")
    limit: int = Field(LIST_LIMIT_DEFAULT, ge=1, le=LIST_LIMIT_MAX)
    offset: int = Field(0, ge=0, le=INT32_MAX)


ETAG_HEADER = {"ETag": {"description": "The task's strong ETag", "schema": {"type": "string"}}}


def _not_found() -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, "Task not found")


def _task(row: dict[str, Any] | None, status_code: int = 200, **headers: str) -> Response:
    if row is None:
        raise _not_found()
    # The version makes the ETag and stays out of the body.
    headers["ETag"] = etag(row["created_at"], row.pop("version"))
    return JSONBytesResponse(row, status_code=status_code, headers=headers)


def _responses(*codes: int, etag_on: int = 200) -> dict[int | str, dict[str, Any]]:
    return {etag_on: {"headers": ETAG_HEADER}, **error_responses(*codes)}


def _headers(*parameters: dict[str, Any]) -> dict[str, Any]:
    # Merged by FastAPI into the operation's own parameters.
    return {"parameters": list(parameters)}


@router.get(
    "",
    response_model=list[TaskPublic],
    responses=error_responses(401, 403, 422, 503),
    summary="List tasks",
)
def list_tasks(request: Request, work: Work, page: Annotated[ListQuery, Query()]) -> Response:
    """The user's tasks, one page at a time; a `Link: rel="next"` header points at the next page."""
    sort, limit, offset = page.sort, page.limit, page.offset
    rows, more = service.list_tasks(
        work,
        status=page.status,
        sort=sort,
        order=page.order or service.DEFAULT_ORDER[sort],
        limit=limit,
        offset=offset,
    )
    headers = {}
    if more:
        query = urlencode({**request.query_params, "offset": offset + limit})
        headers["Link"] = f'<{_tasks_url(request, work.owner_id)}?{query}>; rel="next"'
    return JSONBytesResponse(rows, headers=headers)


@router.post(
    "",
    response_model=TaskPublic,
    status_code=status.HTTP_201_CREATED,
    responses=_responses(401, 403, 409, 413, 422, 503, etag_on=201),
    openapi_extra=_headers(KEY_PARAMETER),
    summary="Create a task",
)
def create_task(request: Request, work: Work, task: TaskCreate) -> Response:
    """Create a task owned by the signed-in user; `Location` names the new task."""

    def create() -> Response:
        row = service.create_task(work, data=task)
        location = f"{_tasks_url(request, work.owner_id)}/{row['id']}"
        return _task(row, status.HTTP_201_CREATED, Location=location)

    return write(request, work, body=task.model_dump, action=create)


@router.get(
    "/{task_id}",
    response_model=TaskPublic,
    responses={
        **_responses(401, 403, 404, 422, 503),
        304: {"description": "If-None-Match named the current ETag", "headers": ETAG_HEADER},
    },
    openapi_extra=_headers(IF_NONE_MATCH_PARAMETER),
    summary="Get a task",
)
def get_task(request: Request, work: Work, task_id: TaskId) -> Response:
    """One of the user's tasks."""
    row = service.get_task(work, task_id=task_id)
    if_none_match = request.headers.get("if-none-match")
    if row is not None and if_none_match is not None:
        current = etag(row["created_at"], row["version"])
        if none_match(if_none_match, current):
            return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": current})
    return _task(row)


@router.put(
    "/{task_id}",
    response_model=TaskPublic,
    responses=_responses(401, 403, 404, 409, 412, 413, 422, 503),
    openapi_extra=_headers(IF_MATCH_PARAMETER, KEY_PARAMETER),
    summary="Update a task",
)
def update_task(request: Request, work: Work, task_id: TaskId, changes: TaskUpdate) -> Response:
    """Change any subset of title, description and completed; `description: null` clears it."""
    fields = changes.model_dump(exclude_unset=True)

    def update() -> Response:
        return _task(
            service.update_task(
                work, task_id=task_id, changes=fields, expected=expected_versions(request)
            )
        )

    return write(request, work, body=lambda: fields, action=update)


@router.delete(
    "/{task_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(401, 403, 404, 409, 412, 422, 503),
    openapi_extra=_headers(IF_MATCH_PARAMETER, KEY_PARAMETER),
    summary="Delete a task",
)
def delete_task(request: Request, work: Work, task_id: TaskId) -> Response:
    """Delete one of the user's tasks."""

    def delete() -> Response:
        if not service.delete_task(work, task_id=task_id, expected=expected_versions(request)):
            raise _not_found()
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    return write(request, work, body=lambda: None, action=delete)


@router.patch(
    "/{task_id}/complete",
    response_model=TaskPublic,
    responses=_responses(401, 403, 404, 409, 412, 413, 422, 503),
    openapi_extra=_headers(IF_MATCH_PARAMETER, KEY_PARAMETER),
    summary="Toggle or set completion",
)
def complete_task(
    request: Request,
    work: Work,
    task_id: TaskId,
    body: Annotated[CompletionSet | None, Body()] = None,
) -> Response:
    """Flip `completed`; with a body `{"completed": true|false}` set it instead."""
    completed = body.completed if body else None

    def complete() -> Response:
        return _task(
            service.set_completed(
                work, task_id=task_id, completed=completed, expected=expected_versions(request)
            )
        )

    return write(request, work, body=lambda: completed, action=complete)
