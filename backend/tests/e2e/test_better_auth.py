"""One schema for the API and the Better Auth companion: Better Auth's own migration planner finds
nothing to change after `todo-api migrate`, and a user's deletion takes everything of theirs. And
the companion's sign-in limits: per client address, which forged headers do not change."""

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.support import bearer, running_app, settings_for
from tests.support.better_auth_stack import (
    COMPANION,
    COMPANION_SECRET,
    Companion,
    client_from,
    node,
    schema_check,
)
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


@pytest.fixture
def production_companion(migrated_pg, tmp_path: Path) -> Iterator[Callable[..., Companion]]:
    """Starts the companion as its image runs it (NODE_ENV=production: Better Auth rate-limits)
    with the environment variables given, and signs up ada@example.com from an address no test
    below uses."""
    started: list[Companion] = []

    def start(**env: str) -> Companion:
        companion = Companion(migrated_pg, tmp_path / "companion.log", NODE_ENV="production", **env)
        started.append(companion)
        companion.start()
        with client_from("127.0.0.9") as client:
            companion.sign_up(client, "ada@example.com")
        return companion

    yield start
    for companion in started:
        companion.stop()


WRONG = "not the password"


@pytest.mark.slow
class TestSignInRateLimit:
    """Better Auth allows 3 sign-ins per 10 s per client address. The companion tells it the
    address of the socket's peer, or, from a trusted proxy (TRUSTED_PROXIES), the nearest
    address in X-Forwarded-For that is not a trusted proxy's."""

    def test_one_clients_failures_do_not_lock_out_another(self, production_companion):
        companion = production_companion()
        with client_from("127.0.0.2") as attacker, client_from("127.0.0.3") as ada:
            assert [companion.sign_in(attacker, "ada@example.com", WRONG) for _ in range(4)] == [
                401,
                401,
                401,
                429,
            ]
            assert companion.sign_in(ada, "ada@example.com") == 200
        # What Better Auth says when it puts every client in one bucket.
        assert "could not determine a client IP" not in companion.log()

    def test_a_forged_x_forwarded_for_does_not_reset_the_limit(self, production_companion):
        companion = production_companion()
        with client_from("127.0.0.4") as attacker:
            statuses = [
                companion.sign_in(
                    attacker, "ada@example.com", WRONG, **{"X-Forwarded-For": f"203.0.113.{i}"}
                )
                for i in range(1, 9)
            ]
        assert statuses == [401] * 3 + [429] * 5

    def test_behind_trusted_proxies_each_forwarded_client_has_its_own_limit(
        self, production_companion
    ):
        companion = production_companion(TRUSTED_PROXIES="127.0.0.5, 127.0.0.6/32")
        with client_from("127.0.0.5") as proxy:
            # Through two trusted proxies (127.0.0.6 appended the address 127.0.0.5 saw); what
            # the client itself wrote on the left changes with each attempt and counts for nothing.
            statuses = [
                companion.sign_in(
                    proxy,
                    "ada@example.com",
                    WRONG,
                    **{"X-Forwarded-For": f"203.0.113.{i}, 198.51.100.1, 127.0.0.6"},
                )
                for i in range(1, 6)
            ]
            assert statuses == [401] * 3 + [429] * 2
            ada = {"X-Forwarded-For": "198.51.100.2, 127.0.0.6"}
            assert companion.sign_in(proxy, "ada@example.com", **ada) == 200

    def test_a_client_that_bypasses_the_proxy_is_its_own_address(self, production_companion):
        companion = production_companion(TRUSTED_PROXIES="127.0.0.5")
        ada = {"X-Forwarded-For": "198.51.100.2"}
        with client_from("127.0.0.7") as direct:
            # It claims to be ada's address, and is refused as itself.
            statuses = [
                companion.sign_in(direct, "ada@example.com", WRONG, **ada) for _ in range(4)
            ]
            assert statuses == [401] * 3 + [429]
        with client_from("127.0.0.5") as proxy:
            assert companion.sign_in(proxy, "ada@example.com", **ada) == 200


@pytest.mark.parametrize("proxies", ["*", "10.0.0.0/33", "proxy.internal", "10.0.0.1, 10.0.0"])
def test_a_trusted_proxy_that_is_no_address_stops_the_start(proxies):
    result = subprocess.run(
        [node(), "server.mjs"],
        cwd=COMPANION,
        env={
            "PATH": os.environ.get("PATH", ""),
            "DATABASE_URL": "postgresql://127.0.0.1:1/never-reached",
            "BETTER_AUTH_URL": "http://127.0.0.1:3001",
            "BETTER_AUTH_SECRET": COMPANION_SECRET,
            "TRUSTED_PROXIES": proxies,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "is not an IP address or CIDR range" in result.stderr
