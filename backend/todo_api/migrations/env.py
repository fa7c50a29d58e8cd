"""Alembic environment: runs on the connection todo_api.migrate hands it (or alembic.ini's URL)."""

from alembic import context
from sqlalchemy import Connection, create_engine
from sqlmodel import SQLModel

from todo_api import (
    auth_schema,  # noqa: F401  (Better Auth's tables, on the same metadata)
    idempotency,  # noqa: F401  (the idempotency_keys table)
)
from todo_api.db import normalise_url
from todo_api.tasks import models  # noqa: F401  (registers the tables on the metadata)

target_metadata = SQLModel.metadata


def _run(connection: Connection) -> None:
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
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    from todo_api.config import Settings

    url = context.config.get_main_option("sqlalchemy.url") or Settings().migration_url
    engine = create_engine(normalise_url(url))
    with engine.connect() as new_connection:
        _run(new_connection)
        new_connection.commit()
