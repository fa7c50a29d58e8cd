"""Idempotency-Key on writes, over real HTTP, on SQLite and PostgreSQL: a retry never does a
change twice, and what a key holds is its user's alone."""

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import sqlalchemy as sa

from tests.db.test_row_level_security import owner_work
from tests.support import as_app_role, auth, random_user, running_app, settings_for
from tests.support.retries import keys_of, new_key, tasks_of, writes_held
from todo_api.db import create_db_engine
from todo_api.idempotency import fingerprint
from todo_api.idempotency_table import EXPIRED, PURGE_EVERY, PURGE_LIMIT, IdempotencyKey
from todo_api.migrate import migrate

REPLAYED = "idempotent-replayed"


def create(api: httpx.Client, owner: str, key: str | None, title: str = "once") -> httpx.Response:
    headers = auth(owner) | ({"Idempotency-Key": key} if key is not None else {})
    return api.post(f"/api/{owner}/tasks", json={"title": title}, headers=headers)


@pytest.fixture
def owner(api: httpx.Client) -> str:
    """A user who already has a task (and so a user row)."""
    user = random_user()
    assert create(api, user, None, "first").status_code == 201
    return user


class TestCreate:
    def test_a_retry_gets_the_same_answer_and_creates_nothing(self, api, engine, owner):
        key = new_key()
        first = create(api, owner, key)
        again = create(api, owner, key)
        assert first.status_code == again.status_code == 201
        assert again.content == first.content
        for header in ("location", "etag", "content-type"):
            assert again.headers[header] == first.headers[header]
        assert REPLAYED not in first.headers
        assert again.headers[REPLAYED] == "true"
        assert [t["title"] for t in tasks_of(engine, owner)] == ["first", "once"]

    @pytest.mark.slow  # seconds of waiting (outside `make test-fast`)
    def test_a_retry_after_a_client_timeout_leaves_exactly_one_task(self, api, engine, owner):
        key = new_key()
        # The client gives up while the server still waits to insert the task.
        with writes_held(engine, owner), pytest.raises(httpx.ReadTimeout):
            api.post(
                f"/api/{owner}/tasks",
                json={"title": "slow"},
                headers=auth(owner) | {"Idempotency-Key": key},
                timeout=0.5,
            )
        # The first request finishes once the lock is gone; retries until it is answered.
        deadline = time.monotonic() + 20
        while (retry := create(api, owner, key, "slow")).status_code == 409:
            assert time.monotonic() < deadline, "the first request never finished"
            assert retry.headers["retry-after"] == "1"
            time.sleep(0.1)
        assert retry.status_code == 201, retry.text
        assert retry.json()["title"] == "slow"
        # On SQLite the retry may overtake the first request: give that one time to finish.
        time.sleep(1)
        assert [t["title"] for t in tasks_of(engine, owner)] == ["first", "slow"]

    def test_a_duplicate_while_the_first_runs_gets_409_or_the_kept_answer(self, api, engine, owner):
        key = new_key()
        with ThreadPoolExecutor(2) as pool:
            with writes_held(engine, owner):
                first = pool.submit(create, api, owner, key, "raced")
                time.sleep(0.5)  # PostgreSQL: the first has claimed the key, waits for the lock
                duplicate = pool.submit(create, api, owner, key, "raced")
                if engine.dialect.name == "postgresql":
                    answer = duplicate.result(timeout=10)
                    assert answer.status_code == 409, answer.text
                    assert "in progress" in answer.json()["detail"]
                else:
                    time.sleep(0.5)  # SQLite: both wait for the database's write lock
            statuses = sorted([first.result().status_code, duplicate.result().status_code])
        assert statuses in ([201, 201], [201, 409]), statuses
        assert [t["title"] for t in tasks_of(engine, owner)] == ["first", "raced"]

    def test_concurrent_duplicates_make_one_task(self, api, engine, owner):
        key = new_key()
        start = threading.Barrier(8)

        def send(_: int) -> httpx.Response:
            start.wait()
            return create(api, owner, key, "parallel")

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(send, range(8)))
        statuses = sorted(response.status_code for response in answers)
        assert set(statuses) <= {201, 409}, statuses
        created = [r for r in answers if r.status_code == 201]
        assert [r for r in created if REPLAYED not in r.headers] != []
        assert len({r.content for r in created}) == 1  # the kept answer, byte for byte
        assert [t["title"] for t in tasks_of(engine, owner)] == ["first", "parallel"]

    def test_a_users_first_write_with_a_key_creates_the_user_once(self, api, engine):
        user, key = random_user(), new_key()
        assert create(api, user, key).status_code == 201
        assert create(api, user, key).headers[REPLAYED] == "true"
        assert len(tasks_of(engine, user)) == 1

    def test_the_same_key_with_another_body_is_refused(self, api, engine, owner):
        key = new_key()
        assert create(api, owner, key, "one").status_code == 201
        reused = create(api, owner, key, "two")
        assert reused.status_code == 422
        assert reused.json() == {
            "detail": "This Idempotency-Key was already used for a different request"
        }
        assert [t["title"] for t in tasks_of(engine, owner)] == ["first", "one"]

    def test_the_same_key_on_another_route_is_refused(self, api, owner):
        key = new_key()
        task = create(api, owner, key).json()
        toggle = api.patch(
            f"/api/{owner}/tasks/{task['id']}/complete",
            headers=auth(owner) | {"Idempotency-Key": key},
        )
        assert toggle.status_code == 422

    def test_a_body_that_differs_only_in_spacing_is_the_same_request(self, api, owner):
        key = new_key()
        headers = auth(owner) | {"Idempotency-Key": key, "Content-Type": "application/json"}
        first = api.post(f"/api/{owner}/tasks", content=b'{"title":"x"}', headers=headers)
        again = api.post(f"/api/{owner}/tasks", content=b'{ "title" : "x" }', headers=headers)
        assert again.headers[REPLAYED] == "true"
        assert again.content == first.content

    def test_a_request_without_a_key_is_never_replayed(self, api, engine, owner):
        assert REPLAYED not in create(api, owner, None, "a").headers
        assert REPLAYED not in create(api, owner, None, "a").headers
        assert len(tasks_of(engine, owner)) == 3


