"""One schema for the API and the Better Auth companion: Better Auth's own migration planner finds
nothing to change after `todo-api migrate`, and a user's deletion takes everything of theirs."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.support import bearer, running_app, settings_for
from tests.support.better_auth_stack import Companion, schema_check
from todo_api.db import normalise_url
from todo_api.migrate import migrate

# The one difference Better Auth reports, on purpose: the API also creates users from token
# claims alone (HS256 tokens may carry no email), so users.email stays nullable; Better Auth
# always writes one, and the unique constraint still holds.
ACCEPTED_WARNING = 'Column "email" on table "users" stays nullable'
USER_TABLES = ["tasks", "sessions", "accounts"]


@pytest.fixture
def migrated_pg(postgres) -> Iterator[str]:
    url = postgres.create_database()
    migrate(settings_for(url))
    yield url
    postgres.drop_database(url)


def execute(url: str, *statements: str, **params: str) -> None:
    engine = sa.create_engine(normalise_url(url))
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(sa.text(statement), params)
    finally:
        engine.dispose()


def counts(url: str, user_id: str) -> dict[str, int]:
    engine = sa.create_engine(normalise_url(url))
    try:
        with engine.connect() as conn:
            return {
                table: conn.execute(
                    sa.text(f"SELECT count(*) FROM {table} WHERE user_id = :id"),
                    {"id": user_id},
                ).scalar_one()
                for table in USER_TABLES
            }
    finally:
        engine.dispose()


class TestOneSchema:
    def test_better_auths_planner_finds_nothing_to_create_or_add(self, migrated_pg):
        report = schema_check(migrated_pg)
        assert report["toBeCreated"] == []
        assert report["toBeAdded"] == []
        assert report["toBeAddedIndexes"] == []
        assert report["unsafeChanges"] == []
        assert report["schemaProblems"] == []
        warnings = [w for w in report["warnings"] if ACCEPTED_WARNING not in w]
        assert warnings == [], "Better Auth sees a type or nullability difference"

    def test_the_planner_notices_a_missing_table_or_column(self, migrated_pg):
        # The check above can fail: take away what Better Auth needs and it says so.
        execute(
            migrated_pg, "DROP TABLE verifications", "ALTER TABLE sessions DROP COLUMN user_agent"
        )
        report = schema_check(migrated_pg)
        assert [entry["table"] for entry in report["toBeCreated"]] == ["verifications"]
        assert report["toBeAdded"] == [{"table": "sessions", "fields": ["user_agent"]}]


@pytest.mark.slow
class TestSharedUsers:
    def test_a_signed_up_user_is_the_row_tasks_point_at_and_deleting_it_deletes_all_theirs(
        self, migrated_pg, tmp_path: Path
    ):
        companion = Companion(migrated_pg, tmp_path / "companion.log")
        settings = settings_for(migrated_pg, better_auth_secret=None, better_auth_url=companion.url)
        try:
            companion.start()
            with running_app(settings) as api, httpx.Client(timeout=30) as browser:
                user_id = companion.sign_up(browser, "ada@example.com", name="Ada")
                token = companion.token(browser)
                for title in ("one", "two"):
                    created = api.post(
                        f"/api/{user_id}/tasks", json={"title": title}, headers=bearer(token)
                    )
                    assert created.status_code == 201, created.text
                assert counts(migrated_pg, user_id) == {"tasks": 2, "sessions": 1, "accounts": 1}
                execute(migrated_pg, "DELETE FROM users WHERE id = :id", id=user_id)
                assert counts(migrated_pg, user_id) == {"tasks": 0, "sessions": 0, "accounts": 0}
        finally:
            companion.stop()


@pytest.mark.slow
def test_trusted_origins_come_from_the_environment(migrated_pg, tmp_path: Path):
    trusted = "http://app.example:3000"
    companion = Companion(
        migrated_pg, tmp_path / "companion.log", BETTER_AUTH_TRUSTED_ORIGINS=trusted
    )
    body = {"email": "origin@example.com", "password": "correct horse battery", "name": "O"}
    try:
        companion.start()
        url = f"{companion.url}/api/auth/sign-up/email"
        refused = httpx.post(url, json=body, headers={"Origin": "http://evil.example"})
        assert (refused.status_code, refused.json()["code"]) == (403, "INVALID_ORIGIN")
        assert httpx.post(url, json=body, headers={"Origin": trusted}).status_code == 200
    finally:
        companion.stop()


def test_sqlite_deletes_a_users_sessions_accounts_and_tasks_with_the_user(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'cascade.db'}"
    migrate(settings_for(url))
    now = "'2026-01-01 00:00:00+00:00'"
    engine = sa.create_engine(url)
    sa.event.listen(engine, "connect", lambda conn, _: conn.execute("PRAGMA foreign_keys=ON"))
    with engine.begin() as conn:
        for statement in (
            "INSERT INTO users (id, email) VALUES ('u1', 'u1@example.com')",
            "INSERT INTO tasks (user_id, title) VALUES ('u1', 't')",
            f"INSERT INTO sessions (id, expires_at, token, updated_at, user_id) "
            f"VALUES ('s1', {now}, 'tok', {now}, 'u1')",
            f"INSERT INTO accounts (id, account_id, provider_id, user_id, updated_at) "
            f"VALUES ('a1', 'u1', 'credential', 'u1', {now})",
            "DELETE FROM users WHERE id = 'u1'",
        ):
            conn.execute(sa.text(statement))
    engine.dispose()
    assert counts(url, "u1") == {"tasks": 0, "sessions": 0, "accounts": 0}
