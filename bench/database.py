"""The throwaway benchmark database: create, migrate (with the product's own command), seed,
reset between runs, explain, drop."""

import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import psycopg2.extensions

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
BENCH_USER = "bench-user"
OTHER_USERS = 200
OTHER_TASKS = 10_000
OWN_TASKS = 50


def server_url(explicit: str | None) -> str:
    """The PostgreSQL server to use: --database-url, else TEST_DATABASE_URL's, else local."""
    url = explicit or os.environ.get("TEST_DATABASE_URL") or DEFAULT_SERVER
    scheme, rest = url.split("://", 1)
    # libpq knows neither SQLAlchemy's "+driver" suffix nor the "postgres" alias of some hosts.
    return "postgresql://" + rest if scheme.startswith(("postgresql", "postgres")) else url


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def _with_role(url: str, role: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{role}:{password}@{host}"))


@dataclass(frozen=True)
class Seeded:
    """Ids the scenarios need: the benchmark user's own tasks are first..last."""

    first: int
    last: int


class BenchDatabase:
    """`url` is the server's own role (a superuser: it seeds, resets and serves the floor);
    `owner_url` is a role made for this run that owns the database and its tables, with no
    SUPERUSER or BYPASSRLS: the product connects as it, as in production, so that PostgreSQL
    applies the row-level security policy on `tasks` to every request it measures."""

    def __init__(self, server: str) -> None:
        self.name = f"bench_{secrets.token_hex(4)}"
        self.admin_url = _with_database(server, "postgres")
        self.url = _with_database(server, self.name)
        self._password = secrets.token_hex(16)
        self.owner_url = _with_role(self.url, self.name, self._password)
        self.seeded: Seeded | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def create(self) -> None:
        with _autocommit(self.admin_url) as cur:
            cur.execute(
                f'CREATE ROLE "{self.name}" LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD %s',
                (self._password,),
            )
            cur.execute(f'CREATE DATABASE "{self.name}" OWNER "{self.name}"')

    def drop(self) -> None:
        # FORCE: a server that is being killed may still hold a connection.
        with _autocommit(self.admin_url) as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            cur.execute(f'DROP ROLE IF EXISTS "{self.name}"')

    def migrate(self, todo_api: Path) -> None:
        """The schema comes from the product's migrations, never from the harness; they run as
        the owner role, which so owns the tables (and is still bound by the forced policy)."""
        env = {**os.environ, "DATABASE_URL": self.owner_url, "LOG_LEVEL": "warning"}
        command = [str(todo_api), "migrate"]
        subprocess.run(command, env=env, check=True, capture_output=True)  # noqa: S603

    @contextmanager
    def cursor(self) -> Iterator[Any]:
        with _autocommit(self.url) as cur:
            yield cur

    # -- data ------------------------------------------------------------------------------

    def seed(self) -> Seeded:
        """The benchmark user with 50 tasks, and 10,000 tasks spread over 200 other users."""
        with self.cursor() as cur:
            cur.execute(
                "INSERT INTO users (id) SELECT %s UNION ALL "
                "SELECT 'other-' || g FROM generate_series(1, %s) g",
                (BENCH_USER, OTHER_USERS),
            )
            first, last = self._insert_tasks(cur, BENCH_USER, OWN_TASKS)
            cur.execute(
                _TASKS_INSERT + "SELECT 'other-' || (g %% %s + 1), 'Other task ' || g, NULL, "
                "g %% 2 = 0, now() - g * interval '1 second', now() - g * interval '1 second' "
                "FROM generate_series(1, %s) g",
                (OTHER_USERS, OTHER_TASKS),
            )
            cur.execute("VACUUM ANALYZE")
        self.seeded = Seeded(first, last)
        return self.seeded

    def add_user_with_tasks(self, user_id: str, count: int) -> None:
        with self.cursor() as cur:
            cur.execute("INSERT INTO users (id) VALUES (%s) ON CONFLICT DO NOTHING", (user_id,))
            self._insert_tasks(cur, user_id, count)
            cur.execute("DELETE FROM idempotency_keys")
            cur.execute("VACUUM ANALYZE tasks")

    def drop_users(self, user_ids: list[str]) -> None:
        with self.cursor() as cur:
            cur.execute("DELETE FROM users WHERE id = ANY(%s)", (user_ids,))  # tasks cascade
            cur.execute("VACUUM ANALYZE tasks")

    def add_bulk_rows(self, total_other_rows: int, users: int = 5000) -> int:
        """Grow the rows of other users to `total_other_rows` (the 1M point of a curve)."""
        missing = total_other_rows - self.other_rows()
        if missing > 0:
            with self.cursor() as cur:
                cur.execute(
                    "INSERT INTO users (id) SELECT 'bulk-' || g FROM generate_series(1, %s) g "
                    "ON CONFLICT DO NOTHING",
                    (users,),
                )
                cur.execute(
                    _TASKS_INSERT + "SELECT 'bulk-' || (g %% %s + 1), 'Bulk task ' || g, NULL, "
                    "false, now() - g * interval '1 second', now() - g * interval '1 second' "
                    "FROM generate_series(1, %s) g",
                    (users, missing),
                )
                cur.execute("VACUUM ANALYZE tasks")
        return self.other_rows()

    def other_rows(self) -> int:
        with self.cursor() as cur:
            cur.execute("SELECT count(*) FROM tasks WHERE user_id <> %s", (BENCH_USER,))
            return int(cur.fetchone()[0])

    def seed_delete_pool(self, size: int) -> tuple[int, int]:
        """`size` old tasks for the mixed scenario's deletes (older than the 50 seeded ones, so
        the list page is unchanged); returns their contiguous id range."""
        with self.cursor() as cur:
            return self._insert_tasks(cur, BENCH_USER, size, age="1 year")

    def wait_idle(self, timeout: float = 5.0) -> None:
        """Until no other session runs a statement here: wrk has exited, but the requests it
        had in flight finish on the server, and must not spill into the next run."""
        deadline = time.monotonic() + timeout
        with self.cursor() as cur:
            while time.monotonic() < deadline:
                cur.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND state <> 'idle' AND pid <> pg_backend_pid()"
                )
                if cur.fetchone()[0] == 0:
                    return
                time.sleep(0.02)

    def reset(self) -> None:
        """Back to the seeded state after a run that wrote: every run starts from the same data."""
        assert self.seeded is not None
        first, last = self.seeded.first, self.seeded.last
        with self.cursor() as cur:
            cur.execute(
                "DELETE FROM tasks WHERE user_id = %s AND (id < %s OR id > %s)",
                (BENCH_USER, first, last),
            )
            cur.execute(
                "UPDATE tasks SET completed = (id - %s + 1) %% 4 = 0, updated_at = created_at "
                "WHERE id BETWEEN %s AND %s",
                (first, first, last),
            )
            cur.execute("VACUUM ANALYZE tasks")

    @staticmethod
    def _insert_tasks(cur: Any, user_id: str, count: int, age: str = "0") -> tuple[int, int]:
        # Newest last, one second apart; every fourth done, every third with a description.
        # The lock keeps a request still running in an app from taking ids in between.
        cur.execute("BEGIN")
        cur.execute("LOCK TABLE tasks IN SHARE ROW EXCLUSIVE MODE")
        cur.execute(
            _TASKS_INSERT + "SELECT %s, 'Task ' || g, CASE WHEN g %% 3 = 0 THEN "
            "'A description of task ' || g END, g %% 4 = 0, t, t "
            "FROM generate_series(1, %s) g, "
            "LATERAL (SELECT now() - %s::interval - (%s - g) * interval '1 second' AS t) ts "
            "RETURNING id",
            (user_id, count, age, count),
        )
        ids = sorted(row[0] for row in cur.fetchall())
        cur.execute("COMMIT")
        # Scenarios address these ids as a range: make sure it has no hole.
        assert ids[-1] - ids[0] + 1 == len(ids), "seeded ids are not contiguous"
        return ids[0], ids[-1]

    # -- introspection ---------------------------------------------------------------------

    def explain_list(self, user_id: str = BENCH_USER) -> str:
        """EXPLAIN ANALYZE of the SQL the product sends for this user's first page, as the
        product's role with the user set, so that the plan includes the row-level policy."""
        setting, sql, source = product_list_sql(self.url, user_id)
        with _autocommit(self.owner_url) as cur:
            cur.execute("BEGIN")
            cur.execute("SELECT set_config('app.user_id', %s, true)", (user_id,))
            if setting:
                cur.execute(setting)
            cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)
            plan = "\n".join(row[0] for row in cur.fetchall())
            cur.execute("ROLLBACK")
        return f"-- {source}\n{setting}\n{sql}\n\n{plan}"

    def server_version(self) -> str:
        with self.cursor() as cur:
            cur.execute("SHOW server_version")
            return str(cur.fetchone()[0])


