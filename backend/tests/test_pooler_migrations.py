"""Migrations through a transaction-mode PgBouncer (Neon's pooled URL with no direct URL set):
concurrent `todo-api migrate` runs and concurrent first starts all succeed and leave no lock."""

import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.pooler import PgBouncer
from tests.support import PostgresServer, auth, settings_for
from tests.test_server_process import gunicorn
from todo_api.db import normalise_url
from todo_api.migrate import PG_LOCK_KEY, migrate

BIN = Path(sys.executable).parent
ROUNDS, MIGRATORS = 6, 4


@pytest.fixture
def fresh_database(postgres: PostgresServer) -> Iterator[str]:
    url = postgres.create_database()
    yield url
    postgres.drop_database(url)


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


@pytest.mark.slow
@pytest.mark.parametrize("round_", range(ROUNDS))
def test_concurrent_migrate_commands_through_the_pooler(
    round_: int, postgres: PostgresServer, pgbouncer: PgBouncer, fresh_database: str
) -> None:
    pooled = pgbouncer.url_for(fresh_database)
    with ThreadPoolExecutor(max_workers=MIGRATORS) as pool:
        results = list(pool.map(migrate_process, [pooled] * MIGRATORS))
    assert [code for code, _ in results] == [0] * MIGRATORS, [err for _, err in results]
    assert advisory_locks(postgres, fresh_database) == []
    assert len(versions(fresh_database)) == 1


@pytest.mark.slow
def test_concurrent_first_starts_through_the_pooler_all_come_up(
    postgres: PostgresServer, pgbouncer: PgBouncer, fresh_database: str, tmp_path: Path
) -> None:
    """Three `todo-api serve` (two workers each, MIGRATE_ON_START) on a fresh database at once."""
    pooled = pgbouncer.url_for(fresh_database)

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
    assert advisory_locks(postgres, fresh_database) == []
    assert len(versions(fresh_database)) == 1


def test_a_migrator_waits_for_the_lock_only_as_long_as_configured(
    pgbouncer: PgBouncer, fresh_database: str
) -> None:
    """Another migration holding the lock makes this one fail after the lock timeout, not hang."""
    holder = sa.create_engine(normalise_url(fresh_database))
    try:
        with holder.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})
            started = time.monotonic()
            with pytest.raises(sa.exc.OperationalError, match="lock timeout"):
                migrate(
                    settings_for(
                        pgbouncer.url_for(fresh_database), migration_lock_timeout_seconds=1
                    )
                )
            assert time.monotonic() - started < 5
            conn.rollback()
        assert sa.inspect(holder).get_table_names() == []
    finally:
        holder.dispose()
