"""Conditional requests (RFC 9110): a resource's strong ETag, and If-Match / If-None-Match read
against it; `PreconditionFailed` is the service's way to say that If-Match did not match.

The ETag is `"<created_at in microseconds since 1970, hex>-<version>"`: `version` changes with
every update, and `created_at` tells apart two rows that got the same id (SQLite may hand out
the id of a deleted task again). Both parts are columns, so an If-Match condition becomes part of
an UPDATE's or DELETE's WHERE clause (atomic: no read-then-write race). The 412 is made by the
write wrapper (todo_api/work.py).

Hand-written rather than a library: no maintained package parses entity-tag lists for a
framework-independent caller, and the grammar is one regular expression.
"""

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

# RFC 9110 section 8.8.3: entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE, in a comma-separated list
# (the visible-ASCII subset of etagc: a header value is ASCII here). Read leniently: whatever is
# not an entity-tag in a condition simply names no version (If-Match then fails with 412,
# If-None-Match lets the full answer through); an empty value counts as no header, as RFC 9110
# section 5.6.1 asks of empty lists.
_TAGS = re.compile(r'(W/)?"([!#-~]*)"')
_OURS = re.compile(r"([0-9a-f]{1,16})-([0-9]{1,10})")


# OpenAPI declarations: the headers are read in the routes themselves (see idempotency.key_of).
IF_MATCH_PARAMETER = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": (
        "Write only if the task's current ETag is in this list of entity-tags (`*`: any "
        "version); otherwise 412 with the current ETag, and nothing is changed."
    ),
}
IF_NONE_MATCH_PARAMETER = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "304 with no body if the task's ETag is in this list (`*`: any version).",
}


@dataclass(frozen=True, slots=True)
class Version:
    """One representation of a task: what its ETag names."""

    created_at: datetime
    version: int


class PreconditionFailed(Exception):
    """If-Match named none of the resource's versions: nothing was written."""

    def __init__(self, current: Version) -> None:
        super().__init__("precondition failed")
        self.current = current


def etag(created_at: datetime, version: int) -> str:
    return f'"{(created_at - _EPOCH) // _MICROSECOND:x}-{version}"'


def if_match(value: str | None) -> tuple[Version, ...] | None:
    """The versions an If-Match header accepts; None: any version (no header, or `*`).

    Strong comparison: weak tags never match, nor do tags this server did not make, so a list of
    only those is empty and can match no task.
    """
    if value is None or value.strip() in ("", "*"):
        return None
    return tuple(
        version
        for weak, opaque in _TAGS.findall(value)
        if not weak and (version := _version(opaque)) is not None
    )


def none_match(value: str | None, current: str) -> bool:
    """Whether an If-None-Match header names the current ETag (weak comparison), or is `*`."""
    if value is None:
        return False
    if value.strip() == "*":
        return True
    return any(f'"{opaque}"' == current for _weak, opaque in _TAGS.findall(value))


def _version(opaque: str) -> Version | None:
    parts = _OURS.fullmatch(opaque)
    if parts is None:
        return None
    try:
        created_at = _EPOCH + int(parts[1], 16) * _MICROSECOND
    except OverflowError:
        return None
    return Version(created_at, int(parts[2]))
