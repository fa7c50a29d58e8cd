"""A time bound on every statement of the request engine, kept by the server and by the client.

The server's: `statement_timeout`, sent as `SET LOCAL` with each transaction's first statement
(todo_api/driver.py). A session-level SET would leak to other clients through a
transaction-mode pooler, and Neon's pooler ignores the startup `options` parameter.

The client's: `statement_timeout` cannot see the time a statement spends queued in a pooler (Neon's
queues a client for up to 120 s) or waiting on an unreachable server. A watchdog thread cancels an
overdue statement through libpq (libpq 17's PQcancelBlocking, bounded by connect_timeout; with an
older libpq, PQcancel in a thread of its own, waited for at most connect_timeout), then shuts its
connection's socket down, which unblocks the waiting thread at once (PgBouncer drops a cancel
request for a client that is still in its queue). The statement then fails with `StatementTimeout`,
and its connection is closed, so the pool replaces it and a late cancel can never hit a later
statement. psycopg2 has no client-side timeout of its own, hence this small hand-written one.
"""

import ctypes
import os
import socket
import threading
import time
from typing import Any

# psycopg2 ships no type hints (and types-psycopg2 is not a dependency): its names are Any here.
import psycopg2  # type: ignore[import-untyped]
import psycopg2._psycopg  # type: ignore[import-untyped]
import psycopg2.extensions  # type: ignore[import-untyped]
from psycopg2.errors import QueryCanceled  # type: ignore[import-untyped]


def is_timeout(error: BaseException) -> bool:
    """The database error under a SQLAlchemy one is a statement timeout or a client deadline."""
    return isinstance(getattr(error, "orig", None), QueryCanceled)


class StatementTimeout(QueryCanceled):  # type: ignore[misc]
    """A statement did not complete within DB_CLIENT_TIMEOUT_SECONDS; it may have been applied."""


class Watchdog:
    """Abandons statements that run past their deadline (one thread per engine)."""

    def __init__(
        self, seconds: float, *, legacy_cancel: bool = False, cancel_wait: float = 5
    ) -> None:
        self.seconds = seconds
        self.legacy_cancel = legacy_cancel or _LIBPQ is None
        self.cancel_wait = cancel_wait
        # id(cursor) -> (deadline, connection, socket fd), for the statements now running.
        self._running: dict[int, tuple[float, Any, int]] = {}
        self._abandoning: set[int] = set()
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="db-deadlines", daemon=True)
        self._thread.start()

    def start(self, key: int, connection: Any) -> None:
        # Only a dict insert: the watchdog never needs waking (see _watch).
        self._running[key] = (time.monotonic() + self.seconds, connection, connection.fileno())

    def finish(self, key: int) -> bool:
        """Stop watching; True if the statement was abandoned (its connection is unusable)."""
        with self._lock:
            if self._running.pop(key, None) is not None:
                return False
            # The watchdog took it: wait until it is done with the connection.
            self._lock.wait_for(lambda: key not in self._abandoning)
            return True

    def stop(self) -> None:
        # No join: this may run in a garbage collection on any thread, this one's included.
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                now = time.monotonic()
                # A snapshot (dict.copy() is one C-level step, which no other thread's insert can
                # interleave with): start() inserts without the lock.
                running = list(self._running.copy().items())
                due = [key for key, (deadline, _, _) in running if deadline <= now]
                overdue = [self._running.pop(key) for key in due]
                self._abandoning.update(due)
                deadlines = [deadline for key, (deadline, _, _) in running if key not in due]
                upcoming = min(deadlines, default=None)
            for key, (_, connection, fd) in zip(due, overdue, strict=True):
                # A thread each: a cancel may wait up to connect_timeout on a silent pooler, and
                # neither the other overdue statements nor the next deadlines wait behind it.
                threading.Thread(
                    target=self._abandon, args=(key, connection, fd), name="db-cancel", daemon=True
                ).start()
            if due:
                continue
            # Every deadline is `seconds` after its statement starts, so a statement that starts
            # while this sleeps is due after it wakes: nothing on the request path signals the
            # thread, and an idle process wakes once every `seconds`.
            wake = upcoming if upcoming is not None else now + self.seconds
            self._stop.wait(max(wake - time.monotonic(), 0))

    def _abandon(self, key: int, connection: Any, fd: int) -> None:
        try:
            _abandon(connection, fd, self.legacy_cancel, self.cancel_wait)
        finally:
            with self._lock:
                self._abandoning.discard(key)
                self._lock.notify_all()


