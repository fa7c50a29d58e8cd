"""Engine creation (URL normalising, pool, SQLite pragmas) and the UTC timestamp column type.

What a request's statements carry (owner, deadlines) is todo_api/driver.py's job, and how its
transactions run todo_api/unit_of_work.py's."""

import logging
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Engine, create_engine, event
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import NullPool
from sqlalchemy.types import TypeDecorator

from todo_api.config import Settings
from todo_api.deadlines import cancel_warning
from todo_api.driver import guard, statement_classes, unguarded

log = logging.getLogger("todo_api.db")


def normalise_url(url: str) -> str:
    """Point postgres:// and postgresql:// at psycopg2 (SQLAlchemy 2.1 would pick psycopg 3)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


def create_db_engine(
    settings: Settings,
    *,
    url: str | None = None,
    pooled: bool = True,
    probe_timeout: float | None = None,
) -> Engine:
    """The request engine: pooled, and in autocommit mode (`pooled=False`: one connection per
    use, for migrations and the readiness probe; on PostgreSQL with ordinary transactions).
    `probe_timeout`: the readiness probe's bound on each statement, server- and client-side.

    Most requests run a single SQL statement (one statement is atomic on its own), so autocommit
    saves the BEGIN and COMMIT round trips; what is acknowledged has been committed. A unit of work
    that needs a transaction sends BEGIN and COMMIT itself (todo_api/unit_of_work.py).
    """
    target = make_url(normalise_url(url or settings.database_url))
    # hide_parameters: error messages (and so logs) never carry titles, emails or other user data.
    pool_args: dict[str, Any] = {"hide_parameters": True}
    if pooled:
        pool_args.update(
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_timeout=settings.db_pool_timeout,
        )
    else:
        pool_args["poolclass"] = NullPool
    if target.get_backend_name() == "sqlite":
        engine = create_engine(
            target,
            connect_args={"check_same_thread": False, "timeout": 30},
            isolation_level="AUTOCOMMIT",
            **pool_args,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {
        "connect_timeout": settings.db_connect_timeout,
        "application_name": "todo-api",
    }
    if not pooled:
        if probe_timeout:
            # The probe gives up waiting after this long; its statement must end too, or each
            # probe against a saturated pooler leaves a thread and a connection queued there.
            connect_args.update(statement_classes(probe_timeout, probe_timeout, guarded=False))
        return create_engine(target, connect_args=connect_args, **pool_args)
    legacy_cancel = settings.db_cancel_api == "legacy"
    if settings.db_client_timeout_seconds and (warning := cancel_warning(legacy_cancel)):
        log.warning(warning)
    connect_args.update(
        statement_classes(
            settings.db_statement_timeout_seconds,
            settings.db_client_timeout_seconds,
            guarded=True,
            legacy_cancel=legacy_cancel,
            cancel_wait=settings.db_connect_timeout,
        )
    )
    engine = create_engine(
        target,
        connect_args=connect_args,
        isolation_level="AUTOCOMMIT",
        pool_recycle=settings.db_pool_recycle,
        **pool_args,
    )
    if settings.db_pool_pre_ping:
        _ping_idle_connections(engine, settings.db_ping_after_idle_seconds)
    event.listen(engine, "connect", _warn_if_row_security_is_bypassed, once=True)
    # Last: SQLAlchemy's own first-connect queries and the check above run unguarded.
    event.listen(engine, "connect", guard)
    return engine


def _warn_if_row_security_is_bypassed(dbapi_connection: Any, _record: Any) -> None:
    """Once per engine: say so loudly when PostgreSQL would not enforce the policy on `tasks`.

    Superusers and BYPASSRLS roles skip row-level security even when it is forced, and then
    isolation rests on our WHERE clauses alone. row_security_active() asks PostgreSQL itself
    (NULL before the migrations have made the table).
    """
    with dbapi_connection.cursor() as cursor:
        cursor.execute("SELECT current_user, row_security_active(t) FROM to_regclass('tasks') AS t")
        role, active = cursor.fetchone()
    if not dbapi_connection.autocommit:
        dbapi_connection.rollback()
    if active is False:
        log.warning(
            "row-level security does not apply to the database role %r (a superuser, a role "
            "with BYPASSRLS, or the tasks table without its policy): isolation between users "
            "rests on the WHERE clauses alone; connect as a role without those attributes",
            role,
        )


def _ping_idle_connections(engine: Engine, idle_seconds: float) -> None:
    """Check a pooled connection with a round trip before use, if it sat idle for a while.

    SQLAlchemy's pool_pre_ping pings on every checkout, which costs a round trip per request
    (about 15% of throughput here). A connection used a moment ago is alive; one that idled may
    have been cut by a database restart or Neon's suspend, and is replaced before the request
    sees it (SQLAlchemy's documented checkout-event recipe: raising DisconnectionError makes
    the pool retry with a fresh connection).
    """

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_connection: Any, record: Any) -> None:
        record.info["returned_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _check(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        returned_at = record.info.get("returned_at")
        if returned_at is None or time.monotonic() - returned_at < idle_seconds:
            return
        try:
            with unguarded(dbapi_connection), dbapi_connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        except Exception as error:
            raise DisconnectionError(str(error)) from error


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # foreign_keys: SQLite leaves them off, and ON DELETE CASCADE needs them.
    # WAL + busy_timeout: readers do not block the writer, and writers wait instead of failing.
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")  # an acknowledged write survives a power cut
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamptz that always comes back timezone-aware in UTC, on SQLite too."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else in_utc(value)


def in_utc(value: datetime) -> datetime:
    """A timestamp read from the database, in UTC (a naive one is UTC already: SQLite's)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)
