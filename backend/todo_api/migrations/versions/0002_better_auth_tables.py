"""Better Auth's tables: sessions, accounts, verifications, jwks

The companion in deploy/better-auth shares the `users` table (0001) and keeps its sessions,
password accounts, verification tokens and JWT signing keys in these tables, with the names and
snake_case columns its configuration maps (deploy/better-auth/auth.mjs). They are created here
rather than by Better Auth's own migrate command so that one `todo-api migrate` creates the whole
schema; every user-owned row is deleted with its user (ON DELETE CASCADE).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from todo_api.db import UtcDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _user_id() -> sa.Column[str]:
    return sa.Column("user_id", sa.Text(), nullable=False)


def _owned_by_user() -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE")


def _created_at() -> sa.Column[object]:
    return sa.Column("created_at", UtcDateTime(), server_default=sa.func.now(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
        sa.Column("token", sa.Text(), nullable=False),
        _created_at(),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("ip_address", sa.Text(), nullable=True),
        sa.Column("user_agent", sa.Text(), nullable=True),
        _user_id(),
        _owned_by_user(),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token"),
    )
    op.create_index("sessions_user_id_idx", "sessions", ["user_id"])
    op.create_table(
        "accounts",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("account_id", sa.Text(), nullable=False),
        sa.Column("provider_id", sa.Text(), nullable=False),
        _user_id(),
        sa.Column("access_token", sa.Text(), nullable=True),
        sa.Column("refresh_token", sa.Text(), nullable=True),
        sa.Column("id_token", sa.Text(), nullable=True),
        sa.Column("access_token_expires_at", UtcDateTime(), nullable=True),
        sa.Column("refresh_token_expires_at", UtcDateTime(), nullable=True),
        sa.Column("scope", sa.Text(), nullable=True),
        sa.Column("password", sa.Text(), nullable=True),
        _created_at(),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        _owned_by_user(),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("accounts_user_id_idx", "accounts", ["user_id"])
    op.create_table(
        "verifications",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("identifier", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
        _created_at(),
        sa.Column("updated_at", UtcDateTime(), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("verifications_identifier_idx", "verifications", ["identifier"])
    op.create_table(
        "jwks",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("private_key", sa.Text(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=True),
        sa.Column("alg", sa.Text(), nullable=True),
        sa.Column("crv", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("jwks")
    op.drop_index("verifications_identifier_idx", table_name="verifications")
    op.drop_table("verifications")
    op.drop_index("accounts_user_id_idx", table_name="accounts")
    op.drop_table("accounts")
    op.drop_index("sessions_user_id_idx", table_name="sessions")
    op.drop_table("sessions")