class TestFailures:
    @pytest.fixture
    def boom(self, engine: sa.Engine) -> Iterator[None]:
        """Inserting a task titled "boom" fails in the database (a trigger), after the claim."""
        if engine.dialect.name == "postgresql":
            create = [
                "CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF NEW.title = 'boom' THEN RAISE EXCEPTION 'boom'; END IF; RETURN NEW; END $$",
                "CREATE TRIGGER refuse_boom BEFORE INSERT ON tasks "
                "FOR EACH ROW EXECUTE FUNCTION refuse_boom()",
            ]
            drop = ["DROP TRIGGER refuse_boom ON tasks", "DROP FUNCTION refuse_boom()"]
        else:
            create = [
                "CREATE TRIGGER refuse_boom BEFORE INSERT ON tasks WHEN NEW.title = 'boom' "
                "BEGIN SELECT RAISE(ABORT, 'boom'); END"
            ]
            drop = ["DROP TRIGGER refuse_boom"]
        with engine.begin() as conn:
            for statement in create:
                conn.exec_driver_sql(statement)
        try:
            yield
        finally:
            with engine.begin() as conn:
                for statement in drop:
                    conn.exec_driver_sql(statement)

    def test_a_request_that_fails_lets_its_key_go(self, api, engine, owner, boom):
        key = new_key()
        failed = create(api, owner, key, "boom")
        assert failed.status_code >= 500
        assert keys_of(engine, owner) == []  # not left claimed for IDEMPOTENCY_IN_PROGRESS_SECONDS
        assert [t["title"] for t in tasks_of(engine, owner)] == ["first"]


class TestUsers:
    def test_one_users_key_neither_reveals_nor_blocks_anothers(self, api, engine):
        alice, bob, key = random_user(), random_user(), new_key()
        mine = create(api, alice, key, "alice's secret")
        theirs = create(api, bob, key, "bob's")
        assert mine.status_code == theirs.status_code == 201
        assert REPLAYED not in theirs.headers
        assert theirs.json()["title"] == "bob's"
        assert "secret" not in theirs.text
        assert [t["title"] for t in tasks_of(engine, alice)] == ["alice's secret"]
        assert [t["title"] for t in tasks_of(engine, bob)] == ["bob's"]


