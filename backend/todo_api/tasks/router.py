"""Thin HTTP handlers for /api/{user_id}/tasks: parse, call the service, shape the response.

Handlers are plain `def`: FastAPI runs each in the threadpool once, and all of a request's
database work happens inside that one call.
"""

from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Body, HTTPException, Path, Query, Request, Response, status
from pydantic import BeforeValidator
from sqlalchemy import Engine

from todo_api.auth import CurrentUser
from todo_api.db import owner_connection
from todo_api.http import JSONBytesResponse, error_responses
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

LIST_LIMIT_DEFAULT = 100
LIST_LIMIT_MAX = 500
INT32_MAX = 2**31 - 1

router = APIRouter(prefix="/api/{user_id}/tasks", tags=["tasks"])


def _engine(request: Request) -> Engine:
    # Read from the app's state rather than injected as a dependency: FastAPI's fixed cost per
    # solved dependency is a measurable share of a request here (see bench/README.md).
    engine: Engine = request.app.state.engine
    return engine


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


def _not_found() -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, "Task not found")


def _task(row: dict[str, Any] | None, status_code: int = 200, **headers: str) -> Response:
    if row is None:
        raise _not_found()
    return JSONBytesResponse(row, status_code=status_code, headers=headers or None)


@router.get(
    "",
    response_model=list[TaskPublic],
    responses=error_responses(401, 403, 422, 503),
    summary="List tasks",
)
def list_tasks(
    request: Request,
    user: CurrentUser,
    status_: Annotated[TaskStatus, Query(alias="status")] = "all",
    sort: TaskSort = "created",
    order: Annotated[
        SortOrder | None, Query(description="Default: desc for dates, asc for title")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=LIST_LIMIT_MAX)] = LIST_LIMIT_DEFAULT,
    offset: Annotated[int, Query(ge=0, le=INT32_MAX)] = 0,
) -> Response:
    """The user's tasks, one page at a time; a `Link: rel="next"` header points at the next page."""
    with owner_connection(_engine(request), user.sub) as conn:
        rows, more = service.list_tasks(
            conn,
            owner_id=user.sub,
            status=status_,
            sort=sort,
            order=order or service.DEFAULT_ORDER[sort],
            limit=limit,
            offset=offset,
        )
    headers = {}
    if more:
        query = urlencode({**request.query_params, "offset": offset + limit})
        headers["Link"] = f'<{_tasks_url(request, user.sub)}?{query}>; rel="next"'
    return JSONBytesResponse(rows, headers=headers)


@router.post(
    "",
    response_model=TaskPublic,
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(401, 403, 413, 422, 503),
    summary="Create a task",
)
def create_task(request: Request, user: CurrentUser, task: TaskCreate) -> Response:
    """Create a task owned by the signed-in user; `Location` names the new task."""
    with owner_connection(_engine(request), user.sub) as conn:
        row = service.create_task(conn, owner=user, data=task)
    location = f"{_tasks_url(request, user.sub)}/{row['id']}"
    return _task(row, status.HTTP_201_CREATED, Location=location)


@router.get(
    "/{task_id}",
    response_model=TaskPublic,
    responses=error_responses(401, 403, 404, 422, 503),
    summary="Get a task",
)
def get_task(request: Request, user: CurrentUser, task_id: TaskId) -> Response:
    """One of the user's tasks."""
    with owner_connection(_engine(request), user.sub) as conn:
        return _task(service.get_task(conn, owner_id=user.sub, task_id=task_id))


@router.put(
    "/{task_id}",
    response_model=TaskPublic,
    responses=error_responses(401, 403, 404, 413, 422, 503),
    summary="Update a task",
)
def update_task(
    request: Request, user: CurrentUser, task_id: TaskId, changes: TaskUpdate
) -> Response:
    """Change any subset of title, description and completed; `description: null` clears it."""
    with owner_connection(_engine(request), user.sub) as conn:
        row = service.update_task(
            conn, owner_id=user.sub, task_id=task_id, changes=changes.model_dump(exclude_unset=True)
        )
    return _task(row)


@router.delete(
    "/{task_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(401, 403, 404, 422, 503),
    summary="Delete a task",
)
def delete_task(request: Request, user: CurrentUser, task_id: TaskId) -> Response:
    """Delete one of the user's tasks."""
    with owner_connection(_engine(request), user.sub) as conn:
        if not service.delete_task(conn, owner_id=user.sub, task_id=task_id):
            raise _not_found()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.patch(
    "/{task_id}/complete",
    response_model=TaskPublic,
    responses=error_responses(401, 403, 404, 413, 422, 503),
    summary="Toggle or set completion",
)
def complete_task(
    request: Request,
    user: CurrentUser,
    task_id: TaskId,
    body: Annotated[CompletionSet | None, Body()] = None,
) -> Response:
    """Flip `completed`; with a body `{"completed": true|false}` set it instead."""
    with owner_connection(_engine(request), user.sub) as conn:
        row = service.set_completed(
            conn, owner_id=user.sub, task_id=task_id, completed=body.completed if body else None
        )
    return _task(row)
