"""The unit of work on PostgreSQL (todo_api/unit_of_work.py).

- Prepared statements run straight on the driver's cursor: they answer what SQLAlchemy would,
  timestamps in UTC whatever the session's time zone, and driver errors as SQLAlchemy's, a broken
  connection never going back to the pool.
- A keyed write is one transaction (todo_api/idempotency.py): its claim is part of it, so a
  request cut off anywhere leaves nothing behind, and a claim does not wait (beyond a moment)
  for a key that another request holds (`execute_unless_held`).
"""

import contextlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from fastapi import HTTPException
from fastapi.responses import JSONResponse, Response
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DataError, IntegrityError, OperationalError, ProgrammingError

from tests.support import PostgresServer, as_app_role, settings_for
from tests.support.retries import new_key
from todo_api.auth import Claims
from todo_api.db import create_db_engine, normalise_url
from todo_api.driver import StatementCursor
from todo_api.idempotency import IdempotencyKeys
from todo_api.idempotency_table import CLAIM, KEPT, PURGE, PURGE_LIMIT, IdempotencyKey
from todo_api.migrate import migrate
from todo_api.statements import DriverRows, Prepared
from todo_api.tasks import service
from todo_api.tasks.models import SortOrder, TaskCreate, TaskStatus, User
from todo_api.unit_of_work import HELD_WAIT_MS, RowExists, RowHeld, UnitOfWork

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


@contextmanager
def unit_of_work(engine: sa.Engine, owner: str = OWNER) -> Iterator[UnitOfWork]:
    """A request's unit of work for `owner`, closed at the end of the block."""
    work = UnitOfWork(engine, Claims(sub=owner, exp=time.time() + 60))
    try:
        yield work
    finally:
        work.close()


@pytest.fixture
def work(engine: sa.Engine) -> Iterator[UnitOfWork]:
    with unit_of_work(engine) as work:
        yield work


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


@pytest.fixture(scope="module")
def stale_statistics(postgres: PostgresServer) -> Iterator[tuple[sa.Engine, sa.Engine]]:
    """(the app's engine, a plain engine as the app's role) on a database whose statistics went
    stale (autovacuum off, so none are taken again): OWNER's tasks grew thirtyfold since, the
    planner expecting about 50 rows where there are 1,550, and 3,000 Idempotency-Keys (100 of
    them expired) came after the key table's statistics were taken empty."""
    url = postgres.create_database()
    migrate(settings_for(as_app_role(url)))
    admin = sa.create_engine(normalise_url(url), isolation_level="AUTOCOMMIT")
    insert = "INSERT INTO tasks (user_id, title, completed, created_at, updated_at) "
    with admin.connect() as conn:
        conn.execute(sa.text("ALTER TABLE tasks SET (autovacuum_enabled = off)"))
        conn.execute(sa.text("ALTER TABLE idempotency_keys SET (autovacuum_enabled = off)"))
        conn.execute(
            sa.text(
                "INSERT INTO users (id) SELECT 'u' || g FROM generate_series(1, 200) g "
                "UNION ALL SELECT :owner"
            ),
            {"owner": OWNER},
        )
        conn.execute(
            sa.text(
                insert + "SELECT CASE WHEN g <= 50 THEN :owner ELSE 'u' || (g % 200 + 1) END, "
                "'old', g % 2 = 0, now() - g * interval '1 second', now() "
                "FROM generate_series(1, 10050) g"
            ),
            {"owner": OWNER},
        )
        conn.execute(sa.text("ANALYZE tasks, idempotency_keys"))
        conn.execute(
            sa.text(
                insert + "SELECT :owner, 'new', g % 2 = 0, now() + g * interval '1 ms', now() "
                "FROM generate_series(1, 1500) g"
            ),
            {"owner": OWNER},
        )
        conn.execute(
            sa.text(
                "INSERT INTO idempotency_keys (user_id, key, fingerprint, claim, created_at, "
                "expires_at) SELECT :owner, 'key-' || g, 'f', 'c', now(), "
                "now() + CASE WHEN g <= 100 THEN interval '-1 day' ELSE interval '1 day' END "
                "FROM generate_series(1, 3000) g"
            ),
            {"owner": OWNER},
        )
    admin.dispose()
    engine = create_db_engine(settings_for(as_app_role(url)))
    plain = sa.create_engine(normalise_url(as_app_role(url)), isolation_level="AUTOCOMMIT")
    yield engine, plain
    engine.dispose()
    plain.dispose()
    postgres.drop_database(url)