class TestToggle:
    def test_a_toggle_retried_three_times_flips_once(self, api, owner):
        task = create(api, owner, None, "flip").json()
        key = new_key()
        answers = [
            api.patch(
                f"/api/{owner}/tasks/{task['id']}/complete",
                headers=auth(owner) | {"Idempotency-Key": key},
            )
            for _ in range(3)
        ]
        assert [r.status_code for r in answers] == [200, 200, 200]
        assert [REPLAYED in r.headers for r in answers] == [False, True, True]
        assert all(r.json()["completed"] is True for r in answers)
        current = api.get(f"/api/{owner}/tasks/{task['id']}", headers=auth(owner))
        assert current.json()["completed"] is True
        assert current.headers["etag"] == answers[0].headers["etag"]

    def test_a_new_key_is_a_new_toggle(self, api, owner):
        task = create(api, owner, None).json()
        for expected in (True, False):
            toggled = api.patch(
                f"/api/{owner}/tasks/{task['id']}/complete",
                headers=auth(owner) | {"Idempotency-Key": new_key()},
            )
            assert toggled.json()["completed"] is expected


class TestPutAndDelete:
    def test_a_retried_delete_answers_204_again(self, api, engine, owner):
        task = create(api, owner, None, "doomed").json()
        headers = auth(owner) | {"Idempotency-Key": new_key()}
        first = api.delete(f"/api/{owner}/tasks/{task['id']}", headers=headers)
        again = api.delete(f"/api/{owner}/tasks/{task['id']}", headers=headers)
        assert (first.status_code, again.status_code) == (204, 204)
        assert again.headers[REPLAYED] == "true"
        assert again.content == b""
        assert [t["title"] for t in tasks_of(engine, owner)] == ["first"]

    def test_a_kept_404_is_replayed_as_it_was(self, api, owner):
        headers = auth(owner) | {"Idempotency-Key": new_key()}
        first = api.put(f"/api/{owner}/tasks/999999", json={"title": "x"}, headers=headers)
        again = api.put(f"/api/{owner}/tasks/999999", json={"title": "x"}, headers=headers)
        assert (first.status_code, again.status_code) == (404, 404)
        assert again.content == first.content == b'{"detail":"Task not found"}'
        assert again.headers[REPLAYED] == "true"

    def test_a_retried_put_is_answered_with_the_first_etag(self, api, owner):
        task = create(api, owner, None).json()
        headers = auth(owner) | {"Idempotency-Key": new_key()}
        first = api.put(f"/api/{owner}/tasks/{task['id']}", json={"title": "y"}, headers=headers)
        again = api.put(f"/api/{owner}/tasks/{task['id']}", json={"title": "y"}, headers=headers)
        assert again.headers["etag"] == first.headers["etag"]
        current = api.get(f"/api/{owner}/tasks/{task['id']}", headers=auth(owner))
        assert current.headers["etag"] == first.headers["etag"]  # updated once


class TestKeyFormat:
    @pytest.mark.parametrize("key", ["", "x" * 256, "two words", "caf\u00e9"])
    def test_a_malformed_key_is_422_and_changes_nothing(self, api, engine, owner, key):
        headers = auth(owner) | {"Idempotency-Key": key.encode("latin-1")}
        response = api.post(f"/api/{owner}/tasks", json={"title": "no"}, headers=headers)
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
        assert len(tasks_of(engine, owner)) == 1

    def test_keys_of_255_visible_characters_are_accepted(self, api, owner):
        key = "".join(chr(33 + n % 94) for n in range(255))
        assert create(api, owner, key).status_code == 201
        assert create(api, owner, key).headers[REPLAYED] == "true"


