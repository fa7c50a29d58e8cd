"""The Idempotency-Key header (IETF httpapi draft): a retried write is answered, not redone.

A wrapper around any write, at the HTTP level: it sees the request's method, path, body and
answer, never what the write does. Per user and key, the table `idempotency_keys` holds the first
request's fingerprint and, once it has finished, its answer (status, the headers that matter,
body). On the request's unit of work (todo_api/unit_of_work.py), through a transaction-mode
pooler (no session state, no advisory locks):

1. Claim the key, in autocommit (so that a duplicate sees the claim at once): one
   `INSERT ... ON CONFLICT DO UPDATE ... WHERE expires_at <= now RETURNING`. A new key, or an
   expired one, is ours (in progress until `now + in_progress_seconds`). Otherwise the row says
   what to answer: its kept response (replayed), 409 while the first request is still running,
   422 when the key came with a different request.
2. Do the work and store the answer in ONE transaction of the unit of work, the store
   conditional on still holding the claim. A crash anywhere before the COMMIT leaves neither the
   change nor the answer, only the claim, which expires after `in_progress_seconds`: a retry then
   does the work, once. If the claim expired under a slow request and a retry took it over, the
   slow one rolls back (409).

Expired rows are deleted by the claims themselves, a few at a time (no cron job, no batch on any
one request): each claim also deletes up to `PURGE_PER_CLAIM` expired keys of anyone's, in the
same statement on PostgreSQL (skipping rows another claim is deleting). Each keyed write adds one
row and removes up to that many expired ones, so the purge keeps up with any sustained rate of
keyed writes and works off a backlog at that multiple of it. An expired key is also simply taken
over by step 1.

Hand-written: the Python packages for this header are framework middlewares that keep answers in
Redis or in memory, neither of which fits one database reached through a pooler.
"""

import contextlib
import hashlib
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from fastapi import HTTPException, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy import (
    Column,
    Index,
    Insert,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    bindparam,
    delete,
    select,
    tuple_,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Field, SQLModel

from todo_api.db import UtcDateTime, utcnow
from todo_api.unit_of_work import Prepared, UnitOfWork

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
    claim: str = Field(sa_column=Column(String(32), nullable=False))  # the holder's random token
    status_code: int | None = Field(default=None, sa_column=Column(Integer))  # None: in progress
    response_headers: str | None = Field(default=None, sa_column=Column(Text))  # a JSON object
    response_body: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    created_at: datetime = Field(sa_column=Column(UtcDateTime, nullable=False))
    expires_at: datetime = Field(sa_column=Column(UtcDateTime, nullable=False))


REPLAYED = "Idempotent-Replayed"
# Visible ASCII; HTTP itself drops the whitespace around a header value.
KEY_PATTERN = rf"^[ \t]*[!-~]{{1,{IDEMPOTENCY_KEY_MAX}}}[ \t]*$"
_KEY = re.compile(KEY_PATTERN)
KEY_PARAMETER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "pattern": KEY_PATTERN},
    "description": (
        "1-255 visible ASCII characters (a UUID, say), new for each change. A retry with the "
        f"same key and the same request gets the first answer again (with `{REPLAYED}: true`) "
        "without the change being made twice; see specs/api.md."
    ),
}
# What a replay repeats besides status and body (the rest is per response: ids, CORS, ...).
KEPT_HEADERS = ("content-type", "location", "etag")
# Expired keys a claim deletes at most. Above 1 so that a backlog (from a burst, or a pause in
# keyed writes) is worked off by the writes that follow; small, so no request pays for a batch.
PURGE_PER_CLAIM = 8

_keys: Table = IdempotencyKey.__table__  # type: ignore[attr-defined]
_k = _keys.c
# Bound names differ from the columns' (SQLAlchemy keeps those for its own VALUES and SET).
_THIS_KEY = (_k.user_id == bindparam("owner_id")) & (_k.key == bindparam("idempotency_key"))


