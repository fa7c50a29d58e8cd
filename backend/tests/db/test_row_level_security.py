"""Row-level security on tasks: PostgreSQL keeps users apart even when a query forgets the owner.

Everything runs as the app's role (tests.support.APP_ROLE: owns the database, no superuser, no
BYPASSRLS), directly and through a real PgBouncer in transaction mode with ONE server connection
per database and user, so that every client shares the same PostgreSQL session, as Neon's pooled
endpoint may. The superuser (which skips row-level security) only seeds and checks the data.
"""

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import psycopg2.extensions  # type: ignore[import-untyped]
import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from tests.support import (
    PostgresServer,
    as_app_role,
    auth,
    create_tasks,
    random_user,
    running_app,
    settings_for,
)
from tests.support.pooler import require_pgbouncer, running_pgbouncer
from todo_api.auth import Claims
from todo_api.db import create_db_engine, normalise_url
from todo_api.driver import OwnerMissing
from todo_api.migrate import alembic_config, migrate
from todo_api.tasks.service import LIST_STATEMENTS
from todo_api.unit_of_work import UnitOfWork

MIGRATION = "0003"
USERS = [f"u{n}" for n in range(1, 201)]
TASKS_PER_USER = 250
ALICE, BOB = "u7", "u8"
# A user id that would break out of a string-formatted SQL literal (and psycopg2's % syntax).
AWKWARD = "o'brien\\%s); DELETE FROM tasks; --"
UNSCOPED = sa.text("SELECT DISTINCT user_id FROM tasks")


# --- The database ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def database(postgres: PostgresServer) -> Iterator[str]:
    """A database migrated by the app's role, holding 250 tasks for each of 200 users (the
    superuser's URL; analysed, so that plans are the ones a real table gets)."""
    url = postgres.create_database()
    migrate(settings_for(as_app_role(url)))
    admin = sa.create_engine(normalise_url(url))
    with admin.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO users (id) SELECT unnest(CAST(:ids AS text[]))"),
            {"ids": [*USERS, AWKWARD]},
        )
        conn.execute(
            sa.text(
                "INSERT INTO tasks (user_id, title, completed, created_at, updated_at) "
                "SELECT 'u' || (g % 200 + 1), 'task ' || g, g % 3 = 0, "
                "now() - g * interval '1 second', now() FROM generate_series(1, :n) g"
            ),
            {"n": len(USERS) * TASKS_PER_USER},
        )
        conn.execute(
            sa.text("INSERT INTO tasks (user_id, title) VALUES (:u, 'awkward')"), {"u": AWKWARD}
        )
        conn.execute(sa.text("ANALYZE tasks"))
    admin.dispose()
    yield url
    postgres.drop_database(url)


