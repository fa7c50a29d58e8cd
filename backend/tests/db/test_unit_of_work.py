"""Prepared statements on PostgreSQL run straight on the driver's cursor (todo_api/unit_of_work.py):
they answer what SQLAlchemy would, timestamps in UTC whatever the session's time zone, and
driver errors as SQLAlchemy's, a broken connection never going back to the pool."""

import time
from collections.abc import Iterator
from datetime import UTC

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DataError, OperationalError

from tests.support import PostgresServer, as_app_role, settings_for
from todo_api.auth import Claims
from todo_api.db import create_db_engine, normalise_url
from todo_api.migrate import migrate
from todo_api.tasks import service
from todo_api.tasks.models import TaskCreate
from todo_api.unit_of_work import DriverRows, Prepared, UnitOfWork

OWNER = "zoe"
# Far from UTC, and not by whole hours: a timestamp left in it renders as +13:45.
FAR_ZONE = "Pacific/Chatham"


@pytest.fixture(scope="module")
def database(postgres: PostgresServer) -> Iterator[str]:
    """A migrated database whose sessions run in FAR_ZONE, with OWNER and three tasks."""
    url = postgres.create_database()
    migrate(settings_for(as_app_role(url)))
    admin = sa.create_engine(normalise_url(url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        name = conn.execute(sa.text("SELECT current_database()")).scalar_one()
        conn.execute(sa.text(f"ALTER DATABASE \"{name}\" SET timezone = '{FAR_ZONE}'"))
        conn.execute(sa.text("INSERT INTO users (id) VALUES (:id)"), {"id": OWNER})
    admin.dispose()
    yield url
    postgres.drop_database(url)


@pytest.fixture(scope="module")
def engine(database: str) -> Iterator[sa.Engine]:
    engine = create_db_engine(settings_for(as_app_role(database)))
    yield engine
    engine.dispose()


@pytest.fixture
def work(engine: sa.Engine) -> Iterator[UnitOfWork]:
    work = UnitOfWork(engine, Claims(sub=OWNER, exp=time.time() + 60))
    try:
        yield work
    finally:
        work.close()


def test_the_session_really_is_in_another_time_zone(work: UnitOfWork) -> None:
    zone = work.exec_driver_sql("SHOW timezone").first()
    assert zone is not None and zone[0] == FAR_ZONE


def test_timestamps_come_back_in_utc(work: UnitOfWork) -> None:
    created = service.create_task(work, data=TaskCreate(title="in utc"))
    again = service.get_task(work, task_id=created["id"])
    listed, _ = service.list_tasks(
        work, status="all", sort="created", order="desc", limit=10, offset=0
    )
    for row in (created, again, *listed):
        assert row is not None
        for name in ("created_at", "updated_at"):
            assert row[name].tzinfo is UTC, (name, row[name])
    assert again is not None and again["created_at"] == created["created_at"]


def test_prepared_statements_answer_what_sqlalchemy_answers(work: UnitOfWork) -> None:
    service.create_task(work, data=TaskCreate(title="same either way"))
    prepared = service.LIST_STATEMENTS["all", "title", "asc"]
    params = {"owner_id": OWNER, "limit": 50, "offset": 0}
    on_driver = work.execute(prepared, params)
    assert isinstance(on_driver, DriverRows)  # the driver path was taken
    through_sqlalchemy = work.execute(prepared.statement, params)
    assert list(on_driver) == [tuple(row) for row in through_sqlalchemy]


def test_a_failing_statement_is_sqlalchemys_error_and_keeps_the_connection(
    work: UnitOfWork, engine: sa.Engine
) -> None:
    with pytest.raises(DataError) as raised:
        work.execute(Prepared(sa.select(sa.literal_column("1 / 0"))))
    assert not raised.value.connection_invalidated
    assert "division by zero" in str(raised.value)
    # The same connection answers the next statement.
    assert work.exec_driver_sql("SELECT 1").first() == (1,)


def test_a_broken_connection_is_unavailable_and_never_reused(
    work: UnitOfWork, engine: sa.Engine, database: str
) -> None:
    pid = work.exec_driver_sql("SELECT pg_backend_pid()").first()[0]
    admin = sa.create_engine(normalise_url(database), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    admin.dispose()
    with pytest.raises(OperationalError) as raised:  # answered 503 by the app
        service.get_task(work, task_id=1)
    assert raised.value.connection_invalidated
    work.close()
    # Every pooled connection after it is a live one.
    for _ in range(engine.pool.size() + 1):
        later = UnitOfWork(engine, Claims(sub=OWNER, exp=time.time() + 60))
        try:
            assert later.exec_driver_sql("SELECT pg_backend_pid()").first()[0] != pid
        finally:
            later.close()