# ORDER BY: read off the expires_at index from its oldest entry, stopping at the first live key.
# Without it the planner may scan the whole table for 8 rows on every keyed write.
_EXPIRED = (
    select(_k.user_id, _k.key)
    .where(_k.expires_at < bindparam("now"), ~_THIS_KEY)  # never the key being claimed
    .order_by(_k.expires_at)
    .limit(PURGE_PER_CLAIM)
)
# SQLite: a statement of its own (it has no DELETE in a WITH clause, nor row locks).
_PURGE = Prepared(delete(_keys).where(tuple_(_k.user_id, _k.key).in_(_EXPIRED.scalar_subquery())))


def _claim_statement(dialect: Any) -> Insert:
    stmt = dialect.insert(_keys)
    if dialect is postgresql:
        # The purge rides along with the claim: no round trip of its own. SKIP LOCKED: claims
        # running at the same moment delete different rows, and none waits for another.
        expired = _EXPIRED.with_for_update(skip_locked=True).scalar_subquery()
        purge = delete(_keys).where(tuple_(_k.user_id, _k.key).in_(expired)).cte("purged")
        stmt = stmt.add_cte(purge)
    fresh = {name: stmt.excluded[name] for name in ("fingerprint", "claim", "created_at")}
    return stmt.on_conflict_do_update(  # type: ignore[no-any-return]
        index_elements=[_k.user_id, _k.key],
        set_={
            **fresh,
            "expires_at": stmt.excluded.expires_at,
            "status_code": None,
            "response_headers": None,
            "response_body": None,
        },
        where=_k.expires_at <= bindparam("now"),
    ).returning(_k.claim)


_CLAIM = {
    "postgresql": Prepared(_claim_statement(postgresql)),
    "sqlite": Prepared(_claim_statement(sqlite)),
}
_KEPT = Prepared(
    select(_k.fingerprint, _k.status_code, _k.response_headers, _k.response_body).where(_THIS_KEY)
)
_STORE = Prepared(
    _keys.update()
    .where(_THIS_KEY & (_k.claim == bindparam("held")))
    .values(
        status_code=bindparam("new_status_code"),
        response_headers=bindparam("new_response_headers"),
        response_body=bindparam("new_response_body"),
        expires_at=bindparam("kept_until"),
    )
)
_RELEASE = Prepared(
    delete(_keys).where(_THIS_KEY & (_k.claim == bindparam("held")) & _k.status_code.is_(None))
)


def key_of(value: str | None) -> str | None:
    """The Idempotency-Key header's key, None without one; a malformed key is a 422.

    Read by hand rather than as a FastAPI header parameter: each declared parameter costs every
    request about 12 us to solve (measured), with the header or without it.
    """
    if value is None:
        return None
    if _KEY.fullmatch(value) is None:
        raise RequestValidationError(
            [
                {
                    "type": "string_pattern_mismatch",
                    "loc": ("header", "Idempotency-Key"),
                    "msg": f"String should match pattern '{KEY_PATTERN}'",
                    "input": value,
                    "ctx": {"pattern": KEY_PATTERN},
                }
            ]
        )
    return value.strip(" \t")


def fingerprint(method: str, path: str, if_match: str | None, body: object) -> str:
    """SHA-256 of what makes two requests "the same": method, path, If-Match and the accepted
    body (as validated, keys sorted: JSON spacing and ignored fields make no difference)."""
    canonical = orjson.dumps(
        [method, path.rstrip("/"), if_match, body], option=orjson.OPT_SORT_KEYS
    )
    return hashlib.sha256(canonical).hexdigest()


@dataclass(frozen=True, slots=True)
class _Kept:
    fingerprint: str
    status_code: int | None
    headers: str | None
    body: bytes | None