@pytest.fixture(scope="module")
def admin(database: str) -> Iterator[sa.Engine]:
    """The superuser: sees every row, whatever the policy says."""
    engine = sa.create_engine(normalise_url(database), isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def shared_session_pooler(postgres: PostgresServer) -> Iterator[int]:
    """PgBouncer with ONE server connection per database and user: every client of the app's
    role shares the same PostgreSQL session."""
    require_pgbouncer()
    with running_pgbouncer(postgres, pool_size=1) as pooler:
        yield pooler.port


def through_pgbouncer(url: str, port: int) -> str:
    target = make_url(as_app_role(url)).set(host="127.0.0.1", port=port)
    return target.render_as_string(hide_password=False)


@pytest.fixture(scope="module", params=["direct", "pgbouncer"])
def route(request: pytest.FixtureRequest, database: str) -> str:
    """The app role's URL, straight to PostgreSQL or through PgBouncer."""
    if request.param == "direct":
        return as_app_role(database)
    return through_pgbouncer(database, request.getfixturevalue("shared_session_pooler"))


@pytest.fixture(scope="module")
def app_engine(route: str) -> Iterator[sa.Engine]:
    """The request engine exactly as the app builds it (pooled, autocommit, the owner hook)."""
    engine = create_db_engine(settings_for(route))
    yield engine
    engine.dispose()


@contextmanager
def owner_work(engine: sa.Engine, owner_id: str) -> Iterator[UnitOfWork]:
    """A request's unit of work for `owner_id`, as todo_api/work.py makes it."""
    work = UnitOfWork(engine, Claims(sub=owner_id, exp=time.time() + 60))
    try:
        yield work
    finally:
        work.close()


def owners_seen(engine: sa.Engine, owner_id: str) -> list[str]:
    """Run an unscoped query (no WHERE at all) on a request's unit of work for `owner_id`."""
    with owner_work(engine, owner_id) as work:
        return list(work.execute(UNSCOPED).scalars())


def count_of(admin: sa.Engine, sql: str, **params: Any) -> int:
    with admin.connect() as conn:
        return int(conn.execute(sa.text(sql), params).scalar_one())


# --- The tests ------------------------------------------------------------------------------


class TestUnscopedQueries:
    def test_see_only_the_requests_user(self, app_engine: sa.Engine) -> None:
        assert owners_seen(app_engine, ALICE) == [ALICE]
        assert owners_seen(app_engine, BOB) == [BOB]
        with owner_work(app_engine, ALICE) as conn:
            count = conn.execute(sa.text("SELECT count(*) FROM tasks")).scalar_one()
        assert count == TASKS_PER_USER

    def test_a_statement_outside_a_unit_of_work_fails_loudly(self, app_engine: sa.Engine) -> None:
        """Not "sees nothing": a statement with no owner is a bug, and says so."""
        with app_engine.connect() as conn:
            with pytest.raises(OwnerMissing):
                conn.execute(UNSCOPED)
            with pytest.raises(OwnerMissing):
                conn.exec_driver_sql("SELECT count(*) FROM tasks")
        # The connection went back to the pool unharmed: the next unit of work uses it.
        assert owners_seen(app_engine, ALICE) == [ALICE]

    def test_a_driver_level_statement_runs_as_the_owner_too(self, app_engine: sa.Engine) -> None:
        """Positional parameters, as exec_driver_sql sends them: before the unit of work such a
        statement silently ran as nobody and saw no task at all."""
        with owner_work(app_engine, ALICE) as work:
            count = work.exec_driver_sql(
                "SELECT count(*) FROM tasks WHERE title <> %s", ("nothing",)
            ).scalar_one()
        assert count == TASKS_PER_USER

    def test_see_nothing_without_a_user(self, app_engine: sa.Engine, admin: sa.Engine) -> None:
        assert count_of(admin, "SELECT count(*) FROM tasks") > 0
        assert owners_seen(app_engine, "") == []

    def test_the_user_is_bound_as_a_parameter(self, app_engine: sa.Engine) -> None:
        assert owners_seen(app_engine, AWKWARD) == [AWKWARD]
        assert owners_seen(app_engine, "nobody-at-all") == []

    def test_the_setting_ends_with_the_statement(self, route: str) -> None:
        # The same server session (a pool of one), next statement without an owner, sent past
        # the unit of work's cursor on purpose: nothing carried over.
        engine = create_db_engine(settings_for(route, db_pool_size=1))
        try:
            with owner_work(engine, ALICE) as work:
                assert work.execute(UNSCOPED).scalars().all() == [ALICE]
            raw = engine.raw_connection()
            try:
                driver = raw.driver_connection
                assert driver is not None
                with driver.cursor(cursor_factory=psycopg2.extensions.cursor) as cursor:
                    cursor.execute(
                        "SELECT count(*), current_setting('app.user_id', true) FROM tasks"
                    )
                    assert cursor.fetchone() in [(0, ""), (0, None)]
                # SET LOCAL in a several-statement query is in a transaction block: no warning.
                assert driver.notices == []
            finally:
                raw.close()
        finally:
            engine.dispose()

    def test_a_transaction_carries_the_owner_from_begin_to_commit(self, app_engine) -> None:
        """In a unit of work's transaction only the first statement carries the settings; the
        later ones still run as the owner (the setting lasts until COMMIT), the next
        transaction on the same connection starts without it."""
        with owner_work(app_engine, ALICE) as work:
            with work.transaction():
                assert work.execute(UNSCOPED).scalars().all() == [ALICE]
                assert work.execute(UNSCOPED).scalars().all() == [ALICE]
                assert work.exec_driver_sql("SELECT count(*) FROM tasks").scalar() == (
                    TASKS_PER_USER
                )
            assert work.execute(UNSCOPED).scalars().all() == [ALICE]

    def test_a_first_write_still_creates_the_user_row(
        self, app_engine: sa.Engine, admin: sa.Engine
    ) -> None:
        """The service's path: the insert finds no owner row, the user row is created (users
        has no policy), the insert is retried: all as the request's user."""
        from todo_api.tasks.models import TaskCreate
        from todo_api.tasks.service import create_task, delete_task, list_tasks

        user = random_user()
        owner = Claims(sub=user, exp=time.time() + 60)
        work = UnitOfWork(app_engine, owner)
        try:
            row = create_task(work, data=TaskCreate(title="first"))
        finally:
            work.close()
        assert row["user_id"] == user
        with owner_work(app_engine, user) as work:
            rows, more = list_tasks(
                work, status="all", sort="created", order="desc", limit=5, offset=0
            )
        assert [r["id"] for r in rows] == [row["id"]] and not more
        with owner_work(app_engine, user) as work:
            assert delete_task(work, task_id=row["id"])
        assert count_of(admin, "SELECT count(*) FROM users WHERE id = :u", u=user) == 1
        assert count_of(admin, "SELECT count(*) FROM tasks WHERE user_id = :u", u=user) == 0


class TestWritesToAnotherUsersRows:
    """As Alice, by id only (no owner clause), against Bob's task: nothing changes."""

    @pytest.fixture
    def bobs_task(self, admin: sa.Engine) -> tuple[int, str]:
        with admin.connect() as conn:
            row = conn.execute(
                sa.text("SELECT id, title FROM tasks WHERE user_id = :u ORDER BY id LIMIT 1"),
                {"u": BOB},
            ).one()
        return int(row.id), str(row.title)

    def test_update_by_id_changes_nothing(self, app_engine, admin, bobs_task) -> None:
        task_id, _ = bobs_task
        with owner_work(app_engine, ALICE) as conn:
            result = conn.execute(
                sa.text("UPDATE tasks SET title = 'hacked' WHERE id = :id"), {"id": task_id}
            )
            assert result.rowcount == 0
        assert count_of(admin, "SELECT count(*) FROM tasks WHERE title = 'hacked'") == 0
        assert count_of(admin, "SELECT count(*) FROM tasks WHERE id = :id", id=task_id) == 1

    def test_delete_by_id_changes_nothing(self, app_engine, admin, bobs_task) -> None:
        task_id, _ = bobs_task
        with owner_work(app_engine, ALICE) as conn:
            result = conn.execute(sa.text("DELETE FROM tasks WHERE id = :id"), {"id": task_id})
            assert result.rowcount == 0
        assert count_of(admin, "SELECT count(*) FROM tasks WHERE id = :id", id=task_id) == 1

    def test_an_insert_in_another_users_name_is_refused(self, app_engine, admin) -> None:
        before = count_of(admin, "SELECT count(*) FROM tasks WHERE user_id = :u", u=BOB)
        with (
            owner_work(app_engine, ALICE) as conn,
            pytest.raises(sa.exc.ProgrammingError, match="row-level security policy"),
        ):
            conn.execute(
                sa.text("INSERT INTO tasks (user_id, title) VALUES (:u, 'planted')"), {"u": BOB}
            )
        after = count_of(admin, "SELECT count(*) FROM tasks WHERE user_id = :u", u=BOB)
        assert after == before

    def test_handing_ones_task_to_another_user_is_refused(self, app_engine, admin) -> None:
        with (
            owner_work(app_engine, ALICE) as conn,
            pytest.raises(sa.exc.ProgrammingError, match="row-level security policy"),
        ):
            conn.execute(
                sa.text("UPDATE tasks SET user_id = :bob WHERE user_id = :alice"),
                {"bob": BOB, "alice": ALICE},
            )
        assert (
            count_of(admin, "SELECT count(*) FROM tasks WHERE user_id = :u", u=ALICE)
            == TASKS_PER_USER
        )

    def test_without_a_user_nothing_can_be_written(self, app_engine, admin) -> None:
        with owner_work(app_engine, "") as conn:
            assert conn.execute(sa.text("DELETE FROM tasks")).rowcount == 0
            with pytest.raises(sa.exc.ProgrammingError, match="row-level security policy"):
                conn.execute(
                    sa.text("INSERT INTO tasks (user_id, title) VALUES (:u, 'x')"), {"u": ALICE}
                )
        assert count_of(admin, "SELECT count(*) FROM tasks") == len(USERS) * TASKS_PER_USER + 1


class TestThroughOneSharedServerConnection:
    """PgBouncer (transaction mode, one server connection): every client shares one session."""

    @pytest.fixture
    def shared(self, database: str, shared_session_pooler: int) -> Iterator[sa.Engine]:
        engine = create_db_engine(settings_for(through_pgbouncer(database, shared_session_pooler)))
        yield engine
        engine.dispose()

    def test_clients_do_share_the_server_session(
        self, shared: sa.Engine, database: str, shared_session_pooler: int
    ) -> None:
        """Proof that this setup can leak: a session-level setting made by one client is seen
        by another (plain connections, not the app's). This is why the app's setting is
        transaction-local, and sent with every transaction: even on a session that carries
        another user's leaked setting, a unit of work runs as its own owner."""
        plain = sa.create_engine(
            through_pgbouncer(database, shared_session_pooler), isolation_level="AUTOCOMMIT"
        )
        try:
            with plain.connect() as first, plain.connect() as second:
                pid = "SELECT pg_backend_pid()"
                assert first.exec_driver_sql(pid).scalar() == second.exec_driver_sql(pid).scalar()
                first.exec_driver_sql("SELECT set_config('app.user_id', 'u7', false)")
                try:
                    assert second.execute(UNSCOPED).scalars().all() == [ALICE]
                    assert owners_seen(shared, BOB) == [BOB]
                    assert owners_seen(shared, "") == []
                finally:
                    first.exec_driver_sql("RESET app.user_id")
                assert second.execute(UNSCOPED).scalars().all() == []
        finally:
            plain.dispose()

    def test_the_next_client_never_inherits_the_previous_user(self, shared: sa.Engine) -> None:
        with (
            owner_work(shared, ALICE) as alice,
            owner_work(shared, BOB) as bob,
            owner_work(shared, "") as nobody,
        ):
            pid = "SELECT pg_backend_pid()"
            pids = {c.exec_driver_sql(pid).scalar() for c in (alice, bob, nobody)}
            assert len(pids) == 1
            for _ in range(20):
                assert alice.execute(UNSCOPED).scalars().all() == [ALICE]
                assert nobody.execute(UNSCOPED).scalars().all() == []
                assert bob.execute(UNSCOPED).scalars().all() == [BOB]
                assert nobody.execute(UNSCOPED).scalars().all() == []


class TestManyUsersAtOnce:
    def test_each_thread_only_ever_sees_its_own_rows(self, app_engine: sa.Engine) -> None:
        users = USERS[:24]
        start = threading.Barrier(len(users))

        def run(user: str) -> set[str]:
            seen: set[str] = set()
            start.wait(timeout=30)
            for _ in range(40):
                with owner_work(app_engine, user) as conn:
                    seen.update(conn.execute(UNSCOPED).scalars())
                    count = conn.execute(sa.text("SELECT count(*) FROM tasks")).scalar_one()
                    assert count == TASKS_PER_USER
            return seen

        with ThreadPoolExecutor(max_workers=len(users)) as pool:
            results = dict(zip(users, pool.map(run, users), strict=True))
        assert results == {user: {user} for user in users}


class TestListQueryPlan:
    """With the policy's condition added, the list query still reads the owner's index in order."""

    @pytest.mark.parametrize("status", ["all", "pending", "completed"])
    @pytest.mark.parametrize("order", ["desc", "asc"])
    def test_uses_the_owner_index_without_sorting(self, app_engine, status, order) -> None:
        compiled = LIST_STATEMENTS[status, "created", order].statement.compile(app_engine)
        params = {"owner_id": ALICE, "limit": 51, "offset": 0}
        with owner_work(app_engine, ALICE) as conn:
            explain = f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {compiled}"
            plan = "\n".join(row[0] for row in conn.exec_driver_sql(explain, params))
        assert "Index" in plan and "ix_tasks_user" in plan, plan
        assert "Sort" not in plan and "Seq Scan" not in plan, plan
        # The setting really was in force: the query found the owner's rows.
        assert "rows=51" in plan.splitlines()[0], plan

    @pytest.mark.parametrize("key", sorted(LIST_STATEMENTS))
    def test_the_policy_changes_no_plan(self, app_engine, admin, key) -> None:
        """Every list query keeps the plan it has without row-level security (the superuser's):
        the policy only adds a one-time check of the setting against the owner."""
        compiled = LIST_STATEMENTS[key].statement.compile(app_engine)
        params = {"owner_id": ALICE, "limit": 51, "offset": 0}
        explain = f"EXPLAIN (COSTS OFF) {compiled}"
        with owner_work(app_engine, ALICE) as conn:
            with_policy = [row[0] for row in conn.exec_driver_sql(explain, params)]
        with admin.connect() as conn:
            without = [row[0] for row in conn.exec_driver_sql(explain, params)]
        added = ("Result", "One-Time Filter: (NULLIF(current_setting('app.user_id'")
        kept = [line for line in with_policy if not line.strip(" ->").startswith(added)]
        assert [line.strip(" ->") for line in kept] == [line.strip(" ->") for line in without]

    def test_an_unscoped_list_reads_the_index_on_the_policy_alone(self, app_engine) -> None:
        with owner_work(app_engine, ALICE) as conn:
            plan = "\n".join(
                row[0]
                for row in conn.exec_driver_sql(
                    "EXPLAIN SELECT * FROM tasks ORDER BY created_at DESC, id DESC LIMIT 50"
                )
            )
        assert "ix_tasks_user_created" in plan and "current_setting" in plan, plan
        assert "Sort" not in plan and "Seq Scan" not in plan, plan


class TestTheApiThroughPgBouncer:
    def test_users_work_through_the_pooler_and_stay_apart(
        self, database: str, shared_session_pooler: int, admin: sa.Engine
    ) -> None:
        """The real app on PgBouncer (migrations on the direct URL): first writes, reads,
        toggles and deletes by many users at once, each seeing only their own tasks."""
        pooled = through_pgbouncer(database, shared_session_pooler)
        settings = settings_for(pooled, database_url_direct=as_app_role(database))
        users = [random_user() for _ in range(12)]
        with running_app(settings) as client:
            base_url = str(client.base_url)
            assert client.get("/readyz").status_code == 200

            def work(user: str) -> list[int]:
                with httpx.Client(base_url=base_url, headers=auth(user), timeout=30) as api:
                    ids = create_tasks(api, user, 5)
                    listed = api.get(f"/api/{user}/tasks").json()
                    assert sorted(t["id"] for t in listed) == sorted(ids)
                    assert {t["user_id"] for t in listed} == {user}
                    toggled = api.patch(f"/api/{user}/tasks/{ids[0]}/complete")
                    assert toggled.json()["completed"] is True
                    assert api.delete(f"/api/{user}/tasks/{ids[1]}").status_code == 204
                    assert api.get(f"/api/{user}/tasks/{ids[1]}").status_code == 404
                    return ids

            with ThreadPoolExecutor(max_workers=len(users)) as pool:
                created = dict(zip(users, pool.map(work, users), strict=True))
        for user, ids in created.items():
            with admin.connect() as conn:
                stored = conn.execute(
                    sa.text("SELECT id FROM tasks WHERE user_id = :u ORDER BY id"), {"u": user}
                ).scalars()
                assert list(stored) == sorted(ids[:1] + ids[2:])


class TestTheAppsRole:
    def test_a_superuser_connection_is_warned_about(self, database: str, caplog) -> None:
        caplog.set_level(logging.WARNING, logger="todo_api.db")
        for url, warned in ((as_app_role(database), False), (database, True)):
            caplog.clear()
            engine = create_db_engine(settings_for(url))
            try:
                for _ in range(2):
                    with owner_work(engine, ALICE) as work:
                        work.execute(sa.text("SELECT 1"))
            finally:
                engine.dispose()
            messages = [r.getMessage() for r in caplog.records if r.name == "todo_api.db"]
            assert len(messages) == (1 if warned else 0), messages
            if warned:
                assert "row-level security does not apply" in messages[0]


class TestMigration:
    def test_down_and_up_again(self, postgres: PostgresServer) -> None:
        url = postgres.create_database()
        state = sa.text(
            "SELECT c.relrowsecurity, c.relforcerowsecurity, "
            "(SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid) "
            "FROM pg_class c WHERE c.oid = 'tasks'::regclass"
        )
        admin = sa.create_engine(normalise_url(url))
        try:
            settings = settings_for(as_app_role(url))
            migrate(settings)
            with admin.connect() as conn:
                assert tuple(conn.execute(state).one()) == (True, True, 1)
            script = ScriptDirectory.from_config(alembic_config()).get_revision(MIGRATION)
            assert script is not None and isinstance(script.down_revision, str)
            migrate(settings, script.down_revision, downgrade=True)
            with admin.connect() as conn:
                assert tuple(conn.execute(state).one()) == (False, False, 0)
            migrate(settings)
            with admin.connect() as conn:
                assert tuple(conn.execute(state).one()) == (True, True, 1)
        finally:
            admin.dispose()
            postgres.drop_database(url)
