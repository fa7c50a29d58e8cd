"""Migrations the running version survives (specs/migrations.md), checked against the previous
release's real code, taken from this repository's git history:

- the previous release (the commit before the newest migration) passes its own API tests on a
  database migrated to this tree's head;
- a migration that would break it (a dropped or a renamed column) makes that same check fail;
- the newest migration, applied while the previous release serves a write load and a long
  transaction holds the table, stalls no request longer than the bound below.
"""

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.support import BACKEND, PostgresServer, as_app_role, settings_for, stop_process
from tests.support.release_stack import Load, latency_summary, longest, start_instance
from tests.support.releases import (
    Release,
    copy_with_migration,
    head_migration,
    previous_release,
    run_api_tests,
    unpack,
)
from todo_api.db import normalise_url
from todo_api.migrate import migrate

pytestmark = pytest.mark.slow

# MIGRATION_DDL_LOCK_TIMEOUT_SECONDS for the load test, and the longest a request may wait while
# a migration runs: one lock timeout, plus what a request takes on a busy 2-core CI machine.
DDL_LOCK_TIMEOUT = 0.5
STALL_BOUND = 2.0
# How long the long transaction (a report, a pg_dump) holds its lock on the table.
BLOCKER_SECONDS = 3.0

BREAKING = {
    "drop-column": "op.drop_column('tasks', 'description')",
    "rename-column": "op.alter_column('tasks', 'title', new_column_name='name')",
}


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Release:
    return unpack(previous_release(), tmp_path_factory.mktemp("previous-release"))


def test_the_previous_release_passes_its_api_tests_on_the_head_schema(
    release: Release, postgres: PostgresServer, tmp_path: Path
) -> None:
    run = run_api_tests(release, BACKEND, postgres.admin_url, tmp_path / "plugin")
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr
    print(f"\nprevious release {release.commit[:12]} on head {head_migration()[0]}: {summary}")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in summary and "skipped" not in summary, summary


@pytest.mark.parametrize("change", sorted(BREAKING))
def test_a_migration_that_breaks_the_running_release_fails_the_check(
    change: str, postgres: PostgresServer, tmp_path: Path
) -> None:
    # This tree plays the running release; a copy of it gains one bad migration.
    head, _, _ = head_migration()
    source = f'''"""{change} (deliberately breaks the running release)"""
from alembic import op

revision = "bad0"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    {BREAKING[change]}


def downgrade() -> None:
    pass
'''
    schema = copy_with_migration(tmp_path / "next", "9999_bad.py", source)
    running = Release("HEAD", BACKEND, sys.executable)
    run = run_api_tests(running, schema, postgres.admin_url, tmp_path / "plugin")
    assert run.returncode != 0, f"{change} was not caught:\n{run.stdout[-2000:]}"
    assert "failed" in run.stdout.splitlines()[-1], run.stdout[-2000:]


@pytest.fixture
def before_newest(postgres: PostgresServer) -> Iterator[tuple[str, str]]:
    """A database at the revision before the newest: (app role URL, admin URL)."""
    url = postgres.create_database()
    _, down, _ = head_migration()
    assert down is not None, "the newest migration is the first: nothing runs before it"
    migrate(settings_for(as_app_role(url)), down)
    yield as_app_role(url), url
    postgres.drop_database(url)


def test_the_newest_migration_under_write_load_stalls_no_request_past_the_bound(
    release: Release, before_newest: tuple[str, str], tmp_path: Path
) -> None:
    app_url, admin_url = before_newest
    instance = start_instance(
        app_url, tmp_path, code=release.backend, python=release.python, WEB_CONCURRENCY="2"
    )
    admin = sa.create_engine(normalise_url(admin_url))
    try:
        load = Load(instance.url, clients=6)
        load.start()
        try:
            time.sleep(1.0)
            held = threading.Event()

            def long_transaction() -> None:
                with admin.connect() as conn:
                    conn.execute(sa.text("SELECT count(*) FROM tasks"))  # ACCESS SHARE lock
                    held.set()
                    time.sleep(BLOCKER_SECONDS)
                    conn.rollback()

            blocker = threading.Thread(target=long_transaction)
            blocker.start()
            held.wait(timeout=10)
            started = time.monotonic()
            migrate(settings_for(app_url, migration_ddl_lock_timeout_seconds=DDL_LOCK_TIMEOUT))
            ended = time.monotonic()
            blocker.join(timeout=30)
            time.sleep(0.5)
        finally:
            load.stop()
    finally:
        stop_process(instance.process)
        admin.dispose()

    during = load.between(started, ended)
    stall = longest(during)
    print(
        f"\nmigration {head_migration()[0]} under load (previous release"
        f" {release.commit[:12]} serving, a {BLOCKER_SECONDS:g}s transaction holding the table):"
        f" took {ended - started:.1f}s, {len(load.failures)} failed; during it"
        f" {latency_summary(during)} (stall bound {STALL_BOUND:g}s)"
    )
    assert len(during) > 20, "too little load to prove anything"
    assert load.failures == [], load.failures[:10]
    assert stall < STALL_BOUND, f"a request waited {stall:.2f}s on the migration"
    check = sa.create_engine(normalise_url(admin_url))
    with check.connect() as conn:
        version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    check.dispose()
    assert version == head_migration()[0]
