"""The `idempotency_keys` table and every statement on it (todo_api/idempotency.py runs them).

Built once, at import, as prepared statements of the unit of work (todo_api/unit_of_work.py).
"""

from datetime import datetime
from typing import Any

from sqlalchemy import (
    Column,
    Delete,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    Select,
    String,
    Table,
    Text,
    bindparam,
    delete,
    select,
    tuple_,
)
from sqlmodel import Field, SQLModel

from todo_api.db import UtcDateTime
from todo_api.statements import IN_INDEX_ORDER, Prepared

IDEMPOTENCY_KEY_MAX = 255


class IdempotencyKey(SQLModel, table=True):
    """A request's Idempotency-Key and, once it has finished, the answer it got."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        PrimaryKeyConstraint("user_id", "key"),
        Index("ix_idempotency_keys_expires_at", "expires_at"),
    )

    # No foreign key to users: a user's first create claims its key before the user row exists.
    user_id: str = Field(sa_column=Column(Text, nullable=False))
    key: str = Field(sa_column=Column(String(IDEMPOTENCY_KEY_MAX), nullable=False))
    fingerprint: str = Field(sa_column=Column(String(64), nullable=False))  # SHA-256, hex
    # Earlier versions' claim token (they compare it); written as "" now, dropped in a later
    # release once no version that reads it runs.
    claim: str = Field(sa_column=Column(String(32), nullable=False))
    # None: claimed by an earlier version whose request is still running (or died).
    status_code: int | None = Field(default=None, sa_column=Column(Integer))
    response_headers: str | None = Field(default=None, sa_column=Column(Text))  # a JSON object
    response_body: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    created_at: datetime = Field(sa_column=Column(UtcDateTime, nullable=False))
    expires_at: datetime = Field(sa_column=Column(UtcDateTime, nullable=False))


# Every PURGE_EVERY-th keyed write of a worker, once committed, deletes up to PURGE_LIMIT expired
# keys: 8 per write on average, so that a backlog (from a burst, or a pause in keyed writes) is
# worked off by the writes that follow; a small batch, so no request pays for a large one. Not
# with every write: planning the purge cost PostgreSQL more than the claim itself (0.09 ms
# against 0.015). After the COMMIT, in a statement of its own: inside the keyed transaction its
# row locks on anyone's expired keys would make a user reusing one of them wait.
PURGE_EVERY = 8
PURGE_LIMIT = 8 * PURGE_EVERY

_keys: Table = IdempotencyKey.__table__  # type: ignore[attr-defined]
_k = _keys.c
# Bound names differ from the columns' (SQLAlchemy keeps those for its own VALUES and SET).
_THIS_KEY = (_k.user_id == bindparam("owner_id")) & (_k.key == bindparam("idempotency_key"))


# ORDER BY: read off the expires_at index from its oldest entry, stopping at the first live key.
# Without it the planner may scan the whole table for the few rows it deletes.
EXPIRED = (
    select(_k.user_id, _k.key)
    .where(_k.expires_at < bindparam("now"))
    .order_by(_k.expires_at)
    .limit(PURGE_LIMIT)
)


def _purge(expired: Select[Any], setting: str = "") -> Prepared[Delete]:
    where = tuple_(_k.user_id, _k.key).in_(expired.scalar_subquery())
    return Prepared(delete(_keys).where(where), setting)


PURGE = {
    # SKIP LOCKED: purges running at the same moment delete different rows, none waits. In the
    # expiry index's order: with statistics taken on a smaller table (a new deployment's,
    # growing), the planner would read every key and sort them to find the few expired ones.
    "postgresql": _purge(EXPIRED.with_for_update(skip_locked=True), IN_INDEX_ORDER),
    "sqlite": _purge(EXPIRED),  # no row locks: its writers take turns
}
# A new key: ours (UnitOfWork.claim). A key that exists fails it (a unique violation), and is read
# (a replay takes no lock on it), then taken over only if it has expired (TAKE_OVER).
CLAIM = Prepared(_keys.insert())
TAKE_OVER = Prepared(
    _keys.update()
    .where(_THIS_KEY & (_k.expires_at <= bindparam("now")))
    .values(
        fingerprint=bindparam("new_fingerprint"),
        claim="",
        status_code=None,
        response_headers=None,
        response_body=None,
        created_at=bindparam("now"),
        expires_at=bindparam("kept_until"),
    )
    .returning(_k.claim)
)
KEPT = Prepared(
    select(
        _k.fingerprint, _k.status_code, _k.response_headers, _k.response_body, _k.expires_at
    ).where(_THIS_KEY)
)
# Only the answer: the key's columns and `expires_at` (indexed) stay as claimed, so PostgreSQL
# can make it a HOT update (the new row version on the same page, no new index entries).
STORE = Prepared(
    _keys.update()
    .where(_THIS_KEY)
    .values(
        status_code=bindparam("new_status_code"),
        response_headers=bindparam("new_response_headers"),
        response_body=bindparam("new_response_body"),
    )
)
