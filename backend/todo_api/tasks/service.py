"""Every SQL statement about tasks. Each query is scoped to its owner in the WHERE clause.

Each request needs one statement (two or three on a user's very first write), run on an
autocommit connection: a single statement is atomic, and nothing waits for a COMMIT round trip.
"""

from collections.abc import Mapping
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Insert,
    Select,
    and_,
    delete,
    insert,
    not_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from todo_api.auth import Claims
from todo_api.db import utcnow
from todo_api.tasks.models import SortOrder, Task, TaskCreate, TaskSort, TaskStatus, User

TaskRow = dict[str, Any]

# The public task, selected as columns: no ORM objects are built on the request path.
_COLUMNS = (
    Task.__table__.c.id,  # type: ignore[attr-defined]
    Task.__table__.c.user_id,  # type: ignore[attr-defined]
    Task.__table__.c.title,  # type: ignore[attr-defined]
    Task.__table__.c.description,  # type: ignore[attr-defined]
    Task.__table__.c.completed,  # type: ignore[attr-defined]
    Task.__table__.c.created_at,  # type: ignore[attr-defined]
    Task.__table__.c.updated_at,  # type: ignore[attr-defined]
)
_tasks = Task.__table__  # type: ignore[attr-defined]
_users = User.__table__  # type: ignore[attr-defined]
_c = _tasks.c

_SORT_COLUMNS = {"created": _c.created_at, "updated": _c.updated_at, "title": _c.title}
DEFAULT_ORDER: dict[str, SortOrder] = {"created": "desc", "updated": "desc", "title": "asc"}


def _owned(owner_id: str, task_id: int) -> ColumnElement[bool]:
    return and_(_c.id == task_id, _c.user_id == owner_id)


def list_tasks(
    conn: Connection,
    *,
    owner_id: str,
    status: TaskStatus,
    sort: TaskSort,
    order: SortOrder,
    limit: int,
    offset: int,
) -> tuple[list[TaskRow], bool]:
    """One page of the owner's tasks, and whether more rows follow it."""
    stmt = list_statement(owner_id=owner_id, status=status, sort=sort, order=order)
    rows = conn.execute(stmt.limit(limit + 1).offset(offset)).mappings().all()
    return [dict(row) for row in rows[:limit]], len(rows) > limit


def list_statement(
    *, owner_id: str, status: TaskStatus, sort: TaskSort, order: SortOrder
) -> Select[Any]:
    key = _SORT_COLUMNS[sort]
    stmt = select(*_COLUMNS).where(_c.user_id == owner_id)
    if status != "all":
        stmt = stmt.where(_c.completed == (status == "completed"))
    # id breaks ties so that pages never repeat or skip a row.
    if order == "desc":
        return stmt.order_by(key.desc(), _c.id.desc())
    return stmt.order_by(key.asc(), _c.id.asc())


def get_task(conn: Connection, *, owner_id: str, task_id: int) -> TaskRow | None:
    row = conn.execute(select(*_COLUMNS).where(_owned(owner_id, task_id))).mappings().first()
    return dict(row) if row else None


def create_task(conn: Connection, *, owner: Claims, data: TaskCreate) -> TaskRow:
    """Insert the task; on the owner's first write, create their user row first."""
    now = utcnow()
    stmt = (
        insert(_tasks)
        .values(
            user_id=owner.sub,
            title=data.title,
            description=data.description,
            completed=data.completed,
            created_at=now,
            updated_at=now,
        )
        .returning(*_COLUMNS)
    )
    try:
        return dict(conn.execute(stmt).mappings().one())
    except IntegrityError:
        # The only constraint an insert can break is the owner's foreign key: no user row yet.
        # Trying first keeps every later write to a single statement.
        conn.rollback()
    ensure_user(conn, owner)
    return dict(conn.execute(stmt).mappings().one())


def update_task(
    conn: Connection, *, owner_id: str, task_id: int, changes: Mapping[str, Any]
) -> TaskRow | None:
    """Apply a partial update; an empty change set still moves nothing but is answered."""
    if not changes:
        return get_task(conn, owner_id=owner_id, task_id=task_id)
    return _update(conn, owner_id, task_id, {**changes, "updated_at": utcnow()})


def set_completed(
    conn: Connection, *, owner_id: str, task_id: int, completed: bool | None
) -> TaskRow | None:
    """Set completion, or flip it in the database when `completed` is None (no lost toggles)."""
    value = not_(_c.completed) if completed is None else completed
    return _update(conn, owner_id, task_id, {"completed": value, "updated_at": utcnow()})


def delete_task(conn: Connection, *, owner_id: str, task_id: int) -> bool:
    return conn.execute(delete(_tasks).where(_owned(owner_id, task_id))).rowcount == 1


def _update(
    conn: Connection, owner_id: str, task_id: int, values: Mapping[str, Any]
) -> TaskRow | None:
    stmt = update(_tasks).where(_owned(owner_id, task_id)).values(**values).returning(*_COLUMNS)
    row = conn.execute(stmt).mappings().first()
    return dict(row) if row else None


def ensure_user(conn: Connection, owner: Claims) -> None:
    """Create the owner's user row from the token's claims unless it exists (race-safe)."""
    values = {
        "id": owner.sub,
        "email": owner.email,
        "name": owner.name or "",
        "email_verified": owner.email_verified,
        "image": owner.image,
    }
    created = conn.execute(
        _insert_ignoring_conflicts(conn).values(**values).returning(_users.c.id)
    ).first()
    if created is None and owner.email is not None:
        # The email may belong to another user row (a changed address, a shared database):
        # the task still needs its owner, so try again without the email.
        conn.execute(_insert_ignoring_conflicts(conn).values(**{**values, "email": None}))


def _insert_ignoring_conflicts(conn: Connection) -> Insert:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(_users).on_conflict_do_nothing()  # type: ignore[no-any-return]
