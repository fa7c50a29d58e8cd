"""Every SQL statement about tasks, run on the request's unit of work (todo_api/unit_of_work.py).

The owner comes from the unit of work alone: it scopes each query's WHERE clause here, and on
PostgreSQL the same owner reaches the row-level security policy with each statement (see
specs/security.md).

Each request needs one statement (three on a user's very first write), in autocommit: a single
statement is atomic, and nothing waits for a COMMIT round trip. An If-Match condition is part of
that statement's WHERE clause; only when it fails does a second statement read the current
version (for the 412's ETag), so a conditional write needs no transaction either. With an
Idempotency-Key the same statements run inside the unit of work's transaction
(todo_api/idempotency.py).
"""

from collections.abc import Mapping
from functools import cache
from typing import Any, get_args

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Insert,
    Integer,
    Select,
    Table,
    Text,
    Update,
    and_,
    bindparam,
    delete,
    exists,
    false,
    insert,
    not_,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from todo_api.conditional import PreconditionFailed, Version
from todo_api.db import UtcDateTime, utcnow
from todo_api.statements import IN_INDEX_ORDER, Prepared, Rows
from todo_api.tasks.models import SortOrder, Task, TaskCreate, TaskSort, TaskStatus, User
from todo_api.unit_of_work import UnitOfWork

TaskRow = dict[str, Any]

_tasks: Table = Task.__table__  # type: ignore[attr-defined]
_users: Table = User.__table__  # type: ignore[attr-defined]
_c = _tasks.c
# The public task, selected as columns (the table's, in order): no ORM objects on the request path.
_COLUMNS = tuple(column for column in _tasks.c if column.name != "version")
_KEYS = tuple(column.name for column in _COLUMNS)
# One task is selected with its version, which makes its ETag (popped before the body is sent).
_VERSIONED = (*_COLUMNS, _c.version)
_VERSIONED_KEYS = (*_KEYS, "version")
_OWNER_ID = bindparam("owner_id", type_=Text())
_TASK_ID = bindparam("task_id", type_=Integer())
_OWNED = and_(_c.id == _TASK_ID, _c.user_id == _OWNER_ID)
_NEXT_VERSION = _c.version + 1

_SORT_COLUMNS = {"created": _c.created_at, "updated": _c.updated_at, "title": _c.title}
DEFAULT_ORDER: dict[str, SortOrder] = {"created": "desc", "updated": "desc", "title": "asc"}


def _rows(result: Rows) -> list[TaskRow]:
    # Plain dicts by position: RowMapping -> dict costs more than the query on a 50-row page.
    return [dict(zip(_KEYS, row, strict=True)) for row in result]


def _task(result: Rows) -> TaskRow | None:
    row = result.first()
    return None if row is None else dict(zip(_VERSIONED_KEYS, row, strict=True))


def _matching(versions: tuple[Version, ...]) -> ColumnElement[bool]:
    # Built per request, on the If-Match path only; an empty list matches no row.
    return or_(
        false(),
        *(and_(_c.created_at == v.created_at, _c.version == v.version) for v in versions),
    )


def _list_statement(status: TaskStatus, sort: TaskSort, order: SortOrder) -> Select[Any]:
    key = _SORT_COLUMNS[sort]
    stmt = select(*_COLUMNS).where(_c.user_id == _OWNER_ID)
    if status != "all":
        stmt = stmt.where(_c.completed == (status == "completed"))
    # id breaks ties so that pages never repeat or skip a row.
    if order == "desc":
        stmt = stmt.order_by(key.desc(), _c.id.desc())
    else:
        stmt = stmt.order_by(key.asc(), _c.id.asc())
    return stmt.limit(bindparam("limit")).offset(bindparam("offset"))


# A page by creation time is read off the owner's index in order: limit + 1 rows, however many
# the owner has. Without IN_INDEX_ORDER, when the statistics expect no more than a page (a new
# user, or one whose tasks grew since the last ANALYZE), every page costs all of the owner's rows:
# in the benchmark's mixed scenario (creates between the lists) PostgreSQL's CPU per request was
# three times what it is with it. Only where an index gives the order.
_IN_INDEX_ORDER = {"created": IN_INDEX_ORDER, "updated": "", "title": ""}

# Every statement is built once, at import, with bound parameters: building a SQLAlchemy
# statement costs more CPU than PostgreSQL spends running it.
LIST_STATEMENTS = {
    (status, sort, order): Prepared(_list_statement(status, sort, order), _IN_INDEX_ORDER[sort])
    for status in get_args(TaskStatus)
    for sort in get_args(TaskSort)
    for order in get_args(SortOrder)
}
_GET = Prepared(select(*_VERSIONED).where(_OWNED))
# The insert finds no owner row on a user's first write, and then inserts nothing rather than fail
# on the foreign key: a failed statement would abort the transaction an Idempotency-Key runs in.
_NEW_TASK: dict[str, ColumnElement[Any]] = {
    "user_id": _OWNER_ID,
    "title": bindparam("title", type_=Text()),
    "description": bindparam("description", type_=Text()),
    "completed": bindparam("completed", type_=Boolean()),
    "created_at": bindparam("now", type_=UtcDateTime()),
    "updated_at": bindparam("now", type_=UtcDateTime()),
}
_INSERT = Prepared(
    insert(_tasks)
    .from_select(
        list(_NEW_TASK),
        select(*_NEW_TASK.values()).where(exists().where(_users.c.id == _OWNER_ID)),
    )
    .returning(*_VERSIONED)
)
_DELETE = Prepared(delete(_tasks).where(_OWNED))
_TOGGLE = Prepared(
    update(_tasks)
    .where(_OWNED)
    .values(completed=not_(_c.completed), updated_at=bindparam("now"), version=_NEXT_VERSION)
    .returning(*_VERSIONED)
)