@pytest.mark.slow  # seconds of waiting (outside `make test-fast`)
class TestExpiry:
    @pytest.fixture
    def short_lived(self, database_url: str) -> httpx.Client:
        settings = settings_for(as_app_role(database_url), idempotency_ttl_seconds=1)
        with running_app(settings) as client:
            yield client

    def test_an_expired_key_is_a_new_request(self, short_lived, engine):
        user, key = random_user(), new_key()
        first = create(short_lived, user, key)
        time.sleep(1.2)
        later = create(short_lived, user, key)
        assert later.status_code == 201 and REPLAYED not in later.headers
        assert later.json()["id"] != first.json()["id"]
        assert len(tasks_of(engine, user)) == 2

    def test_expired_keys_are_purged_by_later_requests(self, short_lived, engine):
        user, other = random_user(), random_user()
        old_keys = [new_key() for _ in range(3)]
        for key in old_keys:
            assert create(short_lived, user, key).status_code == 201
        assert keys_of(engine, user) == sorted(old_keys)
        time.sleep(1.2)
        # Anyone's requests purge everyone's expired keys: no cron job.
        for _ in range(PURGE_EVERY):
            assert create(short_lived, other, new_key()).status_code == 201
        assert keys_of(engine, user) == []
        assert len(keys_of(engine, other)) == PURGE_EVERY


class TestPurge:
    """Expired keys leave at the pace keyed writes arrive, a few per write."""

    BACKLOG = 200

    def expired(self, engine: sa.Engine) -> int:
        table = IdempotencyKey.__table__  # type: ignore[attr-defined]
        query = sa.select(sa.func.count()).where(table.c.expires_at < datetime.now(UTC))
        with engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def test_keyed_writes_delete_a_few_expired_keys_each_and_never_a_large_batch(self, api, engine):
        """A backlog of anyone's expired keys: every PURGE_EVERY-th keyed write deletes
        PURGE_LIMIT of them (8 per write), so the purge outpaces any sustained rate of keyed
        writes (each adds one), and no request deletes more. Before 2026-11: the first request
        of each minute deleted up to 1,000 (a latency spike), then none for 60 s."""
        long_ago = datetime.now(UTC) - timedelta(hours=1)
        rows = [
            {
                "user_id": random_user(),
                "key": new_key(),
                "fingerprint": "f",
                "claim": "c",
                "created_at": long_ago,
                "expires_at": long_ago,
            }
            for _ in range(self.BACKLOG)
        ]
        with engine.begin() as conn:
            conn.execute(sa.insert(IdempotencyKey.__table__), rows)  # type: ignore[attr-defined]
        user = random_user()
        deleted = []
        for _ in range(2 * PURGE_EVERY):
            before = self.expired(engine)
            assert create(api, user, new_key()).status_code == 201
            deleted.append(before - self.expired(engine))
        # Whichever write's turn came first (the app's count runs on from earlier tests).
        turns = [n for n, count in enumerate(deleted) if count]
        assert len(turns) == 2 and turns[1] - turns[0] == PURGE_EVERY, deleted
        assert [deleted[n] for n in turns] == [PURGE_LIMIT, PURGE_LIMIT], deleted
        assert len(keys_of(engine, user)) == 2 * PURGE_EVERY  # the writers' own keys stay


class TestUnfinished:
    """A key whose request never finished (the server died between claim and answer)."""

    def plant(self, engine: sa.Engine, owner: str, key: str, expires_in: float) -> None:
        now = datetime.now(UTC)
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO idempotency_keys (user_id, key, fingerprint, claim, "
                    "created_at, expires_at) VALUES (:u, :k, :f, 'dead', :c, :e)"
                ),
                {
                    "u": owner,
                    "k": key,
                    "f": fingerprint(
                        "POST",
                        f"/api/{owner}/tasks",
                        None,
                        {"title": "after the crash", "description": None, "completed": False},
                    ),
                    "c": now,
                    "e": now + timedelta(seconds=expires_in),
                },
            )

    def test_it_blocks_its_key_with_409_until_the_bound(self, api, engine, owner):
        key = new_key()
        self.plant(engine, owner, key, expires_in=60)
        answer = create(api, owner, key, "after the crash")
        assert answer.status_code == 409, answer.text
        assert answer.headers["retry-after"] == "1"
        assert len(tasks_of(engine, owner)) == 1

    def test_after_the_bound_a_retry_does_the_work_once(self, api, engine, owner):
        key = new_key()
        self.plant(engine, owner, key, expires_in=-1)
        first = create(api, owner, key, "after the crash")
        again = create(api, owner, key, "after the crash")
        assert first.status_code == 201 and REPLAYED not in first.headers
        assert again.headers[REPLAYED] == "true"
        assert [t["title"] for t in tasks_of(engine, owner)] == ["first", "after the crash"]


