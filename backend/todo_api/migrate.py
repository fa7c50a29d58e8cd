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
_PG_LOCK_KEY = 0x746F646F  # b'todo'


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", "todo_api:migrations")
    return config


def migrate(settings: Settings, revision: str = "head", *, downgrade: bool = False) -> None:
    """Upgrade (or downgrade) the database at DATABASE_URL_DIRECT, else DATABASE_URL."""
    engine = create_db_engine(settings, url=settings.migration_url, pooled=False)
    try:
        with engine.connect() as conn, _exclusive(engine, conn):
            config = alembic_config()
            config.attributes["connection"] = conn
            if downgrade:
                command.downgrade(config, revision)
            else:
                command.upgrade(config, revision)
            conn.commit()
    finally:
        engine.dispose()


@contextmanager
def _exclusive(engine: Engine, conn: Connection) -> Iterator[None]:
    """Hold a lock that only one migrating process at a time can have."""
    if conn.dialect.name == "postgresql":
        # A session-level advisory lock: the others wait here, then find nothing left to do.
        conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _PG_LOCK_KEY})
        conn.commit()
        try:
            yield
        finally:
            conn.rollback()
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _PG_LOCK_KEY})
            conn.commit()
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
