"""Alembic environment: runs on the connection todo_api.migrate hands it (or alembic.ini's URL)."""

import logging
import time

from alembic import context
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.exc import OperationalError
from sqlmodel import SQLModel

from todo_api import (
    auth_schema,  # noqa: F401  (Better Auth's tables, on the same metadata)
    idempotency_table,  # noqa: F401  (the idempotency_keys table)
)
from todo_api.config import Settings
from todo_api.db import normalise_url
from todo_api.tasks import models  # noqa: F401  (registers the tables on the metadata)

target_metadata = SQLModel.metadata
LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE when lock_timeout expires
log = logging.getLogger("todo_api.migrate")


def _run(connection: Connection, settings: Settings) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",
        # Every pending revision in the caller's single transaction, which also holds the
        # migration lock (todo_api.migrate): all or nothing, and correct through a pooler.
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            _run_with_short_lock_waits(connection, settings)
        else:
            context.run_migrations()


def _run_with_short_lock_waits(connection: Connection, settings: Settings) -> None:
    """The migrations with a short lock_timeout, tried again when it expires.

    A statement that waits for a table lock (ALTER TABLE behind a long transaction) makes every
    request on that table queue behind it, so the wait is cut short: the attempt is rolled back
    to a savepoint (releasing its locks, and letting the queue through), and tried again a
    moment later. The longest stall a release causes is then about one lock timeout
    (specs/migrations.md); the savepoint keeps it all in the caller's one transaction.
    """
    timeout_ms = str(round(settings.migration_ddl_lock_timeout_seconds * 1000))
    for attempt in range(1, settings.migration_ddl_attempts + 1):
        savepoint = connection.begin_nested()
        connection.execute(text("SELECT set_config('lock_timeout', :ms, true)"), {"ms": timeout_ms})
        try:
            context.run_migrations()
        except OperationalError as error:
            savepoint.rollback()
            if _sqlstate(error) != LOCK_NOT_AVAILABLE or attempt == settings.migration_ddl_attempts:
                raise
            pause = min(0.5 * 2 ** (attempt - 1), 5.0)
            log.warning(
                "migration waited over %ss for a lock (attempt %d of %d); again in %.1fs",
                settings.migration_ddl_lock_timeout_seconds,
                attempt,
                settings.migration_ddl_attempts,
                pause,
            )
            time.sleep(pause)
            continue
        savepoint.commit()
        return


def _sqlstate(error: OperationalError) -> str | None:
    return getattr(error.orig, "pgcode", None)


connection = context.config.attributes.get("connection")
settings = context.config.attributes.get("settings") or Settings()
if connection is not None:
    _run(connection, settings)
else:
    url = context.config.get_main_option("sqlalchemy.url") or settings.migration_url
    engine = create_engine(normalise_url(url))
    with engine.connect() as new_connection:
        _run(new_connection, settings)
        new_connection.commit()