class IdempotencyKeys:
    """Runs writes under an Idempotency-Key (one per app)."""

    def __init__(self, *, ttl_seconds: int, in_progress_seconds: int) -> None:
        self.ttl = timedelta(seconds=ttl_seconds)
        self.in_progress = timedelta(seconds=in_progress_seconds)

    def run(
        self,
        work: UnitOfWork,
        *,
        key: str,
        fingerprint: str,
        action: Callable[[], Response],
    ) -> Response:
        """`action()`'s answer, or the answer kept from the first request with this key."""
        claim = secrets.token_hex(16)
        for _attempt in range(3):
            if self._claim(work, key, fingerprint, claim):
                return self._run_claimed(work, key, claim, action)
            kept = self._kept(work, key)
            if kept is not None:
                return _answer_from(kept, fingerprint)
            # Let go (its request failed) or purged between the two statements: claim again.
        raise _in_progress()  # not reached in practice: three rows vanished in a row

    def _claim(self, work: UnitOfWork, key: str, fingerprint: str, claim: str) -> bool:
        now = utcnow()
        values = {
            "user_id": work.owner_id,
            "key": key,
            "fingerprint": fingerprint,
            "claim": claim,
            "created_at": now,
            "expires_at": now + self.in_progress,
        }
        this_key = {"owner_id": work.owner_id, "idempotency_key": key, "now": now}
        if work.dialect_name == "sqlite":
            work.execute(_PURGE, this_key)
        claimed = work.execute(_CLAIM[work.dialect_name], {**values, **this_key}).first()
        return claimed is not None

    def _kept(self, work: UnitOfWork, key: str) -> _Kept | None:
        row = work.execute(_KEPT, {"owner_id": work.owner_id, "idempotency_key": key}).first()
        return None if row is None else _Kept(*row)

    def _run_claimed(
        self, work: UnitOfWork, key: str, claim: str, action: Callable[[], Response]
    ) -> Response:
        held = {"owner_id": work.owner_id, "idempotency_key": key, "held": claim}
        try:
            with work.transaction():
                try:
                    response = action()
                except HTTPException as error:
                    # An answer like any other (404, 412): kept, and sent as the handler would.
                    response = JSONResponse(
                        {"detail": error.detail}, error.status_code, error.headers
                    )
                if work.execute(_STORE, {**held, **self._stored(response)}).rowcount != 1:
                    # A retry took the expired claim over and does the work instead.
                    raise _LostClaim
        except _LostClaim:
            raise _in_progress() from None
        except BaseException:
            # The work failed (database down, a bug) before COMMIT, or COMMIT failed: the key
            # is freed for a retry unless the answer may have been kept (see _let_go).
            _let_go(work, held)
            raise
        return response

    def _stored(self, response: Response) -> dict[str, Any]:
        headers = {
            name: response.headers[name] for name in KEPT_HEADERS if name in response.headers
        }
        return {
            "new_status_code": response.status_code,
            "new_response_headers": orjson.dumps(headers).decode(),
            "new_response_body": bytes(response.body),
            "kept_until": utcnow() + self.ttl,
        }


class _LostClaim(Exception):
    pass


def _let_go(work: UnitOfWork, held: dict[str, str]) -> None:
    """Free the key after a failed attempt, in autocommit; best effort, on a connection that
    may be broken (the caller raises the first error, and a claim that stays expires after
    in_progress_seconds). Only ever after a ROLLBACK: a COMMIT that failed may still have been
    applied, and then the kept answer must stay: the release is conditional on the claim still
    being in progress, so a committed answer is never deleted."""
    with contextlib.suppress(Exception):
        work.execute(_RELEASE, held)


def _answer_from(kept: _Kept, fingerprint: str) -> Response:
    if kept.fingerprint != fingerprint:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "This Idempotency-Key was already used for a different request",
        )
    if kept.status_code is None or kept.body is None:
        raise _in_progress()
    headers: dict[str, str] = orjson.loads(kept.headers or "{}")
    headers[REPLAYED] = "true"
    return Response(bytes(kept.body), kept.status_code, headers)


def _in_progress() -> HTTPException:
    return HTTPException(
        status.HTTP_409_CONFLICT,
        "A request with this Idempotency-Key is still in progress; retry it later",
        headers={"Retry-After": "1"},
    )