class TestRowLevelSecurity:
    """PostgreSQL's own rule on idempotency_keys, as the app's role (no superuser, no BYPASSRLS)."""

    @pytest.fixture
    def app_engine(self, postgres):
        url = postgres.create_database()
        settings = settings_for(as_app_role(url))
        migrate(settings)
        engine = create_db_engine(settings)
        yield engine
        engine.dispose()
        postgres.drop_database(url)

    def keys_seen(self, engine: sa.Engine, owner: str) -> list[str]:
        with owner_work(engine, owner) as conn:
            return list(conn.execute(sa.text("SELECT key FROM idempotency_keys")).scalars())

    def write(self, engine: sa.Engine, owner: str, user_id: str, key: str, expired: bool) -> None:
        now = datetime.now(UTC)
        expires_at = now + timedelta(seconds=-10 if expired else 60)
        with owner_work(engine, owner) as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO idempotency_keys (user_id, key, fingerprint, claim, "
                    "created_at, expires_at) VALUES (:u, :k, 'f', 'c', :c, :e)"
                ),
                {"u": user_id, "k": key, "c": now, "e": expires_at},
            )

    def test_live_keys_are_their_owners_and_expired_ones_anyones_to_purge(self, app_engine):
        self.write(app_engine, "alice", "alice", "live", expired=False)
        self.write(app_engine, "alice", "alice", "old", expired=True)
        assert self.keys_seen(app_engine, "alice") == ["live", "old"]
        assert self.keys_seen(app_engine, "bob") == ["old"]
        with owner_work(app_engine, "bob") as conn:
            purged = conn.execute(sa.text("DELETE FROM idempotency_keys WHERE expires_at < now()"))
            assert purged.rowcount == 1
            mine = conn.execute(sa.text("DELETE FROM idempotency_keys WHERE key = 'live'"))
            assert mine.rowcount == 0
        assert self.keys_seen(app_engine, "alice") == ["live"]

    def test_the_purge_reads_the_expiry_index_not_the_table(self, app_engine):
        """Each claim looks for a few expired keys: that must read the expiry index from its
        oldest entry, whatever the statistics say, never the whole table (without its ORDER
        BY the planner chose a Seq Scan here: 2 ms a claim at 10,000 keys, growing with it)."""
        with owner_work(app_engine, "alice") as work:
            work.exec_driver_sql(
                "INSERT INTO idempotency_keys (user_id, key, fingerprint, claim, created_at, "
                "expires_at) SELECT 'alice', 'key-' || g, 'f', 'c', now(), "
                "now() + (CASE WHEN mod(g, 2) = 0 THEN 1 ELSE -1 END) * interval '1 hour' "
                "FROM generate_series(1, 4000) g"
            )
            work.exec_driver_sql("ANALYZE idempotency_keys")
            expired = EXPIRED.with_for_update(skip_locked=True).compile(app_engine)
            params = {
                **expired.params,
                "now": datetime.now(UTC),
                "owner_id": "x",
                "idempotency_key": "y",
            }
            plan = "\n".join(row[0] for row in work.exec_driver_sql(f"EXPLAIN {expired}", params))
        assert "ix_idempotency_keys_expires_at" in plan and "Seq Scan" not in plan, plan

    def test_no_key_can_be_written_in_another_users_name(self, app_engine):
        with pytest.raises(sa.exc.ProgrammingError, match="row-level security"):
            self.write(app_engine, "bob", "alice", "planted", expired=False)
        assert self.keys_seen(app_engine, "alice") == []