def plan_as_sent(plain: sa.Engine, sent: bytes) -> str:
    """PostgreSQL's plan (run, with actual rows) of a query string as the unit of work sent it:
    its settings, then its statement."""
    statement = sent.rfind(b";") + 1  # the settings end with the last semicolon
    explain = b"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) " + sent[statement:]
    with plain.connect() as conn:
        cursor = conn.connection.dbapi_connection.cursor()
        cursor.execute(b"BEGIN;" + sent[:statement] + explain)  # the purge deletes nothing
        plan = "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute("ROLLBACK")
    return plan


@pytest.mark.parametrize("status", ["all", "pending", "completed"])
@pytest.mark.parametrize("order", ["desc", "asc"])
def test_a_page_reads_the_owners_index_in_order_however_stale_the_statistics(
    stale_statistics: tuple[sa.Engine, sa.Engine],
    monkeypatch: pytest.MonkeyPatch,
    status: TaskStatus,
    order: SortOrder,
) -> None:
    """A page of 50 reads 51 rows off the owner's index. Expecting no more rows than a page, the
    planner would rather read all of the owner's rows and sort them (1,550 here, and growing with
    every task until the next ANALYZE): the query the unit of work sends, planned as sent."""
    engine, plain = stale_statistics
    with unit_of_work(engine) as work, round_trips(monkeypatch) as sent:
        rows, more = service.list_tasks(
            work, status=status, sort="created", order=order, limit=50, offset=0
        )
    assert len(rows) == 50 and more
    # The list is the last statement (a new engine's first connection asks the server first).
    plan = plan_as_sent(plain, sent[-1])
    assert "Sort" not in plan and "Bitmap" not in plan, plan
    scan = next(line for line in plan.splitlines() if "Index Scan" in line)
    assert "ix_tasks_user" in scan and "rows=51 " in scan, plan


