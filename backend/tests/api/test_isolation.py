"""Two users: every cross-user attempt fails and changes nothing; concurrent writers stay apart."""

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import sqlalchemy as sa

from tests.support import auth, create_tasks

ALICE, BOB = auth("alice"), auth("bob")


@pytest.fixture
def alices_task(api):
    response = api.post(
        "/api/alice/tasks", json={"title": "private", "description": "d"}, headers=ALICE
    )
    return response.json()


def snapshot(engine):
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT * FROM tasks ORDER BY id")).all()


class TestBobAgainstAlicesTask:
    """Bob with his own valid token, aiming at Alice's task through his path and through hers."""

    def test_bob_cannot_see_it_in_his_list(self, api, alices_task):
        assert api.get("/api/bob/tasks", headers=BOB).json() == []

    def test_bob_cannot_list_alices_path(self, api, alices_task):
        assert api.get("/api/alice/tasks", headers=BOB).status_code == 403

    @pytest.mark.parametrize(
        ("method", "suffix", "body"),
        [
            ("GET", "", None),
            ("PUT", "", {"title": "hacked"}),
            ("DELETE", "", None),
            ("PATCH", "/complete", None),
            ("PATCH", "/complete", {"completed": True}),
        ],
    )
    def test_through_his_own_path_it_is_404_like_a_missing_task(
        self, api, engine, alices_task, method, suffix, body
    ):
        before = snapshot(engine)
        url = f"/api/bob/tasks/{alices_task['id']}{suffix}"
        response = api.request(method, url, json=body, headers=BOB)
        missing = api.request(method, f"/api/bob/tasks/987654{suffix}", json=body, headers=BOB)
        assert response.status_code == missing.status_code == 404
        assert response.json() == missing.json()
        assert snapshot(engine) == before

    @pytest.mark.parametrize(
        ("method", "suffix"),
        [("GET", ""), ("PUT", ""), ("DELETE", ""), ("PATCH", "/complete")],
    )
    def test_through_alices_path_it_is_403(self, api, engine, alices_task, method, suffix):
        before = snapshot(engine)
        url = f"/api/alice/tasks/{alices_task['id']}{suffix}"
        body = {"title": "hacked"} if method == "PUT" else None
        assert api.request(method, url, json=body, headers=BOB).status_code == 403
        assert snapshot(engine) == before

    def test_bob_cannot_create_in_alices_name(self, api, engine, alices_task):
        before = snapshot(engine)
        assert api.post("/api/alice/tasks", json={"title": "x"}, headers=BOB).status_code == 403
        assert snapshot(engine) == before


class TestConcurrentWriters:
    def test_many_users_creating_at_once_never_mix(self, api, engine):
        users = [f"user{i:02d}" for i in range(20)]
        base_url = str(api.base_url)

        def create_all(user: str) -> list[int]:
            with httpx.Client(base_url=base_url, headers=auth(user), timeout=30) as client:
                return create_tasks(client, user, 10)

        with ThreadPoolExecutor(max_workers=20) as pool:
            created = dict(zip(users, pool.map(create_all, users), strict=True))

        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT id, user_id, title FROM tasks")).all()
        assert len(rows) == 200
        for task_id, owner, title in rows:
            assert title.split(":")[0] == owner
            assert task_id in created[owner]
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM users")).scalar() == 20
        for user in users[:3]:
            listed = api.get(f"/api/{user}/tasks?limit=500", headers=auth(user)).json()
            assert {t["id"] for t in listed} == set(created[user])

    def test_concurrent_first_writes_by_one_user_create_one_user_row(self, api, engine):
        base_url = str(api.base_url)

        def create(n: int) -> int:
            with httpx.Client(base_url=base_url, headers=auth("newbie"), timeout=30) as client:
                return client.post("/api/newbie/tasks", json={"title": f"t{n}"}).status_code

        with ThreadPoolExecutor(max_workers=16) as pool:
            statuses = list(pool.map(create, range(32)))
        assert statuses == [201] * 32
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM users")).scalar() == 1
            assert conn.execute(sa.text("SELECT count(*) FROM tasks")).scalar() == 32

    def test_concurrent_toggles_are_not_lost(self, api):
        task = api.post("/api/alice/tasks", json={"title": "t"}, headers=ALICE).json()
        base_url = str(api.base_url)

        def toggle(_: int) -> bool:
            with httpx.Client(base_url=base_url, headers=ALICE, timeout=30) as client:
                response = client.patch(f"/api/alice/tasks/{task['id']}/complete")
                assert response.status_code == 200
                return bool(response.json()["completed"])

        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(toggle, range(21)))
        # Each toggle saw the previous one: 11 answers say true, 10 false, and it ends true.
        assert sorted(results) == [False] * 10 + [True] * 11
        assert api.get(f"/api/alice/tasks/{task['id']}", headers=ALICE).json()["completed"] is True
