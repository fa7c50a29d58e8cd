"""The FLOOR: the least a Python server can do for the same requests, to compare the product with.

Bare Starlette, served like the product (Gunicorn + a UvicornWorker, same worker count), that
verifies the same tokens with PyJWT (HS256 with the secret, EdDSA through the same JWKS, the same
claim checks), runs the same SQL with psycopg2 (one connection per thread, one threadpool hop per
request) and answers the same JSON bytes with orjson. It has none of the product's middleware,
validation models, metrics or logs: whatever the product costs above this line is its own.

Lives in the benchmark harness, never in the product. Configured by the product's variables:
DATABASE_URL, BETTER_AUTH_SECRET, BETTER_AUTH_URL. Run as:
    gunicorn -k floor.FloorWorker --pythonpath bench floor:app
"""

import json
import os
import threading
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import quote, urlencode

import anyio.to_thread
import jwt
import orjson
import psycopg2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from uvicorn_worker import UvicornWorker

# The product's defaults: one thread per pooled connection (DB_POOL_SIZE=5, no overflow).
THREADS = int(os.environ.get("FLOOR_THREADS", "5"))
COLUMNS = ("id", "user_id", "title", "description", "completed", "created_at", "updated_at")
# The product's statements, word for word; values are always bound parameters.
# It fetches limit + 1 rows to know whether more follow.
# The list reads the owner's index in order, never sorts (see LIST_STATEMENTS in the product's
# todo_api/tasks/service.py): the same setting, in the same query string.
LIST_SQL = (
    "SET LOCAL enable_sort = off;"
    "SELECT id, user_id, title, description, completed, created_at, updated_at FROM tasks "
    "WHERE user_id = %s ORDER BY created_at DESC, id DESC LIMIT %s OFFSET %s"
)
GET_SQL = (
    "SELECT id, user_id, title, description, completed, created_at, updated_at FROM tasks "
    "WHERE id = %s AND user_id = %s"
)
USER_SQL = (
    "INSERT INTO users (id, email, name, email_verified, image) VALUES (%s, NULL, '', false, NULL) "
    "ON CONFLICT DO NOTHING"
)
CREATE_SQL = (
    "INSERT INTO tasks (user_id, title, description, completed, created_at, updated_at) "
    "VALUES (%s, %s, NULL, false, %s, %s) "
    "RETURNING id, user_id, title, description, completed, created_at, updated_at"
)
TOGGLE_SQL = (
    "UPDATE tasks SET completed = NOT completed, updated_at = %s "
    "WHERE id = %s AND user_id = %s "
    "RETURNING id, user_id, title, description, completed, created_at, updated_at"
)
DELETE_SQL = "DELETE FROM tasks WHERE id = %s AND user_id = %s"


class FloorWorker(UvicornWorker):
    # As the product's worker: uvloop and httptools when installed, no Uvicorn access log.
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {"loop": "auto", "http": "auto", "access_log": False}


# ---------------------------------------------------------------------------------------------
# Database: one psycopg2 connection per worker thread, opened on first use.

_local = threading.local()


def _connection() -> Any:
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        # timezone=UTC: timestamps come back with a +00:00 offset, as the product renders them.
        conn = psycopg2.connect(os.environ["DATABASE_URL"], options="-c timezone=UTC")
        conn.autocommit = True  # one statement needs no BEGIN/COMMIT round trips
        _local.conn = conn
    return conn


