"""A request's database work as one object: its connection, its owner and its transaction mode.

- `UnitOfWork(engine, owner)` is made once per request (todo_api/work.py) and handed to the
  route; it takes a pooled connection at its first statement and gives it back when the route
  returns.
- Autocommit by default: one statement is atomic on its own, and no BEGIN or COMMIT round trip
  is paid. `transaction()` makes one transaction of several statements (a write and the answer
  kept for its Idempotency-Key); `execute_with_commit` sends its last one with its COMMIT.
- On PostgreSQL every statement carries the owner and the statement timeout, and waits at most
  the client deadline (todo_api/driver.py); `Prepared` statements (todo_api/statements.py) skip
  SQLAlchemy's execution.
- `execute_unless_held` runs a statement that gives up (`RowHeld`) rather than wait more than a
  moment for a row another transaction holds: an Idempotency-Key claimed by a request still
  running. `claim` inserts such a row ahead of the work it guards, in the same round trip as
  the work's first statement, which then raises `RowExists` or `RowHeld` instead of running.
"""

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

# psycopg2 ships no type hints (and types-psycopg2 is not a dependency): its names are Any here.
import psycopg2  # type: ignore[import-untyped]
import psycopg2.extensions  # type: ignore[import-untyped]
from sqlalchemy import Connection, Engine, Executable, Insert
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from todo_api.driver import StatementConnection, guard
from todo_api.statements import DML, DriverRows, Prepared, Rows, in_utc_rows

if TYPE_CHECKING:
    from todo_api.auth import Claims

_IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE
# PostgreSQL's lock_timeout for one statement, then its default again for the rest of the
# transaction. SQLSTATE 55P03: the timeout passed. Not the shortest possible (1 ms): the same
# timeout covers the short waits of any insert under load (the lock that extends a table's file:
# 1 ms refused about one keyed create in 10,000 of the benchmark's), and a duplicate whose first
# request commits within it gets that answer rather than a 409.
HELD_WAIT_MS = 100
_NO_WAIT = f"SET LOCAL lock_timeout = {HELD_WAIT_MS};".encode()
_WAIT_AGAIN = b"SET LOCAL lock_timeout = DEFAULT;"
_LOCK_NOT_AVAILABLE = "55P03"
_UNIQUE_VIOLATION = "23505"


class RowHeld(Exception):
    """`execute_unless_held`'s statement, or a claim, met a row another transaction holds."""


class RowExists(Exception):
    """A claim's row is there already (committed by another transaction)."""


@dataclass(frozen=True, slots=True)
class _Claim:
    table: str  # its table's name, which its failures name
    prefix: bytes  # the connection's prefix that carries it: sent once the prefix is gone
    before: bytes | None  # the prefix before it, for a ROLLBACK that must go without it


