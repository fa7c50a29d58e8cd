"""Apply Alembic migrations (the schema's only source), safe when several processes start."""

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, text

from todo_api.config import Settings
from todo_api.db import create_db_engine

# Any fixed 64-bit number that no other tool sharing the database uses as an advisory lock key.
PG_LOCK_KEY = 0x746F646F  # b'todo'


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", "todo_api:migrations")
    return config


def migrate(settings: Settings, revision: str = "head", *, downgrade: bool = False) -> None:
    """Upgrade (or downgrade) the database at DATABASE_URL_DIRECT, else DATABASE_URL.

    The whole run is one transaction, so it works through a transaction-mode pooler (Neon's
    pooled URL) as well as on a direct connection: PgBouncer keeps a transaction on one server
    connection, and nothing outlives the transaction on the connection it leaves behind.
    """
    engine = create_db_engine(settings, url=settings.migration_url, pooled=False)
    try:
        with engine.connect() as conn, _exclusive(engine, conn, settings):
            config = alembic_config()
            config.attributes["connection"] = conn
            config.attributes["settings"] = settings
            if downgrade:
                command.downgrade(config, revision)
            else:
                command.upgrade(config, revision)
            conn.commit()
    finally:
        engine.dispose()


@contextmanager
def _exclusive(engine: Engine, conn: Connection, settings: Settings) -> Iterator[None]:
    """Let one migrating process at a time in; the others wait, then find nothing left to do."""
    if conn.dialect.name == "postgresql":
        # A transaction-scoped advisory lock, taken in the transaction that then runs the whole
        # upgrade: released by its COMMIT or ROLLBACK, never left behind on a pooled server
        # connection (a session lock through a transaction-mode pooler lands on whichever server
        # connection runs that statement, and stays there). Both waits are bounded: a stuck
        # migrator or a long-held table lock fails this run with an error instead of a hang.
        conn.execute(
            text(
                "SELECT set_config('lock_timeout', :lock_ms, true),"
                " set_config('statement_timeout', :statement_ms, true)"
            ),
            {
                "lock_ms": _milliseconds(settings.migration_lock_timeout_seconds),
                "statement_ms": _milliseconds(settings.migration_statement_timeout_seconds),
            },
        )
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})
        yield
        return
    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    with Path(database + ".migrate.lock").open("a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _milliseconds(seconds: float) -> str:
    return str(round(seconds * 1000))
