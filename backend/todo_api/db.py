"""Engine creation (URL normalising, pool, SQLite pragmas) and the UTC timestamp column type."""

import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Engine, create_engine, event
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import NullPool
from sqlalchemy.types import TypeDecorator

from todo_api.config import Settings
from todo_api.deadlines import deadline_cursor


def normalise_url(url: str) -> str:
    """Point postgres:// and postgresql:// at psycopg2 (SQLAlchemy 2.1 would pick psycopg 3)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


def create_db_engine(settings: Settings, *, url: str | None = None, pooled: bool = True) -> Engine:
    """The request engine: pooled, and in autocommit mode (`pooled=False`: one connection per
    use, for migrations and the readiness probe; on PostgreSQL with ordinary transactions).

    Every request runs a single SQL statement (one statement is atomic on its own), so autocommit
    saves the BEGIN and COMMIT round trips; what is acknowledged has been committed.
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
        return create_engine(target, connect_args=connect_args, **pool_args)
    cursor_class = deadline_cursor(
        settings.db_statement_timeout_seconds, settings.db_client_timeout_seconds
    )
    if cursor_class is not None:
        connect_args["cursor_factory"] = cursor_class
    engine = create_engine(
        target,
        connect_args=connect_args,
        isolation_level="AUTOCOMMIT",
        pool_recycle=settings.db_pool_recycle,
        **pool_args,
    )
    if settings.db_pool_pre_ping:
        _ping_idle_connections(engine, settings.db_ping_after_idle_seconds)
    return engine


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
            with dbapi_connection.cursor() as cursor:
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
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)