def list_tasks(
    work: UnitOfWork,
    *,
    status: TaskStatus,
    sort: TaskSort,
    order: SortOrder,
    limit: int,
    offset: int,
) -> tuple[list[TaskRow], bool]:
    """One page of the owner's tasks, and whether more rows follow it."""
    stmt = LIST_STATEMENTS[status, sort, order]
    params = {"owner_id": work.owner_id, "limit": limit + 1, "offset": offset}
    rows = _rows(work.execute(stmt, params))
    return rows[:limit], len(rows) > limit


def get_task(work: UnitOfWork, *, task_id: int) -> TaskRow | None:
    """The task with its `version`, or None."""
    return _task(work.execute(_GET, {"owner_id": work.owner_id, "task_id": task_id}))


def create_task(work: UnitOfWork, *, data: TaskCreate) -> TaskRow:
    """Insert the task; on the owner's first write, create their user row first."""
    values = {
        "owner_id": work.owner_id,
        "title": data.title,
        "description": data.description,
        "completed": data.completed,
        "now": utcnow(),
    }
    row = _task(work.execute(_INSERT, values))
    if row is None:
        # No user row yet. Trying first keeps every later write to a single statement.
        ensure_user(work)
        row = _task(work.execute(_INSERT, values))
    assert row is not None  # the owner's row exists now (users are never deleted here)
    return row


def update_task(
    work: UnitOfWork,
    *,
    task_id: int,
    changes: Mapping[str, Any],
    expected: tuple[Version, ...] | None = None,
) -> TaskRow | None:
    """Apply a partial update; an empty change set changes nothing but is answered.

    `expected`: the versions If-Match allows (None: any); PreconditionFailed otherwise.
    """
    if not changes:
        row = get_task(work, task_id=task_id)
        if row is not None and expected is not None and _version(row) not in expected:
            raise PreconditionFailed(_version(row))
        return row
    stmt = _update_statement(frozenset(changes))
    params = {f"new_{name}": value for name, value in changes.items()}
    params.update(owner_id=work.owner_id, task_id=task_id, now=utcnow())
    return _written(work, stmt, params, expected)


@cache
def _update_statement(fields: frozenset[str]) -> Prepared[Update]:
    # One statement per set of changed fields (at most seven), built on first use. The bound
    # names differ from the column names, which SQLAlchemy keeps for its own SET parameters.
    values: dict[str, Any] = {name: bindparam(f"new_{name}") for name in fields}
    return Prepared(
        update(_tasks)
        .where(_OWNED)
        .values(**values, updated_at=bindparam("now"), version=_NEXT_VERSION)
        .returning(*_VERSIONED)
    )


def set_completed(
    work: UnitOfWork,
    *,
    task_id: int,
    completed: bool | None,
    expected: tuple[Version, ...] | None = None,
) -> TaskRow | None:
    """Set completion, or flip it in the database when `completed` is None (no lost toggles)."""
    params: dict[str, Any] = {"owner_id": work.owner_id, "task_id": task_id, "now": utcnow()}
    if completed is None:
        return _written(work, _TOGGLE, params, expected)
    stmt = _update_statement(frozenset({"completed"}))
    return _written(work, stmt, {**params, "new_completed": completed}, expected)


def delete_task(
    work: UnitOfWork, *, task_id: int, expected: tuple[Version, ...] | None = None
) -> bool:
    """Whether the task was there (and deleted); PreconditionFailed when If-Match failed."""
    params = {"owner_id": work.owner_id, "task_id": task_id}
    stmt = _DELETE if expected is None else _DELETE.statement.where(_matching(expected))
    if work.execute(stmt, params).rowcount == 1:
        return True
    _raise_if_it_exists(work, task_id, expected)
    return False


def _written(
    work: UnitOfWork,
    prepared: Prepared[Update],
    params: dict[str, Any],
    expected: tuple[Version, ...] | None,
) -> TaskRow | None:
    # The If-Match condition is part of the UPDATE's WHERE clause: checked and written at once.
    stmt: Prepared[Update] | Update = prepared
    if expected is not None:
        stmt = prepared.statement.where(_matching(expected))
    row = _task(work.execute(stmt, params))
    if row is None:
        _raise_if_it_exists(work, params["task_id"], expected)
    return row


def _raise_if_it_exists(
    work: UnitOfWork, task_id: int, expected: tuple[Version, ...] | None
) -> None:
    # Nothing was written: a 412 (with the current ETag) if the task exists, else a 404.
    if expected is not None:
        current = get_task(work, task_id=task_id)
        if current is not None:
            raise PreconditionFailed(_version(current))


def _version(row: TaskRow) -> Version:
    return Version(row["created_at"], row["version"])


def ensure_user(work: UnitOfWork) -> None:
    """Create the owner's user row from the token's claims unless it exists (race-safe)."""
    owner = work.owner
    values = {
        "id": owner.sub,
        "email": owner.email,
        "name": owner.name or "",
        "email_verified": owner.email_verified,
        "image": owner.image,
    }
    created = work.execute(
        _insert_ignoring_conflicts(work).values(**values).returning(_users.c.id)
    ).first()
    if created is None and owner.email is not None:
        # The email may belong to another user row (a changed address, a shared database):
        # the task still needs its owner, so try again without the email.
        work.execute(_insert_ignoring_conflicts(work).values(**{**values, "email": None}))


def _insert_ignoring_conflicts(work: UnitOfWork) -> Insert:
    dialect = postgresql if work.dialect_name == "postgresql" else sqlite
    return dialect.insert(_users).on_conflict_do_nothing()  # type: ignore[no-any-return]
