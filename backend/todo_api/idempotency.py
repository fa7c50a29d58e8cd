"""The Idempotency-Key header (IETF httpapi draft): a retried write is answered, not redone.

A wrapper around any write, at the HTTP level: it sees the request's method, path, body and
answer, never what the write does. Per user and key, the table `idempotency_keys` holds the first
request's fingerprint and its answer (status, the headers that matter, body). A keyed write is
ONE transaction of the request's unit of work (todo_api/unit_of_work.py), through a
transaction-mode pooler (no session state, no advisory locks):

1. Claim the key: a plain INSERT, sent in the same round trip as the work's first statement
   (`UnitOfWork.claim`), which runs only if the key is new. A key that exists (the INSERT's
   unique violation, which leaves a dead row version for VACUUM, as any failed insert) is read
   in a new transaction (no lock on it): its kept response is
   replayed, or 422 when the key came with a different request; an expired one is taken over
   (a conditional UPDATE) and is ours. A key claimed by a transaction still running is a row
   held by it: neither statement waits for it more than a moment, then the answer is 409 (also
   for a different request with that key: it cannot be compared before the first commits; a
   retry then gets the 422).
2. Do the work, then store its answer in the claimed row and COMMIT, in one round trip: a new
   key costs one round trip more than the write alone. A replay costs four: the failed claim,
   its ROLLBACK, the read and its COMMIT (retries are rare; new keys are not). A crash
   or an error anywhere before the COMMIT leaves nothing at all, not even the claim: a retry
   does the work, once.

Expired rows are deleted by the keyed writes themselves, a few at a time (no cron job, no large
batch on any one request): every `PURGE_EVERY`-th keyed write of a worker, once committed,
deletes up to `PURGE_LIMIT` expired keys of anyone's (skipping rows another purge is deleting).
Keyed writes add one row each and remove up to 8 expired ones each on average, so the purge
keeps up with any sustained rate of keyed writes and works off a backlog at that multiple of it.
An expired key is also simply taken over by step 1.

Rows written by earlier versions (which committed a claim before the work, with `status_code`
NULL until the answer) still read as "in progress" until their `expires_at`, then are taken
over: a release that runs both versions at once keeps every guarantee.

Hand-written: the Python packages for this header are framework middlewares that keep answers in
Redis or in memory, neither of which fits one database reached through a pooler.
"""

import contextlib
import hashlib
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson
from fastapi import HTTPException, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DBAPIError

from todo_api.db import utcnow
from todo_api.idempotency_table import (
    CLAIM,
    IDEMPOTENCY_KEY_MAX,
    KEPT,
    PURGE,
    PURGE_EVERY,
    STORE,
    TAKE_OVER,
)
from todo_api.unit_of_work import RowExists, RowHeld, UnitOfWork

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
    expires_at: datetime


# _kept's answer for a key that vanished since its claim failed, or between two statements.
_GONE = _Kept("", None, None, None, datetime.min)


class IdempotencyKeys:
    """Runs writes under an Idempotency-Key (one per app)."""

    def __init__(self, *, ttl_seconds: int) -> None:
        self.ttl = timedelta(seconds=ttl_seconds)
        self._writes = itertools.count()  # this worker's keyed writes: the purge's turn

    def run(
        self,
        work: UnitOfWork,
        *,
        key: str,
        fingerprint: str,
        action: Callable[[], Response],
    ) -> Response:
        """`action()`'s answer, or the answer kept from the first request with this key."""
        new = True  # first as a new key: the common case, and one round trip fewer
        for _attempt in range(4):
            try:
                with work.transaction():
                    now = utcnow()
                    if new:
                        work.claim(CLAIM, self._claimed(work, key, fingerprint, now))
                        kept = None
                    else:
                        kept = self._kept(work, key, fingerprint, now)
                    response = self._answered(work, key, action) if kept is None else None
            except RowHeld:
                raise _in_progress() from None
            except RowExists:
                new = False
                continue
            if response is not None:
                self._purge_some(work, now)
                return response
            if kept is not None and kept is not _GONE:
                return _answer_from(kept, fingerprint)
            new = True  # expired and purged (or taken over) since the claim: claim again
        raise _in_progress()  # not reached in practice: the key came and went twice in a row

    def _claimed(
        self, work: UnitOfWork, key: str, fingerprint: str, now: datetime
    ) -> dict[str, object]:
        return {
            "user_id": work.owner_id,
            "key": key,
            "fingerprint": fingerprint,
            "claim": "",
            "created_at": now,
            "expires_at": now + self.ttl,
        }

    def _kept(self, work: UnitOfWork, key: str, fingerprint: str, now: datetime) -> _Kept | None:
        """What an existing key holds (or _GONE), or None once it is ours (it had expired and
        is taken over, without waiting for another request holding it: RowHeld)."""
        this_key = {"owner_id": work.owner_id, "idempotency_key": key}
        row = work.execute(KEPT, this_key).first()
        if row is None:
            return _GONE
        kept = _Kept(*row)
        if kept.expires_at > now:
            return kept
        take_over = {
            **this_key,
            "now": now,
            "new_fingerprint": fingerprint,
            "kept_until": now + self.ttl,
        }
        taken = work.execute_unless_held(TAKE_OVER, take_over).first() is not None
        return None if taken else _GONE

    def _purge_some(self, work: UnitOfWork, now: datetime) -> None:
        """Every PURGE_EVERY-th keyed write: delete a few expired keys, in autocommit. Best
        effort: the write is committed and answered whatever happens here, and the next turn
        purges what this one could not."""
        if next(self._writes) % PURGE_EVERY:
            return
        with contextlib.suppress(DBAPIError):
            work.execute(PURGE[work.dialect_name], {"now": now})

    def _answered(self, work: UnitOfWork, key: str, action: Callable[[], Response]) -> Response:
        """The work's answer, stored in the claimed row (the caller's transaction commits both,
        or neither)."""
        try:
            response = action()
        except HTTPException as error:
            # An answer like any other (404, 412): kept, and sent as the handler would.
            response = JSONResponse({"detail": error.detail}, error.status_code, error.headers)
        headers = {
            name: response.headers[name] for name in KEPT_HEADERS if name in response.headers
        }
        stored = {
            "owner_id": work.owner_id,
            "idempotency_key": key,
            "new_status_code": response.status_code,
            "new_response_headers": orjson.dumps(headers).decode(),
            "new_response_body": bytes(response.body),
        }
        work.execute_with_commit(STORE, stored)  # one round trip with the COMMIT
        return response


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
