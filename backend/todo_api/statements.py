"""Statements built once, at import, and compiled once per dialect (`Prepared`), and the rows
the unit of work (todo_api/unit_of_work.py) answers for them.
"""

from collections.abc import Iterable, Iterator
from datetime import UTC
from typing import Any, Generic, Protocol, TypeVar, cast

from sqlalchemy import ClauseElement, Delete, Dialect, Executable, Insert, Update
from sqlalchemy.engine.interfaces import Compiled

from todo_api.db import UtcDateTime, in_utc


class Rows(Protocol):
    """A statement's result as the services read it: a SQLAlchemy result, or DriverRows."""

    @property
    def rowcount(self) -> int: ...

    def first(self) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...


# The statement a Prepared holds (a Select, an Update...), so that its `.statement` keeps its type.
S = TypeVar("S", bound=Executable, covariant=True)
DML = Insert | Update | Delete

# A Prepared's setting for a statement that must read an index in its order, whatever the
# planner's statistics say. Expecting few rows (statistics taken when the table, or the owner's
# share of it, was smaller), PostgreSQL would rather read every matching row and sort them than
# stop after the LIMIT. It has no hints: disabling sorts, for this statement only, is the
# narrowest way to tell it.
IN_INDEX_ORDER = "SET LOCAL enable_sort = off;"


class Prepared(Generic[S]):
    """A statement built once, at import, and compiled once per dialect.

    On PostgreSQL the unit of work runs it straight on the driver's cursor: SQLAlchemy's work
    per execution (the statement's cache key, an execution context, result rows) cost about a
    tenth of a worker's CPU on a GET, more than PostgreSQL spent running the statement. What
    that work did for these statements is done here: parameters are bound by name (the
    compiled statement's own `construct_params`), timestamps come back in UTC (UtcDateTime's
    rule), and driver errors are raised as SQLAlchemy's (a broken connection invalidated).
    Elsewhere (SQLite) the statement goes through SQLAlchemy as any other.

    `setting`: PostgreSQL settings (`SET LOCAL ...;`) for this statement alone, sent in front of
    it. Only for a statement that runs on its own, outside a transaction: a SET LOCAL lasts to
    the end of the transaction, which is then the statement's. It goes through the driver's
    parameter formatting with the statement, so it holds no `%`.
    """

    __slots__ = ("_compiled", "setting", "statement", "timestamps")

    def __init__(self, statement: S, setting: str = "") -> None:
        if "%" in setting:
            raise ValueError(f"a statement's setting holds no %: {setting!r}")
        self.statement = statement
        self.setting = setting
        self._compiled: dict[tuple[str, frozenset[str]], Compiled] = {}
        columns = getattr(statement, "exported_columns", ())
        # The positions of timestamp columns in its rows (the only type with a result rule).
        self.timestamps = tuple(
            index for index, column in enumerate(columns) if isinstance(column.type, UtcDateTime)
        )

    def compiled(self, dialect: Dialect, keys: Iterable[str]) -> Compiled:
        # Per set of parameter names too: an INSERT without .values() takes its columns from
        # them, as SQLAlchemy's execution does (a call site always passes the same names).
        names = frozenset(keys)
        compiled = self._compiled.get((dialect.name, names))
        if compiled is None:
            statement = cast(ClauseElement, self.statement)
            compiled = statement.compile(dialect=dialect, column_keys=sorted(names))
            self._compiled[dialect.name, names] = compiled
        return compiled


class DriverRows:
    """A Prepared statement's rows, as tuples, and its row count."""

    __slots__ = ("rowcount", "rows")

    def __init__(self, rows: list[tuple[Any, ...]], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount

    def first(self) -> tuple[Any, ...] | None:
        return self.rows[0] if self.rows else None

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.rows)


def in_utc_rows(rows: list[tuple[Any, ...]], timestamps: tuple[int, ...]) -> list[tuple[Any, ...]]:
    # PostgreSQL answers in the session's time zone; UTC is the rule (UtcDateTime's, db.in_utc).
    # A row is only rebuilt when one of its timestamps is not in UTC already.
    for number, row in enumerate(rows):
        if any(row[i] is not None and row[i].tzinfo is not UTC for i in timestamps):
            values = list(row)
            for i in timestamps:
                if values[i] is not None:
                    values[i] = in_utc(values[i])
            rows[number] = tuple(values)
    return rows
