"""The floor's requests served the FastAPI way, to measure FastAPI's own cost per request.

The same token check, SQL, driver and JSON bytes as floor.py, but each route declared as the
product declares its routes (a plain `def` endpoint, run once in the threadpool, its owner from
one dependency, its path and query parameters validated by FastAPI) and no middleware: what
this costs above floor.py is FastAPI's request handling alone, a ceiling for any FastAPI app.
Not a floor the product is measured against; run it in the floor's place with
`BENCH_FLOOR_APP=floor_fastapi:app` (see README.md).
"""

from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import quote

import floor
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, StringConstraints

app = FastAPI(lifespan=floor.lifespan, openapi_url=None)


async def owner(request: Request, user_id: Annotated[str, Path()]) -> str:
    try:
        return floor._owner(request)
    except floor.Refused as refused:
        raise HTTPException(refused.status, str(refused)) from None


Owner = Annotated[str, Depends(owner)]
TaskId = Annotated[int, Path(ge=1, le=2**31 - 1)]


@app.get("/readyz")
def readyz() -> Response:
    floor._rows("SELECT 1, 2, 3, 4, 5, 6, 7", ())
    return floor._json({"status": "ok"})


@app.get("/api/{user_id}/tasks")
def list_tasks(
    request: Request,
    owner: Owner,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Response:
    rows = floor._rows(floor.LIST_SQL, (owner, limit + 1, offset))
    headers = {}
    if len(rows) > limit:
        rows = rows[:limit]
        headers["Link"] = f'<{request.url.include_query_params(offset=offset + limit)}>; rel="next"'
    return floor._json(rows, headers=headers)


class NewTask(BaseModel):
    title: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


@app.post("/api/{user_id}/tasks", status_code=201)
def create_task(owner: Owner, task: NewTask) -> Response:
    # The body validated by FastAPI, as the product's is; the token checked once, by `owner`.
    row = floor._create(owner, task.title)
    return floor._json(row, 201, {"Location": f"/api/{quote(owner, safe='')}/tasks/{row['id']}"})


@app.get("/api/{user_id}/tasks/{task_id}")
def get_task(owner: Owner, task_id: TaskId) -> Response:
    rows = floor._rows(floor.GET_SQL, (task_id, owner))
    return floor._json(rows[0]) if rows else floor._error(404, "Task not found")


@app.patch("/api/{user_id}/tasks/{task_id}/complete")
def toggle_task(owner: Owner, task_id: TaskId) -> Response:
    rows = floor._rows(floor.TOGGLE_SQL, (datetime.now(UTC), task_id, owner))
    return floor._json(rows[0]) if rows else floor._error(404, "Task not found")


@app.delete("/api/{user_id}/tasks/{task_id}")
def delete_task(owner: Owner, task_id: TaskId) -> Response:
    if floor._delete(owner, task_id):
        return Response(status_code=204)
    return floor._error(404, "Task not found")


FloorWorker = floor.FloorWorker
