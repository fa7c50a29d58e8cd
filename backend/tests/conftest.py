"""Fixtures: every API test runs against SQLite, a real PostgreSQL and the same PostgreSQL behind
a real PgBouncer in transaction mode (tests/pooler.py), over real HTTP.

PostgreSQL comes from TEST_DATABASE_URL, else testcontainers (when a Docker engine answers),
else a server on localhost:5432; each run creates its own database and drops it. With none
available the PostgreSQL tests are skipped loudly, or fail under CI (CI=true).
"""

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.support import (
    JwksServer,
    PostgresServer,
    as_app_role,
    find_postgres,
    missing,
    running_app,
    settings_for,
)
from todo_api.db import normalise_url

BACKENDS = ["sqlite", "postgresql", "pgbouncer"]
# The `pgbouncer` backend: the same PostgreSQL behind a transaction-mode PgBouncer (Neon's pooler).
pytest_plugins = ["tests.support.pooler", "tests.support.container_engine"]


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server, reason, stack = find_postgres()
    with stack:
        if server is None:
            missing(reason)
        yield server
        server.close()


@pytest.fixture(scope="session")
def jwks() -> Iterator[JwksServer]:
    server = JwksServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'todo.db'}"


@pytest.fixture(scope="session")
def pg_url(postgres: PostgresServer) -> Iterator[str]:
    url = postgres.create_database()
    yield url
    postgres.drop_database(url)


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request: pytest.FixtureRequest) -> str:
    """The database of the run, once per backend."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    if request.param == "pgbouncer":
        return str(request.getfixturevalue("pooled_pg_url"))
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture(scope="session")
def server(database_url: str, jwks: JwksServer) -> Iterator[httpx.Client]:
    """The app as production runs it: migrations on start, HS256 and JWKS both configured, as a
    role that row-level security applies to."""
    settings = settings_for(as_app_role(database_url), better_auth_url=jwks.base_url)
    with running_app(settings) as client:
        yield client


@pytest.fixture(scope="session")
def engine(database_url: str, server: httpx.Client) -> Iterator[sa.Engine]:
    """Direct access to the test database, to check what the API really stored."""
    engine = sa.create_engine(normalise_url(database_url))
    yield engine
    engine.dispose()


@pytest.fixture
def api(server: httpx.Client, engine: sa.Engine, jwks: JwksServer) -> httpx.Client:
    """A client on an empty database."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("TRUNCATE tasks, users RESTART IDENTITY CASCADE"))
        else:
            conn.execute(sa.text("DELETE FROM tasks"))
            conn.execute(sa.text("DELETE FROM users"))
    jwks.up = True
    jwks.document = None
    server.headers.clear()
    return server


def pytest_report_header(config: pytest.Config) -> str:
    return f"todo-api tests: backends {', '.join(BACKENDS)}; tests dir {Path(__file__).parent.name}"