def _abandon(connection: Any, fd: int, legacy: bool, wait: float) -> None:
    # The cancel stops a statement that runs (or waits on a lock) on the server, so that it is
    # not applied later; the shutdown frees a client still queued in a pooler, which drops it.
    # The cancel goes first: a pooler drops a cancel for a client that has already gone.
    if legacy:
        _cancel_unbounded(connection, wait)
    else:
        _cancel(connection)
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _libpq() -> Any:
    """libpq's cancel functions, from the library psycopg2 itself is linked with.

    psycopg2's `connection.cancel()` holds the interpreter lock through the whole cancel
    request, with no time bound: a pooler or server that stops answering froze every thread of
    the worker. A ctypes call releases the interpreter lock; libpq 17's PQcancelBlocking also
    honours the connection's connect_timeout. psycopg2 offers neither, hence these few lines.
    """
    library = ctypes.CDLL(psycopg2._psycopg.__file__)  # dlsym also searches its libpq
    library.PQgetCancel.argtypes = [ctypes.c_void_p]
    library.PQgetCancel.restype = ctypes.c_void_p
    library.PQcancel.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    library.PQcancel.restype = ctypes.c_int
    library.PQfreeCancel.argtypes = [ctypes.c_void_p]
    library.PQfreeCancel.restype = None
    if hasattr(library, "PQcancelCreate"):
        library.PQcancelCreate.argtypes = [ctypes.c_void_p]
        library.PQcancelCreate.restype = ctypes.c_void_p
        library.PQcancelBlocking.argtypes = [ctypes.c_void_p]
        library.PQcancelBlocking.restype = ctypes.c_int
        library.PQcancelFinish.argtypes = [ctypes.c_void_p]
        library.PQcancelFinish.restype = None
    return library


_LIBPQ = _libpq()
# Unbounded cancels still waiting (legacy only): past this many, an overdue statement is only
# cut off, and the server's statement_timeout ends it; no thread piles up behind a dead pooler.
_UNBOUNDED_CANCELS = threading.BoundedSemaphore(8)


def bounded_cancel_available() -> bool:
    """Whether psycopg2's libpq has PQcancelBlocking (libpq 17 and later)."""
    return hasattr(_LIBPQ, "PQcancelCreate")


def cancel_warning(legacy: bool) -> str | None:
    """The start-up line for a worker whose overdue statements get the unbounded cancel."""
    if not legacy and bounded_cancel_available():
        return None
    version = psycopg2.extensions.libpq_version()
    reason = "DB_CANCEL_API=legacy" if bounded_cancel_available() else f"libpq {version}"
    return (
        f"{reason}: no PQcancelBlocking (libpq >= 17), so an overdue statement's cancel request "
        "runs unbounded in a background thread; requests still end at DB_CLIENT_TIMEOUT_SECONDS "
        "(plus DB_CONNECT_TIMEOUT at most). To bound it, install psycopg2-binary (it bundles "
        "libpq 17) or build psycopg2 against libpq >= 17"
    )


def _cancel(connection: Any) -> None:
    pgconn = connection.pgconn_ptr  # None once closed
    if pgconn is None:
        return
    cancel = _LIBPQ.PQcancelCreate(pgconn)
    if cancel:
        try:
            _LIBPQ.PQcancelBlocking(cancel)  # a failure is the pooler's or server's silence
        finally:
            _LIBPQ.PQcancelFinish(cancel)


def _cancel_unbounded(connection: Any, wait: float) -> None:
    """PQcancel in a thread of its own, waited for at most `wait` seconds."""
    pgconn = connection.pgconn_ptr
    if pgconn is None or not _UNBOUNDED_CANCELS.acquire(blocking=False):
        return
    # A copy of what the cancel needs (address, keys): independent of the connection, which
    # may be closed while the request is still on its way.
    cancel = _LIBPQ.PQgetCancel(pgconn)
    if not cancel:
        _UNBOUNDED_CANCELS.release()
        return

    def send() -> None:
        try:
            _LIBPQ.PQcancel(cancel, ctypes.create_string_buffer(256), 256)
        finally:
            _LIBPQ.PQfreeCancel(cancel)
            _UNBOUNDED_CANCELS.release()

    sender = threading.Thread(target=send, name="db-cancel-unbounded", daemon=True)
    sender.start()
    sender.join(wait)
