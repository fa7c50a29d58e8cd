"""tasks.version (ETags) and idempotency_keys (the Idempotency-Key header)

`tasks.version` starts at 1 and every UPDATE adds one: with `created_at` it makes the task's
strong ETag, which two quick updates within one clock tick could not get from `updated_at`.

`idempotency_keys` keeps, per user and key, the fingerprint of the first request and, once that
request has finished, the answer it got (see todo_api/idempotency.py).

Row-level security on PostgreSQL as on tasks, with one difference: rows past `expires_at` are
visible to every user, so that any request can purge them (a DELETE's WHERE clause needs the
rows to be visible, and no cron job is run). Live keys stay the owner's alone, and a row can only
be written in the request's own user's name.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from todo_api.db import UtcDateTime

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OWNER = "user_id = NULLIF(current_setting('app.user_id', true), '')"


def upgrade() -> None:
    op.add_column("tasks", sa.Column("version", sa.Integer(), server_default="1", nullable=False))
    op.create_table(
        "idempotency_keys",
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("claim", sa.String(length=32), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("response_headers", sa.Text(), nullable=True),
        sa.Column("response_body", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "key"),
    )
    op.create_index("ix_idempotency_keys_expires_at", "idempotency_keys", ["expires_at"])
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE idempotency_keys ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE idempotency_keys FORCE ROW LEVEL SECURITY")
    op.execute(
        f"""
        CREATE POLICY idempotency_keys_owner ON idempotency_keys FOR ALL
        USING ({_OWNER} OR expires_at < now())
        WITH CHECK ({_OWNER})
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP POLICY idempotency_keys_owner ON idempotency_keys")
    op.drop_index("ix_idempotency_keys_expires_at", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("version")