class UnitOfWork:
    """One request's database work, as its owner (see the module's docstring)."""

    __slots__ = (
        "_at_commit",
        "_claim",
        "_conn",
        "_dbapi",
        "_in_transaction",
        "_settings",
        "engine",
        "owner",
    )

    def __init__(self, engine: Engine, owner: "Claims") -> None:
        self.engine = engine
        self.owner = owner
        self._conn: Connection | None = None
        self._dbapi: Any = None
        self._settings = b""
        self._in_transaction = False
        self._at_commit = b""
        self._claim: _Claim | None = None  # the transaction's claim (see claim())

    @property
    def owner_id(self) -> str:
        return self.owner.sub

    @property
    def dialect_name(self) -> str:
        return self.engine.dialect.name

    def execute(
        self, statement: Executable | Prepared[Any], parameters: Mapping[str, Any] | None = None
    ) -> Rows:
        """Run one statement as the owner (in the transaction, inside `transaction()`)."""
        self._outside_a_transaction_if_set(statement)
        conn = self._connection()
        with self._claim_answered():
            if not isinstance(statement, Prepared):
                return conn.execute(statement, parameters)
            if isinstance(self._dbapi, StatementConnection):
                return self._on_driver(conn, statement, parameters or {})
            return conn.execute(statement.statement, parameters)

    def claim(self, statement: Prepared[Insert], parameters: Mapping[str, Any]) -> None:
        """Inside `transaction()`: insert the row that makes this transaction the holder of
        something (an Idempotency-Key), before the work it guards, in the same round trip as
        the work's first statement (on PostgreSQL).

        That statement raises instead of answering, and has not run (PostgreSQL skips the rest
        of a query string after an error): RowExists when the row
        is there already, RowHeld when another transaction holds it more than HELD_WAIT_MS (the
        waits of `execute_unless_held`). SQLite runs the claim at once (its writers take turns,
        so it never meets a held row), with the same exceptions. A claim that no statement of
        the block carries is sent on its own before the COMMIT.
        """
        if not self._in_transaction:
            raise RuntimeError("claim belongs in a transaction")
        self._outside_a_transaction_if_set(statement)
        if self._claim is not None:
            raise RuntimeError("a transaction holds one claim")
        conn = self._connection()
        table = statement.statement.table
        dbapi = self._dbapi
        if not isinstance(dbapi, StatementConnection):
            try:
                conn.execute(statement.statement, parameters)
            except IntegrityError as error:
                raise RowExists from error
            return
        compiled = statement.compiled(self.engine.dialect, parameters)
        with dbapi.cursor() as cursor:
            sql = cursor.mogrify(compiled.string, compiled.construct_params(parameters))
        before = dbapi.prefix
        dbapi.prefix = (before or b"") + self._unless_held(table) + sql + b";" + _WAIT_AGAIN
        self._claim = _Claim(table.name, dbapi.prefix, before)

    def _outside_a_transaction_if_set(self, statement: object) -> None:
        # A SET LOCAL lasts to the end of the transaction: a statement's own setting is only its
        # own when the statement is the transaction. Refused everywhere, SQLite included (which
        # never sends it), so that a misuse fails in every test.
        if self._in_transaction and isinstance(statement, Prepared) and statement.setting:
            raise RuntimeError("a statement with a setting of its own runs outside a transaction")

    def _unsent_claim(self) -> _Claim | None:
        """The transaction's claim while no statement has carried it: it is still at the start
        of the connection's prefix (which the driver empties once it sends it)."""
        claim = self._claim
        if claim is None or not (self._dbapi.prefix or b"").startswith(claim.prefix):
            return None
        return claim

    @contextmanager
    def _claim_answered(self) -> Iterator[None]:
        """Around a statement: if a claim goes with it, the claim's failures as RowHeld and
        RowExists. A lock timeout is the claim's when PostgreSQL's context names its table (the
        statements after it time out only under a server-wide lock_timeout: their own error)."""
        claim = self._unsent_claim()
        if claim is None:
            yield
            return
        try:
            yield
        except DBAPIError as error:
            code = getattr(error.orig, "pgcode", None)
            if code == _LOCK_NOT_AVAILABLE and _waited_on(error, claim.table):
                raise RowHeld from error
            if code == _UNIQUE_VIOLATION and _diagnostic(error, "table_name") == claim.table:
                raise RowExists from error
            raise

    def _unless_held(self, table: Any) -> bytes:
        # The table's own lock first, waited for as any statement does (a migration altering
        # it delays the write rather than failing it); then no more than a moment for a row.
        name = self.engine.dialect.identifier_preparer.format_table(table)
        return f"LOCK TABLE {name} IN ROW EXCLUSIVE MODE;".encode() + _NO_WAIT

    def execute_unless_held(self, statement: Prepared[DML], parameters: Mapping[str, Any]) -> Rows:
        """Inside `transaction()`: run one write that raises RowHeld instead of waiting more
        than HELD_WAIT_MS for a row (a key, say) that another transaction holds.

        Only waits for rows (and the short ones of any insert) are cut: the table's own lock is
        taken first, waiting as any statement does, so a migration that holds it (to alter the
        table) delays the write rather than failing it. SQLite needs nothing: its writers queue
        for the database's write lock before their transaction starts, so a statement in one
        never meets a held row.
        """
        if not self._in_transaction:
            raise RuntimeError("execute_unless_held belongs in a transaction")
        self._outside_a_transaction_if_set(statement)
        conn = self._connection()
        dbapi = self._dbapi
        if not isinstance(dbapi, StatementConnection):
            return conn.execute(statement.statement, parameters)
        dbapi.prefix = (dbapi.prefix or b"") + self._unless_held(statement.statement.table)
        try:
            with self._claim_answered():
                rows = self._on_driver(conn, statement, parameters)
        except OperationalError as error:
            if getattr(error.orig, "pgcode", None) == _LOCK_NOT_AVAILABLE:
                raise RowHeld from error
            raise
        dbapi.prefix = _WAIT_AGAIN + (dbapi.prefix or b"")
        return rows

    def execute_with_commit(self, statement: Prepared[Any], parameters: Mapping[str, Any]) -> None:
        """Inside `transaction()`: run this statement, the transaction's last, in the same
        round trip as its COMMIT (on PostgreSQL; its rows are not read, and its error is the
        COMMIT's). Dropped if the block raises."""
        if not self._in_transaction:
            raise RuntimeError("execute_with_commit belongs in a transaction")
        self._outside_a_transaction_if_set(statement)
        self._connection()
        if not isinstance(self._dbapi, StatementConnection) or self._unsent_claim() is not None:
            # A claim that no statement has carried yet goes with this one, now: its answer
            # must be known before the COMMIT.
            self.execute(statement, parameters)
            return
        compiled = statement.compiled(self.engine.dialect, parameters)
        with self._dbapi.cursor() as cursor:
            sql = cursor.mogrify(compiled.string, compiled.construct_params(parameters))
        self._at_commit += sql + b";"

    def exec_driver_sql(self, sql: str, parameters: Any = None) -> Rows:
        """A statement as the driver takes it (its own placeholders), as the owner too."""
        conn = self._connection()
        with self._claim_answered():
            return conn.exec_driver_sql(sql, parameters)

    def _on_driver(
        self, conn: Connection, prepared: Prepared[Any], parameters: Mapping[str, Any]
    ) -> DriverRows:
        compiled = prepared.compiled(self.engine.dialect, parameters)
        query = compiled.string
        if prepared.setting:
            query = prepared.setting + query
        cursor = self._dbapi.cursor()
        try:
            cursor.execute(query, compiled.construct_params(parameters))
            rows = cursor.fetchall() if cursor.description is not None else []
            rowcount = cursor.rowcount
        except psycopg2.Error as error:
            # As SQLAlchemy does: a connection that is gone never goes back to the pool, and
            # the error is raised as SQLAlchemy's, without its parameters (hide_parameters).
            gone = self.engine.dialect.is_disconnect(error, self._dbapi, cursor)
            if gone:
                conn.invalidate(error)
            raise DBAPIError.instance(
                compiled.string,
                None,
                error,
                psycopg2.Error,
                hide_parameters=True,
                connection_invalidated=gone,
            ) from error
        finally:
            cursor.close()
        if prepared.timestamps and rows:
            rows = in_utc_rows(rows, prepared.timestamps)
        return DriverRows(rows, rowcount)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """The block's statements as one transaction: committed when it ends, rolled back when
        it raises. BEGIN, COMMIT and ROLLBACK are statements like the others, so the client
        deadline bounds them too."""
        if self._in_transaction:
            raise RuntimeError("a unit of work holds one transaction at a time")
        conn = self._connection()
        dbapi = self._dbapi
        if isinstance(dbapi, StatementConnection):
            # BEGIN and the settings go with the transaction's first statement.
            dbapi.prefix, dbapi.then = b"BEGIN;" + self._settings, b""
        else:
            # SQLite: the write lock now, rather than a failed upgrade from a read lock later.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        self._in_transaction = True
        try:
            yield
            if self._unsent_claim() is not None:
                # No statement of the block carried the claim: it goes on its own, so that it
                # fails as a claim, not as the COMMIT (which would drop the connection).
                self.exec_driver_sql("SELECT 1")
        except BaseException:
            self._at_commit = b""
            claim = self._unsent_claim()
            if claim is not None:
                # Never sent (the block raised first, or its statement failed before it went
                # out): the ROLLBACK goes without it.
                self._dbapi.prefix = claim.before
            self._end("ROLLBACK", raising=False)
            raise
        self._end("COMMIT", raising=True)

    def _end(self, statement: str, *, raising: bool) -> None:
        conn = self._conn
        assert conn is not None
        try:
            if isinstance(self._dbapi, StatementConnection):
                self._send(conn, statement)
            else:
                conn.exec_driver_sql(statement)
        except Exception:
            # The transaction's fate is unknown (or the connection gone): the connection must
            # never go back to the pool (close() sees its open transaction and drops it).
            if raising:
                raise
        finally:
            self._in_transaction = False
            self._at_commit = b""
            self._claim = None
            if isinstance(self._dbapi, StatementConnection) and not self._dbapi.closed:
                self._dbapi.prefix = self._dbapi.then = self._settings

    def _send(self, conn: Connection, statement: str) -> None:
        """COMMIT (after what `execute_with_commit` left) or ROLLBACK straight on the cursor
        (watched like any statement), without SQLAlchemy's execution machinery; its errors
        wrapped as SQLAlchemy would (naming only the COMMIT: the rest holds parameters)."""
        try:
            with self._dbapi.cursor() as cursor:
                cursor.execute(self._at_commit + statement.encode())
                ended = cursor.statusmessage
        except psycopg2.Error as error:
            conn.invalidate(error)
            raise DBAPIError.instance(
                statement, None, error, psycopg2.Error, connection_invalidated=True
            ) from error
        if ended != statement:
            # PostgreSQL answers a COMMIT of a failed transaction with ROLLBACK, and no error:
            # a block that caught a statement's error must not pass for committed.
            raise RuntimeError(f"{statement} ended the transaction with {ended}")

    def _connection(self) -> Connection:
        conn = self._conn
        if conn is None:
            conn = self._conn = self.engine.connect()
            dbapi = self._dbapi = conn.connection.dbapi_connection
            if isinstance(dbapi, StatementConnection):
                owner = psycopg2.extensions.QuotedString(self.owner.sub)
                owner.prepare(dbapi)
                self._settings = (
                    dbapi.timeout_setting + b"SET LOCAL app.user_id = " + owner.getquoted() + b";"
                )
                dbapi.prefix = dbapi.then = self._settings
        return conn

    def close(self) -> None:
        """Give the connection back; drop it instead if it is broken or mid-transaction.

        Does no I/O (it may run on the event loop): an autocommit connection's rollback on
        return is a no-op, and dropping a connection only closes its socket.
        """
        conn, dbapi = self._conn, self._dbapi
        self._conn = self._dbapi = None
        if conn is None:
            return
        if not conn.invalidated and _left_mid_transaction(dbapi):
            conn.invalidate()
        guard(dbapi)
        conn.close()


def _diagnostic(error: DBAPIError, field: str) -> str | None:
    """One of PostgreSQL's fields of the error (psycopg2's `diag`), None without it."""
    return getattr(getattr(error.orig, "diag", None), field, None)


def _waited_on(error: DBAPIError, table: str) -> bool:
    # "while inserting index tuple (0,2) in relation "idempotency_keys_pkey"" (in the server's
    # language): the relation's name is all that is read. No context: nothing to tell it by.
    context = _diagnostic(error, "context")
    return context is None or table in context


def _left_mid_transaction(dbapi: Any) -> bool:
    if isinstance(dbapi, psycopg2.extensions.connection):
        return bool(dbapi.closed) or dbapi.get_transaction_status() != _IDLE
    return bool(getattr(dbapi, "in_transaction", False))