def _rows(sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
    with _connection().cursor() as cur:
        cur.execute(sql, params)
        return [dict(zip(COLUMNS, row, strict=True)) for row in cur.fetchall()]


def _create(owner: str, title: str) -> dict[str, Any]:
    conn = _connection()
    now = datetime.now(UTC)
    with conn.cursor() as cur:
        # The product's two statements, in one transaction like its engine.begin().
        cur.execute("BEGIN")
        try:
            cur.execute(USER_SQL, (owner,))
            cur.execute(CREATE_SQL, (owner, title, now, now))
            row = cur.fetchone()
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
    return dict(zip(COLUMNS, row, strict=True))


def _delete(owner: str, task_id: int) -> bool:
    with _connection().cursor() as cur:
        cur.execute(DELETE_SQL, (task_id, owner))
        return bool(cur.rowcount == 1)


# ---------------------------------------------------------------------------------------------
# Tokens: the product's rules (algorithm pinned to its key type, exp and sub required).

SECRET = (os.environ.get("BETTER_AUTH_SECRET") or "").encode() or None
AUTH_URL = (os.environ.get("BETTER_AUTH_URL") or "").rstrip("/") or None
_jwks: dict[str, jwt.PyJWK] = {}


class Refused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


def _load_jwks() -> None:
    if AUTH_URL is None:
        return
    with urllib.request.urlopen(AUTH_URL + "/api/auth/jwks", timeout=5) as response:  # noqa: S310
        document = json.loads(response.read())
    _jwks.update({key.key_id: key for key in jwt.PyJWKSet.from_dict(document).keys if key.key_id})


def _owner(request: Request) -> str:
    """The path's user id when the bearer token is valid and belongs to it."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Refused(401, "Not authenticated")
    try:
        header = jwt.get_unverified_header(token)
        alg = header.get("alg")
        key: Any
        issuer = audience = None
        if alg == "HS256" and SECRET is not None:
            key = SECRET
        elif alg == "EdDSA" and header.get("kid") in _jwks:
            key, issuer, audience = _jwks[header["kid"]], AUTH_URL, AUTH_URL
        else:
            raise Refused(401, "Token algorithm is not accepted")
        claims = jwt.decode(
            token,
            key,
            algorithms=[alg],
            issuer=issuer,
            audience=audience,
            leeway=30,
            options={"require": ["exp", "sub"], "verify_aud": audience is not None},
        )
    except jwt.PyJWTError:
        raise Refused(401, "Token is invalid") from None
    user_id: str = request.path_params["user_id"]
    if claims["sub"] != user_id:
        raise Refused(403, "Token does not belong to this user")
    return user_id


# ---------------------------------------------------------------------------------------------
# Routes: the product's paths, statuses and bodies.


def _json(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


def _error(status: int, detail: str) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return _json({"detail": detail}, status, headers)


def _task_id(request: Request) -> int:
    task_id: int = request.path_params["task_id"]
    if not 1 <= task_id <= 2**31 - 1:
        raise Refused(422, "Invalid task id")
    return task_id


async def list_tasks(request: Request) -> Response:
    try:
        owner = _owner(request)
        limit = int(request.query_params.get("limit", "100"))
        offset = int(request.query_params.get("offset", "0"))
    except Refused as refused:
        return _error(refused.status, str(refused))
    except ValueError:
        return _error(422, "Invalid limit or offset")
    if not (1 <= limit <= 500 and offset >= 0):
        return _error(422, "Invalid limit or offset")
    rows = await anyio.to_thread.run_sync(_rows, LIST_SQL, (owner, limit + 1, offset))
    headers = {}
    if len(rows) > limit:
        rows = rows[:limit]
        query = urlencode({**request.query_params, "offset": offset + limit})
        base = f"{request.url.scheme}://{request.url.netloc}/api/{quote(owner, safe='')}/tasks"
        headers["Link"] = f'<{base}?{query}>; rel="next"'
    return _json(rows, headers=headers)


async def create_task(request: Request) -> Response:
    try:
        owner = _owner(request)
        body = orjson.loads(await request.body())
        title = body.get("title") if isinstance(body, dict) else None
        if not isinstance(title, str) or not 1 <= len(title := title.strip()) <= 200:
            raise Refused(422, "title must be 1 to 200 characters")
    except Refused as refused:
        return _error(refused.status, str(refused))
    except orjson.JSONDecodeError:
        return _error(422, "Body is not JSON")
    row = await anyio.to_thread.run_sync(_create, owner, title)
    location = f"/api/{quote(owner, safe='')}/tasks/{row['id']}"
    return _json(row, 201, {"Location": location})


async def get_task(request: Request) -> Response:
    try:
        owner, task_id = _owner(request), _task_id(request)
    except Refused as refused:
        return _error(refused.status, str(refused))
    rows = await anyio.to_thread.run_sync(_rows, GET_SQL, (task_id, owner))
    return _json(rows[0]) if rows else _error(404, "Task not found")


async def toggle_task(request: Request) -> Response:
    try:
        owner, task_id = _owner(request), _task_id(request)
    except Refused as refused:
        return _error(refused.status, str(refused))
    now = datetime.now(UTC)
    rows = await anyio.to_thread.run_sync(_rows, TOGGLE_SQL, (now, task_id, owner))
    return _json(rows[0]) if rows else _error(404, "Task not found")


async def delete_task(request: Request) -> Response:
    try:
        owner, task_id = _owner(request), _task_id(request)
    except Refused as refused:
        return _error(refused.status, str(refused))
    if await anyio.to_thread.run_sync(_delete, owner, task_id):
        return Response(status_code=204)
    return _error(404, "Task not found")


async def readyz(request: Request) -> Response:
    await anyio.to_thread.run_sync(_rows, "SELECT 1, 2, 3, 4, 5, 6, 7", ())
    return _json({"status": "ok"})


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS
    await anyio.to_thread.run_sync(_load_jwks)
    yield


app = Starlette(
    routes=[
        Route("/readyz", readyz),
        Route("/api/{user_id}/tasks", list_tasks, methods=["GET"]),
        Route("/api/{user_id}/tasks", create_task, methods=["POST"]),
        Route("/api/{user_id}/tasks/{task_id:int}", get_task, methods=["GET"]),
        Route("/api/{user_id}/tasks/{task_id:int}", delete_task, methods=["DELETE"]),
        Route("/api/{user_id}/tasks/{task_id:int}/complete", toggle_task, methods=["PATCH"]),
    ],
    lifespan=lifespan,
)
