"""tasks: row-level security (PostgreSQL)

PostgreSQL itself keeps each user to their own tasks, whatever a query's WHERE clause says: the
policy compares `user_id` with the request's user, which todo_api.db sends as the
transaction-local setting `app.user_id` together with each statement. Unset (NULL, or '' once a
transaction-local value has ended on that session) matches no row: it fails closed.

FORCE makes the policy apply to the table's owner too (the role that runs the migrations, which
is usually the app's role as well). Superusers and BYPASSRLS roles still skip it: see README.
SQLite has no row-level security; it keeps the WHERE clauses only.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE tasks ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE tasks FORCE ROW LEVEL SECURITY")
    # One policy for every command: USING filters what SELECT, UPDATE and DELETE can see,
    # WITH CHECK refuses an INSERT or UPDATE that would write a row for someone else.
    op.execute(
        """
        CREATE POLICY tasks_owner ON tasks FOR ALL
        USING (user_id = NULLIF(current_setting('app.user_id', true), ''))
        WITH CHECK (user_id = NULLIF(current_setting('app.user_id', true), ''))
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP POLICY tasks_owner ON tasks")
    op.execute("ALTER TABLE tasks NO FORCE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE tasks DISABLE ROW LEVEL SECURITY")
