"""Retry test helpers: unique keys, a held lock, what the database really stored."""

import contextlib
import sqlite3
import uuid
from collections.abc import Iterator

import sqlalchemy as sa
from sqlalchemy.engine import make_url


def new_key() -> str:
    return str(uuid.uuid4())


def tasks_of(engine: sa.Engine, owner: str) -> list[dict[str, object]]:
    """What the database really holds for `owner` (the test engine's role skips row security)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT id, title, completed FROM tasks WHERE user_id = :u ORDER BY id"),
            {"u": owner},
        )
        return [dict(row._mapping) for row in rows]


def keys_of(engine: sa.Engine, owner: str) -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT key FROM idempotency_keys WHERE user_id = :u ORDER BY key"),
            {"u": owner},
        )
        return [row[0] for row in rows]


@contextlib.contextmanager
def writes_held(engine: sa.Engine, owner: str) -> Iterator[None]:
    """Make the owner's next task insert wait until the block ends.

    PostgreSQL: the owner's user row locked FOR UPDATE (an insert's foreign-key check needs a
    FOR KEY SHARE lock on it). SQLite: the database's write lock, taken with BEGIN IMMEDIATE.
    """
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1 FROM users WHERE id = :u FOR UPDATE"), {"u": owner})
            yield
            conn.rollback()
        return
    path = make_url(str(engine.url)).database
    assert path
    lock = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        lock.execute("BEGIN IMMEDIATE")
        yield
        lock.execute("ROLLBACK")
    finally:
        lock.close()