def test_the_purge_reads_the_expiry_index_however_stale_the_statistics(
    stale_statistics: tuple[sa.Engine, sa.Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every 8th keyed write purges a few expired keys. Its statistics taken on an empty table
    (a new deployment), the planner would read all the keys and sort them to find those few.

    Only the search is checked: with statistics this far off, the DELETE's own join to the
    keys it found may still read the table (autovacuum's ANALYZE keeps a growing table's
    statistics within about a tenth in production)."""
    engine, plain = stale_statistics
    with unit_of_work(engine) as work, round_trips(monkeypatch) as sent:
        purged = work.execute(PURGE["postgresql"], {"now": datetime.now(UTC)})
    assert purged.rowcount == PURGE_LIMIT
    plan = plan_as_sent(plain, sent[-1])
    found = plan[plan.index("Subquery Scan") :]  # the search for expired keys, to the end
    assert "Sort" not in found and "Seq Scan" not in found, plan
    assert "Index Scan using ix_idempotency_keys_expires_at" in found, plan


def test_a_statements_own_setting_goes_with_it_and_ends_with_it(
    work: UnitOfWork, monkeypatch: pytest.MonkeyPatch
) -> None:
    with round_trips(monkeypatch) as sent:
        service.list_tasks(work, status="all", sort="created", order="desc", limit=5, offset=0)
    assert b"SET LOCAL enable_sort = off;SELECT " in sent[-1], sent
    assert work.exec_driver_sql("SHOW enable_sort").first() == ("on",)


def test_a_statement_with_a_setting_of_its_own_is_refused_in_a_transaction(
    work: UnitOfWork,
) -> None:
    listed = service.LIST_STATEMENTS["all", "created", "desc"]
    page = {"owner_id": OWNER, "limit": 5, "offset": 0}
    purge = PURGE["postgresql"]
    refusals = {
        "execute": lambda: work.execute(listed, page),
        "execute_with_commit": lambda: work.execute_with_commit(purge, {"now": datetime.now(UTC)}),
        "execute_unless_held": lambda: work.execute_unless_held(purge, {"now": datetime.now(UTC)}),
    }
    for name, refused in refusals.items():
        with pytest.raises(RuntimeError, match="outside a transaction"), work.transaction():
            refused()
        assert work.exec_driver_sql("SHOW enable_sort").first() == ("on",), name


def test_a_setting_holds_no_percent_sign() -> None:
    """It is formatted with the statement's parameters: a % would be read as a placeholder."""
    with pytest.raises(ValueError, match="no %"):
        Prepared(sa.select(sa.literal(1)), "SET LOCAL search_path = '%s';")


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
        with unit_of_work(engine) as later:
            assert later.exec_driver_sql("SELECT pg_backend_pid()").first()[0] != pid


KEYS = IdempotencyKeys(ttl_seconds=60)
USERS = User.__table__  # type: ignore[attr-defined]
# A write (what execute_unless_held runs) that answers the lock_timeout it ran with.
LOCK_TIMEOUT = Prepared(
    sa.update(USERS)
    .where(USERS.c.id == OWNER)
    .values(name=USERS.c.name)
    .returning(sa.func.current_setting("lock_timeout"))
)
ADD_USER = Prepared(postgresql.insert(USERS).on_conflict_do_nothing())


def answer(text: str) -> Response:
    return JSONResponse({"done": text}, 201)


def test_a_keyed_write_cut_off_mid_work_leaves_its_key_free(
    work: UnitOfWork, engine: sa.Engine
) -> None:
    """Before, the claim was committed first: a request whose connection died during the work
    left its key answering 409 for IDEMPOTENCY_IN_PROGRESS_SECONDS (30 s)."""
    key = new_key()

    def cut_off() -> Response:
        work.exec_driver_sql("SELECT pg_terminate_backend(pg_backend_pid())")
        raise AssertionError("not reached")

    with pytest.raises(OperationalError):
        KEYS.run(work, key=key, fingerprint="f", action=cut_off)
    work.close()
    with unit_of_work(engine) as retry:
        done = KEYS.run(retry, key=key, fingerprint="f", action=lambda: answer("retry"))
    assert done.status_code == 201 and done.body == b'{"done":"retry"}'
    assert "idempotent-replayed" not in done.headers


def test_a_claim_does_not_wait_for_a_key_another_request_holds(
    work: UnitOfWork, engine: sa.Engine
) -> None:
    key = new_key()
    seen: list[int] = []

    def first() -> Response:
        # The work's first statement carries the claim: written, not committed, and a duplicate
        # now gets 409 at once.
        work.exec_driver_sql("SELECT 1")
        started = time.monotonic()
        with unit_of_work(engine) as duplicate, pytest.raises(HTTPException) as refused:
            KEYS.run(duplicate, key=key, fingerprint="f", action=lambda: answer("twice"))
        assert time.monotonic() - started < 2
        seen.append(refused.value.status_code)
        return answer("once")

    assert KEYS.run(work, key=key, fingerprint="f", action=first).status_code == 201
    assert seen == [409]
    # Committed: the key now answers the first request's answer.
    with unit_of_work(engine) as later:
        replay = KEYS.run(later, key=key, fingerprint="f", action=lambda: answer("again"))
    assert replay.body == b'{"done":"once"}' and replay.headers["idempotent-replayed"] == "true"


def test_a_statement_that_would_wait_raises_row_held(work: UnitOfWork, engine: sa.Engine) -> None:
    with unit_of_work(engine) as holder, holder.transaction():
        holder.execute(ADD_USER, {"id": OWNER + "-held"})
        started = time.monotonic()
        with pytest.raises(RowHeld), work.transaction():
            work.execute_unless_held(ADD_USER, {"id": OWNER + "-held"})
        assert time.monotonic() - started < 2


def test_a_lock_on_the_whole_table_is_waited_for(
    work: UnitOfWork, database: str, engine: sa.Engine
) -> None:
    """A migration that alters the table holds its lock for a moment: the write waits, as any
    would, instead of taking the lock for a held row (a 409 for every key, before)."""
    admin = sa.create_engine(normalise_url(database))
    try:
        with admin.connect() as conn:
            conn.execute(sa.text("LOCK TABLE users IN SHARE MODE"))
            release = threading.Timer(0.5, conn.rollback)
            release.start()
            started = time.monotonic()
            with work.transaction():
                work.execute_unless_held(ADD_USER, {"id": OWNER + "-after-the-lock"})
            waited = time.monotonic() - started
            release.join()
    finally:
        admin.dispose()
    assert waited >= 0.4


def test_the_work_after_a_claim_waits_for_locks_as_usual(work: UnitOfWork) -> None:
    """The claim's lock_timeout is its own: the rest of the transaction (the write itself, which
    may wait for a task another request is changing) has the server's default again."""
    with work.transaction():
        during = work.execute_unless_held(LOCK_TIMEOUT, {}).first()
        after = work.execute(LOCK_TIMEOUT, {}).first()
    assert during == (f"{HELD_WAIT_MS}ms",)
    assert after == ("0",)
    assert work.execute(LOCK_TIMEOUT, {}).first() == ("0",)
    with pytest.raises(RuntimeError, match="belongs in a transaction"):
        work.execute_unless_held(LOCK_TIMEOUT, {})


def claim_of(key: str, owner: str = OWNER) -> dict[str, object]:
    now = datetime.now(UTC)
    return {
        "user_id": owner,
        "key": key,
        "fingerprint": "f",
        "claim": "",
        "created_at": now,
        "expires_at": now + timedelta(minutes=1),
    }


def key_rows(engine: sa.Engine, key: str) -> int:
    with unit_of_work(engine) as reading:
        return len(list(reading.execute(KEPT, {"owner_id": OWNER, "idempotency_key": key})))


@contextmanager
def round_trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """The query strings sent to PostgreSQL in the block, one per round trip."""
    sent: list[bytes] = []
    execute = StatementCursor.execute

    def counted(cursor: StatementCursor, query: object, vars: object = None) -> None:
        execute(cursor, query, vars)
        sent.append(cursor.query)

    with monkeypatch.context() as patch:
        patch.setattr(StatementCursor, "execute", counted)
        yield sent


def test_a_keyed_write_is_one_round_trip_more_than_the_write(
    work: UnitOfWork, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim goes with the work's first statement, the kept answer with the COMMIT (three
    round trips before: the claim had one of its own)."""

    def rename() -> Response:
        work.execute(LOCK_TIMEOUT, {})
        return answer("renamed")

    with round_trips(monkeypatch) as sent:
        assert KEYS.run(work, key=new_key(), fingerprint="f", action=rename).status_code == 201
    # Every PURGE_EVERY-th keyed write then purges, after its COMMIT.
    sent = [query for query in sent if b"DELETE FROM idempotency_keys" not in query]
    assert len(sent) == 2, sent
    assert b"INSERT INTO idempotency_keys" in sent[0] and b"UPDATE users" in sent[0]
    assert sent[1].startswith(b"UPDATE idempotency_keys") and sent[1].endswith(b"COMMIT")


def test_the_statement_after_a_claim_on_an_existing_row_never_runs(
    work: UnitOfWork, engine: sa.Engine
) -> None:
    key = new_key()
    with work.transaction():
        work.claim(CLAIM, claim_of(key))
    add = Prepared(sa.insert(USERS))
    with pytest.raises(RowExists), work.transaction():
        work.claim(CLAIM, claim_of(key))
        work.execute(add, {"id": OWNER + "-never"})
    # The connection is fine (the failed claim only ended its transaction), the user not added.
    assert work.execute(sa.select(USERS.c.id).where(USERS.c.id == OWNER + "-never")).all() == []
    assert key_rows(engine, key) == 1


def test_a_claim_does_not_wait_for_a_row_another_transaction_holds(
    work: UnitOfWork, engine: sa.Engine
) -> None:
    key = new_key()
    with unit_of_work(engine) as holder, holder.transaction():
        holder.claim(CLAIM, claim_of(key))
        holder.exec_driver_sql("SELECT 1")  # sent: the row is held until this block ends
        started = time.monotonic()
        with pytest.raises(RowHeld), work.transaction():
            work.claim(CLAIM, claim_of(key))
            work.exec_driver_sql("SELECT 1")
        assert time.monotonic() - started < 2
    assert key_rows(engine, key) == 1


def test_the_work_after_a_claim_waits_for_locks_as_usual_in_the_same_round_trip(
    work: UnitOfWork,
) -> None:
    with work.transaction():
        work.claim(CLAIM, claim_of(new_key()))
        assert work.execute(LOCK_TIMEOUT, {}).first() == ("0",)


def test_a_claim_that_no_statement_carried_is_sent_before_the_commit(
    work: UnitOfWork, engine: sa.Engine
) -> None:
    """Alone: it fails as a claim, and the connection stays (a COMMIT's error drops it)."""
    key = new_key()
    with work.transaction():
        work.claim(CLAIM, claim_of(key))
    assert key_rows(engine, key) == 1
    with pytest.raises(RowExists), work.transaction():
        work.claim(CLAIM, claim_of(key))
    with pytest.raises(RowExists), work.transaction():
        work.claim(CLAIM, claim_of(key))
        work.execute_with_commit(LOCK_TIMEOUT, {})
    assert work.execute(LOCK_TIMEOUT, {}).first() == ("0",)  # the same connection, still fine
    with pytest.raises(RuntimeError, match="belongs in a transaction"):
        work.claim(CLAIM, claim_of(key))
    with pytest.raises(RuntimeError, match="one claim"), work.transaction():
        work.claim(CLAIM, claim_of(new_key()))
        work.claim(CLAIM, claim_of(new_key()))


def test_the_errors_of_the_statement_after_a_claim_stay_its_own(
    work: UnitOfWork, engine: sa.Engine
) -> None:
    """Only the claim's failures are RowExists and RowHeld: the work's own unique violation,
    and its own lock timeout (under a lock_timeout of its own, or the server's), are not."""
    key = new_key()
    with pytest.raises(IntegrityError), work.transaction():
        work.claim(CLAIM, claim_of(key))
        work.execute(Prepared(sa.insert(USERS)), {"id": OWNER})  # OWNER's row exists
    with unit_of_work(engine) as holder, holder.transaction():
        holder.execute(LOCK_TIMEOUT, {})  # holds OWNER's row
        with pytest.raises(OperationalError, match="lock timeout"), work.transaction():
            work.claim(CLAIM, claim_of(key))
            work.exec_driver_sql(
                "SET LOCAL lock_timeout = 50; UPDATE users SET name = name WHERE id = %(id)s",
                {"id": OWNER},
            )
    assert key_rows(engine, key) == 0


def test_a_statement_that_fails_before_it_is_sent_takes_its_claim_back(
    work: UnitOfWork, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver refuses a parameter before sending anything: the claim stays unsent, and the
    ROLLBACK goes without it (before, it went with the ROLLBACK, and was run)."""
    key = new_key()
    with round_trips(monkeypatch) as sent, pytest.raises(ProgrammingError), work.transaction():
        work.claim(CLAIM, claim_of(key))
        work.execute(Prepared(sa.text("SELECT :x")), {"x": object()})
    assert not any(b"idempotency_keys" in query for query in sent), sent
    assert key_rows(engine, key) == 0
    assert work.execute(LOCK_TIMEOUT, {}).first() == ("0",)


def test_a_commit_after_a_caught_error_is_refused(work: UnitOfWork) -> None:
    """PostgreSQL answers the COMMIT of a failed transaction with ROLLBACK and no error: a
    block that caught a statement's error must not pass for committed."""
    task = service.create_task(work, data=TaskCreate(title="kept"))
    rename = Prepared(sa.text("UPDATE tasks SET title = :title WHERE id = :id"))
    refused = pytest.raises(RuntimeError, match="COMMIT ended the transaction with ROLLBACK")
    with refused, work.transaction():
        work.execute(rename, {"title": "lost", "id": task["id"]})
        with contextlib.suppress(DataError):
            work.execute(Prepared(sa.text("SELECT 1 / (:zero)::int")), {"zero": 0})
    assert service.get_task(work, task_id=task["id"])["title"] == "kept"


def test_a_claim_dropped_with_its_block_is_never_sent(
    work: UnitOfWork, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = new_key()
    with round_trips(monkeypatch) as sent, pytest.raises(ZeroDivisionError), work.transaction():
        work.claim(CLAIM, claim_of(key))
        raise ZeroDivisionError
    assert not any(b"idempotency_keys" in query for query in sent), sent
    assert key_rows(engine, key) == 0


def test_a_statement_sent_with_the_commit_is_committed_with_it_or_dropped(
    work: UnitOfWork,
) -> None:
    task = service.create_task(work, data=TaskCreate(title="before"))
    rename = Prepared(sa.text("UPDATE tasks SET title = :title WHERE id = :id"))
    with work.transaction():
        work.execute_with_commit(rename, {"title": "with the commit", "id": task["id"]})
    with pytest.raises(ZeroDivisionError), work.transaction():
        work.execute_with_commit(rename, {"title": "dropped", "id": task["id"]})
        raise ZeroDivisionError
    assert service.get_task(work, task_id=task["id"])["title"] == "with the commit"
    with pytest.raises(RuntimeError, match="belongs in a transaction"):
        work.execute_with_commit(rename, {"title": "alone", "id": task["id"]})


def test_an_error_in_the_statement_sent_with_the_commit_is_the_commits(
    work: UnitOfWork, engine: sa.Engine
) -> None:
    """Nothing is committed, the error names only the COMMIT (the statement before it carries
    the answer's body), and the connection never goes back to the pool."""
    task = service.create_task(work, data=TaskCreate(title="kept"))
    rename = Prepared(sa.text("UPDATE tasks SET title = :title WHERE id = :id"))
    failing = Prepared(sa.text("SELECT 1 / (:zero)::int"))
    with pytest.raises(DataError) as raised, work.transaction():
        work.execute(rename, {"title": "not committed", "id": task["id"]})
        work.execute_with_commit(failing, {"zero": 0})
    assert raised.value.statement == "COMMIT"
    assert raised.value.connection_invalidated
    work.close()
    with unit_of_work(engine) as later:
        assert service.get_task(later, task_id=task["id"])["title"] == "kept"


def plant_expired_key(database: str, user: str, key: str) -> None:
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    admin = sa.create_engine(normalise_url(database))
    try:
        with admin.begin() as conn:
            conn.execute(
                sa.insert(IdempotencyKey.__table__),  # type: ignore[attr-defined]
                {
                    "user_id": user,
                    "key": key,
                    "fingerprint": "f",
                    "claim": "",
                    "created_at": long_ago,
                    "expires_at": long_ago,
                },
            )
    finally:
        admin.dispose()


def test_a_purging_write_never_holds_another_users_expired_key(
    work: UnitOfWork, engine: sa.Engine, database: str
) -> None:
    """A purge deletes anyone's expired keys: not inside a keyed write's transaction, whose row
    locks would make the user reusing one of those keys wait, then answer 409 (before)."""
    keys = IdempotencyKeys(ttl_seconds=60)  # its first keyed write is the purge's turn
    theirs = new_key()
    plant_expired_key(database, "yan", theirs)
    seen: list[int] = []

    def mine() -> Response:
        with unit_of_work(engine, "yan") as other:
            reused = keys.run(other, key=theirs, fingerprint="g", action=lambda: answer("yan"))
        seen.append(reused.status_code)
        return answer("zoe")

    assert keys.run(work, key=new_key(), fingerprint="f", action=mine).status_code == 201
    assert seen == [201]


def test_a_replay_holds_no_lock_on_its_key(work: UnitOfWork, engine: sa.Engine) -> None:
    """Replays of a finished key run side by side: reading the key takes no lock on its row
    (before, one replay inside its transaction made the next wait, then 409)."""
    key = new_key()
    assert (
        KEYS.run(work, key=key, fingerprint="f", action=lambda: answer("once")).status_code == 201
    )
    with unit_of_work(engine) as replaying, pytest.raises(RowExists), replaying.transaction():
        # A replay's claim fails first (its transaction ends there), then it reads the key.
        replaying.claim(CLAIM, claim_of(key))
        replaying.execute(LOCK_TIMEOUT, {})
    with unit_of_work(engine) as replaying, replaying.transaction():
        assert replaying.execute(KEPT, {"owner_id": OWNER, "idempotency_key": key}).first()
        # Meanwhile another replay of the same key.
        replay = KEYS.run(work, key=key, fingerprint="f", action=lambda: answer("twice"))
    assert replay.body == b'{"done":"once"}' and replay.headers["idempotent-replayed"] == "true"