_TASKS_INSERT = (
    "INSERT INTO tasks (user_id, title, description, completed, created_at, updated_at) "
)


# The list query as the issue describes it, for when the product's own cannot be captured, and
# the setting the product sends with it (todo_api/tasks/service.py).
_LIST_SETTING = "SET LOCAL enable_sort = off;"
_LIST_COPY = (
    "SELECT id, user_id, title, description, completed, created_at, updated_at FROM tasks "
    "WHERE user_id = %s ORDER BY created_at DESC, id DESC LIMIT %s OFFSET 0"
)


def product_list_sql(url: str, user_id: str, limit: int = 50) -> tuple[str, str, str]:
    """The setting and the SQL the product sends for GET /tasks?limit=50, and where they came
    from.

    The SQL is caught on its way to the driver while the product's public service function
    runs, so it is whatever the product's code builds today (the setting, which only its
    PostgreSQL driver path sends, is read from the statement); a hand copy only if that fails.
    """
    try:
        from sqlalchemy import create_engine, event
        from sqlalchemy.pool import NullPool

        from todo_api.auth import Claims
        from todo_api.db import normalise_url
        from todo_api.tasks import service
        from todo_api.unit_of_work import UnitOfWork

        engine = create_engine(normalise_url(url), poolclass=NullPool)
        sent: list[str] = []

        def capture(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
            sent.append(cursor.mogrify(statement, params).decode())

        event.listen(engine, "before_cursor_execute", capture)
        work = UnitOfWork(engine, Claims(sub=user_id, exp=0))
        try:
            service.list_tasks(
                work, status="all", sort="created", order="desc", limit=limit, offset=0
            )
        finally:
            work.close()
            engine.dispose()
        setting = service.LIST_STATEMENTS["all", "created", "desc"].setting
        sql = next(sql for sql in sent if "FROM tasks" in sql)
        return setting, sql, "sent by todo_api.tasks.service"
    except Exception as error:  # the product's internals moved: say so, explain the copy
        with _autocommit(url) as cur:
            copy = cur.mogrify(_LIST_COPY, (user_id, limit + 1)).decode()
        return (
            _LIST_SETTING,
            copy,
            f"the harness's copy (capturing the product's failed: {error!r})",
        )


@contextmanager
def _autocommit(url: str) -> Iterator[Any]:
    conn = psycopg2.connect(url)
    try:
        conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
        with conn.cursor() as cur:
            yield cur
    finally:
        conn.close()
