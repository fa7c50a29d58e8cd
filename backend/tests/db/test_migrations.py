"""Migrations are the schema's only source: up, down, no drift, concurrent starts (directly and
through a transaction-mode pooler), index use."""

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import make_url
from sqlmodel import SQLModel

from tests.server.test_server_process import gunicorn
from tests.support import SECRET, PostgresServer, auth, running_app, settings_for
from tests.support.pooler import PgBouncer
from todo_api import auth_schema  # noqa: F401
from todo_api.db import normalise_url
from todo_api.migrate import PG_LOCK_KEY, migrate
from todo_api.tasks import models  # noqa: F401
from todo_api.tasks.service import LIST_STATEMENTS

BIN = Path(sys.executable).parent
ROUNDS, MIGRATORS = 6, 4


@pytest.fixture
def fresh_pg(postgres):
    url = postgres.create_database()
    yield url
    postgres.drop_database(url)


def table_names(url: str) -> set[str]:
    engine = sa.create_engine(normalise_url(url))
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def drift(url: str) -> list:
    engine = sa.create_engine(normalise_url(url))
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return compare_metadata(context, SQLModel.metadata)
    finally:
        engine.dispose()


def migrate_process(database_url: str) -> tuple[int | None, str]:
    env = {"DATABASE_URL": database_url, "PATH": str(BIN), "MIGRATION_LOCK_TIMEOUT_SECONDS": "30"}
    try:
        result = subprocess.run(
            [str(BIN / "todo-api"), "migrate"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, "hung for 60 s"
    return result.returncode, result.stderr[-2000:]


def advisory_locks(postgres: PostgresServer, database_url: str) -> list[tuple[object, ...]]:
    """Advisory locks held or awaited in that database, by any session (pooled ones included)."""
    engine = sa.create_engine(postgres.admin_url)
    try:
        with engine.connect() as conn:
            return list(
                conn.execute(
                    sa.text(
                        "SELECT l.pid, l.objid, l.granted FROM pg_locks l "
                        "JOIN pg_database d ON d.oid = l.database "
                        "WHERE l.locktype = 'advisory' AND d.datname = :name"
                    ),
                    {"name": make_url(database_url).database},
                ).all()
            )
    finally:
        engine.dispose()


def versions(database_url: str) -> list[str]:
    engine = sa.create_engine(normalise_url(database_url))
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars())
    finally:
        engine.dispose()


class TestPostgres:
    def test_up_down_up(self, fresh_pg):
        settings = settings_for(fresh_pg)
        migrate(settings)
        assert {"users", "tasks", "alembic_version"} <= table_names(fresh_pg)
        migrate(settings, "base", downgrade=True)
        assert table_names(fresh_pg) == {"alembic_version"}
        migrate(settings)
        assert {"users", "tasks"} <= table_names(fresh_pg)

    def test_models_and_migrations_do_not_drift(self, fresh_pg):
        migrate(settings_for(fresh_pg))
        assert drift(fresh_pg) == []

    def test_direct_url_is_used_for_migrations(self, fresh_pg):
        settings = settings_for(
            "postgresql://nobody@127.0.0.1:1/unreachable", database_url_direct=fresh_pg
        )
        migrate(settings)
        assert "tasks" in table_names(fresh_pg)

    @pytest.mark.slow  # seconds of waiting (outside `make test-fast`)
    def test_concurrent_migrate_commands_on_an_empty_database(self, postgres, fresh_pg):
        with ThreadPoolExecutor(max_workers=6) as pool:
            results = list(pool.map(migrate_process, [fresh_pg] * 6))
        assert [code for code, _ in results] == [0] * 6, [err for _, err in results]
        assert advisory_locks(postgres, fresh_pg) == []
        assert len(versions(fresh_pg)) == 1
        assert drift(fresh_pg) == []

    def test_concurrent_app_starts_migrate_once(self, fresh_pg):
        settings = settings_for(fresh_pg)

        def start(_: int) -> int:
            with running_app(settings) as client:
                return client.get("/readyz").status_code

        with ThreadPoolExecutor(max_workers=4) as pool:
            assert list(pool.map(start, range(4))) == [200] * 4
        assert drift(fresh_pg) == []


class TestThroughPgBouncer:
    """Neon's pooled URL with no direct URL: migrations through a transaction-mode PgBouncer."""

    @pytest.mark.slow
    @pytest.mark.parametrize("round_", range(ROUNDS))
    def test_concurrent_migrate_commands_through_the_pooler(
        self, round_: int, postgres: PostgresServer, pgbouncer: PgBouncer, fresh_pg: str
    ) -> None:
        pooled = pgbouncer.url_for(fresh_pg)
        with ThreadPoolExecutor(max_workers=MIGRATORS) as pool:
            results = list(pool.map(migrate_process, [pooled] * MIGRATORS))
        assert [code for code, _ in results] == [0] * MIGRATORS, [err for _, err in results]
        assert advisory_locks(postgres, fresh_pg) == []
        assert len(versions(fresh_pg)) == 1

    @pytest.mark.slow
    def test_concurrent_first_starts_through_the_pooler_all_come_up(
        self, postgres: PostgresServer, pgbouncer: PgBouncer, fresh_pg: str, tmp_path: Path
    ) -> None:
        """Three `todo-api serve` (two workers each, MIGRATE_ON_START) on a fresh database."""
        pooled = pgbouncer.url_for(fresh_pg)

        def start(n: int) -> tuple[int, str]:
            directory = tmp_path / f"server{n}"
            directory.mkdir()
            with gunicorn(pooled, directory) as server:
                # Both workers took the same start-up path; neither may have failed it.
                created = server.request(
                    "POST",
                    "/api/alice/tasks",
                    json={"title": f"from server {n}"},
                    headers=auth("alice"),
                ).status_code
                alive = server.process.poll() is None
                return (created if alive else -1), server.log.read_text()

        with ThreadPoolExecutor(max_workers=3) as pool:
            results = list(pool.map(start, range(3)))
        for status, log in results:
            assert status == 201, log
            assert "startup failed" not in log.lower(), log
            assert "Traceback" not in log, log
        assert advisory_locks(postgres, fresh_pg) == []
        assert len(versions(fresh_pg)) == 1

    def test_a_migrator_waits_for_the_lock_only_as_long_as_configured(
        self, pgbouncer: PgBouncer, fresh_pg: str
    ) -> None:
        """Another migration holding the lock: this one fails after the lock timeout, no hang."""
        holder = sa.create_engine(normalise_url(fresh_pg))
        try:
            with holder.connect() as conn:
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})
                started = time.monotonic()
                with pytest.raises(sa.exc.OperationalError, match="lock timeout"):
                    migrate(
                        settings_for(pgbouncer.url_for(fresh_pg), migration_lock_timeout_seconds=1)
                    )
                assert time.monotonic() - started < 5
                conn.rollback()
            assert sa.inspect(holder).get_table_names() == []
        finally:
            holder.dispose()


