"""Better Auth's own tables (sessions, accounts, verifications, jwks), owned by our migrations.

The API never reads them: they are declared here so that one `todo-api migrate` creates the whole
schema the Better Auth companion (deploy/better-auth) needs, and so that the drift test covers
them. Names and columns follow the companion's configuration (`modelName` and snake_case
`fields` in deploy/better-auth/auth.mjs); a test asks Better Auth's migration planner to confirm
that it would change nothing. Every row belongs to a user and goes when the user goes.
"""

from sqlalchemy import Column, ForeignKey, Index, Table, Text, func
from sqlmodel import SQLModel

from todo_api.db import UtcDateTime


def _user_id() -> Column[str]:
    return Column("user_id", Text, ForeignKey("users.id", ondelete="CASCADE"), nullable=False)


def _created_at() -> Column[object]:
    return Column("created_at", UtcDateTime, nullable=False, server_default=func.now())


sessions = Table(
    "sessions",
    SQLModel.metadata,
    Column("id", Text, primary_key=True),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("token", Text, nullable=False, unique=True),
    _created_at(),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("ip_address", Text),
    Column("user_agent", Text),
    _user_id(),
    Index("sessions_user_id_idx", "user_id"),
)

accounts = Table(
    "accounts",
    SQLModel.metadata,
    Column("id", Text, primary_key=True),
    Column("account_id", Text, nullable=False),
    Column("provider_id", Text, nullable=False),
    _user_id(),
    Column("access_token", Text),
    Column("refresh_token", Text),
    Column("id_token", Text),
    Column("access_token_expires_at", UtcDateTime),
    Column("refresh_token_expires_at", UtcDateTime),
    Column("scope", Text),
    Column("password", Text),  # a password hash (scrypt), never the password
    _created_at(),
    Column("updated_at", UtcDateTime, nullable=False),
    Index("accounts_user_id_idx", "user_id"),
)

verifications = Table(
    "verifications",
    SQLModel.metadata,
    Column("id", Text, primary_key=True),
    Column("identifier", Text, nullable=False),
    Column("value", Text, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    _created_at(),
    Column("updated_at", UtcDateTime, nullable=False, server_default=func.now()),
    Index("verifications_identifier_idx", "identifier"),
)

# The JWT plugin's signing keys; private keys are encrypted with BETTER_AUTH_SECRET.
jwks = Table(
    "jwks",
    SQLModel.metadata,
    Column("id", Text, primary_key=True),
    Column("public_key", Text, nullable=False),
    Column("private_key", Text, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime),
    Column("alg", Text),
    Column("crv", Text),
)
