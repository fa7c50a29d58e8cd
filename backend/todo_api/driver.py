"""What each statement on a request connection carries to PostgreSQL, and how long it may wait.

- The owner (`app.user_id`, which the row-level security policies compare with) and the
  statement timeout travel as `SET LOCAL`s in the same query string as a statement: one round
  trip, and transaction-local, so that the next client of the same server connection (PgBouncer
  in transaction mode, Neon's pooled endpoint) never inherits them, as it would a plain `SET`.
  An autocommit statement is its own transaction, so each one carries them; in a transaction the
  first statement carries them after its BEGIN, and the rest nothing.
- `StatementCursor` is the only place that writes them, whatever sent the statement (a Core
  statement, a prepared one, `exec_driver_sql`, BEGIN, COMMIT, ROLLBACK), and it keeps the client
  deadline on every one of them (todo_api/deadlines.py). On a request connection outside a unit
  of work it raises `OwnerMissing` instead of running a statement as nobody.

The unit of work (todo_api/unit_of_work.py) says what the next statement carries; db.py makes
every request engine's connections of these classes.
"""

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

# psycopg2 ships no type hints (and types-psycopg2 is not a dependency): its names are Any here.
import psycopg2  # type: ignore[import-untyped]
import psycopg2.extensions  # type: ignore[import-untyped]

from todo_api.deadlines import StatementTimeout, Watchdog


class OwnerMissing(RuntimeError):
    """A statement on a request connection outside a unit of work: it would run as nobody."""


class StatementConnection(psycopg2.extensions.connection):  # type: ignore[misc]
    """psycopg2's connection, knowing what its next statement must carry (UnitOfWork sets it).

    `prefix`: sent before the next statement in the same query string; None refuses it.
    `then`: what `prefix` becomes once a statement has been sent with it.
    """

    prefix: bytes | None = b""
    then: bytes | None = b""
    # Per engine (see statement_classes): the statement timeout and the client deadline.
    timeout_setting: ClassVar[bytes] = b""
    watchdog: ClassVar[Watchdog | None] = None


class StatementCursor(psycopg2.extensions.cursor):  # type: ignore[misc]
    """psycopg2's cursor, sending each statement with its connection's prefix, watched."""

    def execute(self, query: Any, vars: Any = None) -> None:
        conn: StatementConnection = self.connection
        prefix = conn.prefix
        if prefix is None:
            raise OwnerMissing(
                "a statement on a request connection outside a unit of work (it would run "
                "without the owner); use todo_api.unit_of_work.UnitOfWork"
            )
        if prefix:
            # Formatted here (as execute would), so that the prefix's own characters are never
            # read as placeholders.
            query = prefix + self.mogrify(query, vars)
            vars = None
            conn.prefix = conn.then
        watchdog = conn.watchdog
        if watchdog is None:
            super().execute(query, vars)
            return
        key = id(self)
        watchdog.start(key, conn)
        try:
            super().execute(query, vars)
        except psycopg2.Error as error:
            if watchdog.finish(key):
                raise _timed_out(conn, watchdog) from error
            raise
        except BaseException:
            # Refused by the driver before it sent anything (a parameter it cannot encode): the
            # connection is fine and goes back to the pool, so it must not stay watched.
            if watchdog.finish(key):
                conn.close()
            raise
        if watchdog.finish(key):
            # It completed just as the deadline passed, but its socket is shut down by now.
            raise _timed_out(conn, watchdog)

    def executemany(self, query: Any, vars_list: Any) -> None:
        # One at a time, so that each carries what execute adds (SQLAlchemy's bulk inserts use
        # execute with VALUES lists; nothing here sends many rows).
        for vars in vars_list:
            self.execute(query, vars)


def _timed_out(conn: StatementConnection, watchdog: Watchdog) -> StatementTimeout:
    # Closed, so SQLAlchemy sees a disconnect and drops the connection from its pool.
    conn.close()
    return StatementTimeout(f"no answer from the database within {watchdog.seconds:g} s")


def statement_classes(
    statement_timeout: float,
    client_timeout: float,
    *,
    guarded: bool,
    legacy_cancel: bool = False,
    cancel_wait: float = 5,
) -> dict[str, Any]:
    """psycopg2's connect arguments for one engine: its connection and cursor classes.

    `guarded`: the request engine; its connections refuse statements outside a unit of work
    once `guard` has run (after SQLAlchemy's own first-connect queries). Otherwise (the
    readiness probe) every statement carries the statement timeout.
    """
    setting = b""
    if statement_timeout:
        setting = f"SET LOCAL statement_timeout = {round(statement_timeout * 1000)};".encode()
    attributes: dict[str, Any] = {
        "timeout_setting": setting,
        "watchdog": (
            Watchdog(client_timeout, legacy_cancel=legacy_cancel, cancel_wait=cancel_wait)
            if client_timeout
            else None
        ),
    }
    if not guarded:
        attributes["prefix"] = attributes["then"] = setting
    connection_class = type("EngineConnection", (StatementConnection,), attributes)
    watchdog = attributes["watchdog"]
    if watchdog is not None:
        # The thread ends with the engine whose connections use this class. Not through an
        # engine event: a listener on a Connection's events sends every execution down
        # SQLAlchemy's slower event path (about 25 us a request, measured).
        weakref.finalize(connection_class, watchdog.stop)
    return {"connection_factory": connection_class, "cursor_factory": StatementCursor}


def guard(dbapi_connection: Any, _record: Any = None) -> None:
    """From now on this connection refuses statements outside a unit of work."""
    if isinstance(dbapi_connection, StatementConnection):
        dbapi_connection.prefix = dbapi_connection.then = None


@contextmanager
def unguarded(dbapi_connection: Any) -> Iterator[None]:
    """For the pool's own liveness check: a statement that reads nothing of anyone's."""
    if not isinstance(dbapi_connection, StatementConnection):
        yield
        return
    dbapi_connection.prefix = dbapi_connection.then = dbapi_connection.timeout_setting
    try:
        yield
    finally:
        guard(dbapi_connection)