class TestSqlite:
    def test_up_down_and_no_drift(self, tmp_path):
        url = f"sqlite:///{tmp_path / 'm.db'}"
        settings = settings_for(url)
        migrate(settings)
        assert drift(url) == []
        migrate(settings, "base", downgrade=True)
        assert table_names(url) == {"alembic_version"}


@pytest.fixture(scope="module")
def big_db(postgres):
    """50,000 tasks over 200 users, analysed."""
    url = postgres.create_database()
    migrate(settings_for(url))
    engine = sa.create_engine(normalise_url(url))
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO users (id) SELECT 'u' || g FROM generate_series(1, 200) g")
        )
        conn.execute(
            sa.text(
                "INSERT INTO tasks (user_id, title, completed, created_at, updated_at) "
                "SELECT 'u' || (g % 200 + 1), 'task ' || g, g % 3 = 0, "
                "now() - g * interval '1 second', now() FROM generate_series(1, 50000) g"
            )
        )
        conn.execute(sa.text("ANALYZE"))
    yield engine
    engine.dispose()
    postgres.drop_database(url)


class TestListQueryPlan:
    """The list query reads one user's rows off an index, in order: no sort, no other users."""

    @pytest.mark.parametrize("status", ["all", "pending", "completed"])
    @pytest.mark.parametrize("order", ["desc", "asc"])
    def test_newest_first_uses_an_index_without_sorting(self, big_db, status, order):
        compiled = LIST_STATEMENTS[status, "created", order].statement.compile(big_db)
        params = {"owner_id": "u7", "limit": 51, "offset": 0}
        with big_db.connect() as conn:
            plan = "\n".join(row[0] for row in conn.exec_driver_sql(f"EXPLAIN {compiled}", params))
        assert "Index" in plan and "ix_tasks_user" in plan, plan
        assert "Sort" not in plan, plan
        assert "Seq Scan" not in plan, plan


def test_app_refuses_to_start_without_a_way_to_verify_tokens(tmp_path):
    result = subprocess.run(
        [str(BIN / "python"), "-c", "from todo_api.cli import main; main(['serve'])"],
        env={"DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", "PATH": str(BIN), "PORT": "0"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "BETTER_AUTH_SECRET" in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("secret", "message"),
    [("short", "at least 32"), ("change-me-" + "x" * 40, "placeholder")],
)
def test_weak_or_placeholder_secrets_are_refused(secret, message):
    from todo_api.config import Settings

    with pytest.raises(ValueError, match=message):
        Settings(better_auth_secret=secret)


def test_jwks_issuer_and_audience_default_to_better_auth_url():
    from todo_api.config import Settings

    settings = Settings(better_auth_url="https://auth.example/", better_auth_secret=SECRET)
    assert settings.jwks_url == "https://auth.example/api/auth/jwks"
    # Better Auth's `iss` and `aud` have no trailing slash, whatever the setting has.
    assert settings.jwks_issuer == settings.jwks_audience == "https://auth.example"
    override = Settings(better_auth_url="https://a.example", jwt_issuer="https://i.example")
    assert override.jwks_issuer == "https://i.example"
