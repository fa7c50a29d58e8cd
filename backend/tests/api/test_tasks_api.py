"""Every route's contract, over real HTTP, on SQLite and PostgreSQL."""

from datetime import datetime

import pytest
import sqlalchemy as sa

from tests.support import auth

ALICE = auth("alice")
TASK_KEYS = {"id", "user_id", "title", "description", "completed", "created_at", "updated_at"}


def make_task(api, owner="alice", **fields):
    body = {"title": "a task", **fields}
    response = api.post(f"/api/{owner}/tasks", json=body, headers=auth(owner))
    assert response.status_code == 201, response.text
    return response.json()


def parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() is not None, f"{value} has no UTC offset"
    return parsed


class TestCreate:
    def test_returns_201_the_task_and_its_location(self, api):
        response = api.post(
            "/api/alice/tasks",
            json={"title": "Buy milk", "description": "2 litres"},
            headers=ALICE,
        )
        assert response.status_code == 201
        task = response.json()
        assert set(task) == TASK_KEYS
        assert task["user_id"] == "alice"
        assert task["title"] == "Buy milk"
        assert task["description"] == "2 litres"
        assert task["completed"] is False
        assert parse_time(task["created_at"]) == parse_time(task["updated_at"])
        assert response.headers["location"] == f"/api/alice/tasks/{task['id']}"
        assert api.get(response.headers["location"], headers=ALICE).json() == task

    def test_accepts_completed_and_defaults_description_to_null(self, api):
        task = make_task(api, completed=True)
        assert task["completed"] is True
        assert task["description"] is None

    def test_ignores_id_owner_and_timestamps_in_the_body(self, api, engine):
        task = make_task(
            api,
            id=999,
            user_id="mallory",
            created_at="2000-01-01T00:00:00+00:00",
            updated_at="2000-01-01T00:00:00+00:00",
        )
        assert task["id"] != 999
        assert task["user_id"] == "alice"
        assert parse_time(task["created_at"]).year > 2000
        with engine.connect() as conn:
            owners = conn.execute(sa.text("SELECT DISTINCT user_id FROM tasks")).scalars().all()
        assert owners == ["alice"]

    def test_creates_the_user_row_from_token_claims_once(self, api, engine):
        headers = auth("carol")
        for title in ("one", "two"):
            assert api.post("/api/carol/tasks", json={"title": title}, headers=headers).is_success
        with engine.connect() as conn:
            users = conn.execute(sa.text("SELECT id FROM users WHERE id = 'carol'")).all()
        assert len(users) == 1

    def test_keeps_email_and_name_claims(self, api, engine):
        from tests.support import bearer, hs256

        token = hs256("dave", email="dave@example.com", name="Dave")
        assert api.post("/api/dave/tasks", json={"title": "t"}, headers=bearer(token)).is_success
        with engine.connect() as conn:
            row = conn.execute(sa.text("SELECT email, name FROM users WHERE id='dave'")).one()
        assert tuple(row) == ("dave@example.com", "Dave")

    def test_an_email_taken_by_another_user_still_creates_the_task(self, api, engine):
        from tests.support import bearer, hs256

        first = hs256("erin", email="shared@example.com")
        second = hs256("frank", email="shared@example.com")
        assert api.post("/api/erin/tasks", json={"title": "t"}, headers=bearer(first)).is_success
        response = api.post("/api/frank/tasks", json={"title": "t"}, headers=bearer(second))
        assert response.status_code == 201
        with engine.connect() as conn:
            email = conn.execute(sa.text("SELECT email FROM users WHERE id='frank'")).scalar()
        assert email is None


class TestGet:
    def test_returns_the_task(self, api):
        task = make_task(api, description="d")
        response = api.get(f"/api/alice/tasks/{task['id']}", headers=ALICE)
        assert response.status_code == 200
        assert response.json() == task

    def test_unknown_id_is_404(self, api):
        response = api.get("/api/alice/tasks/123456", headers=ALICE)
        assert response.status_code == 404
        assert response.json() == {"detail": "Task not found"}

    @pytest.mark.parametrize(
        "task_id", ["abc", "1.5", "1.0", "+1", "1_0", "%201", "0", "-1", "2147483648", "9" * 30]
    )
    def test_invalid_id_is_422(self, api, task_id):
        response = api.get(f"/api/alice/tasks/{task_id}", headers=ALICE)
        assert response.status_code == 422
        assert "detail" in response.json()


class TestList:
    def test_empty_list_is_an_empty_array(self, api):
        response = api.get("/api/alice/tasks", headers=ALICE)
        assert response.status_code == 200
        assert response.json() == []
        assert "link" not in response.headers

    def test_newest_first_by_default(self, api):
        ids = [make_task(api, title=f"t{i}")["id"] for i in range(3)]
        listed = api.get("/api/alice/tasks", headers=ALICE).json()
        assert [t["id"] for t in listed] == ids[::-1]

    def test_status_filter(self, api):
        done = make_task(api, title="done", completed=True)
        todo = make_task(api, title="todo")
        for status, expected in [("completed", [done]), ("pending", [todo]), ("all", [todo, done])]:
            response = api.get("/api/alice/tasks", params={"status": status}, headers=ALICE)
            assert [t["id"] for t in response.json()] == [t["id"] for t in expected], status

    def test_sort_by_title_ascending_by_default(self, api):
        for title in ("banana", "apple", "cherry"):
            make_task(api, title=title)
        listed = api.get("/api/alice/tasks", params={"sort": "title"}, headers=ALICE).json()
        assert [t["title"] for t in listed] == ["apple", "banana", "cherry"]
        desc = api.get(
            "/api/alice/tasks", params={"sort": "title", "order": "desc"}, headers=ALICE
        ).json()
        assert [t["title"] for t in desc] == ["cherry", "banana", "apple"]

    def test_sort_by_updated(self, api):
        first = make_task(api, title="first")
        make_task(api, title="second")
        api.put(f"/api/alice/tasks/{first['id']}", json={"title": "first!"}, headers=ALICE)
        listed = api.get("/api/alice/tasks", params={"sort": "updated"}, headers=ALICE).json()
        assert [t["title"] for t in listed] == ["first!", "second"]
        asc = api.get(
            "/api/alice/tasks", params={"sort": "updated", "order": "asc"}, headers=ALICE
        ).json()
        assert [t["title"] for t in asc] == ["second", "first!"]

    def test_pages_with_a_next_link_until_the_end(self, api):
        ids = {make_task(api, title=f"t{i}")["id"] for i in range(5)}
        seen: list[int] = []
        url = "/api/alice/tasks?limit=2"
        pages = 0
        while url:
            response = api.get(url, headers=ALICE)
            assert response.status_code == 200
            seen += [t["id"] for t in response.json()]
            pages += 1
            url = response.links.get("next", {}).get("url")
        assert pages == 3
        assert sorted(seen) == sorted(ids)
        assert len(seen) == len(ids)

    def test_default_limit_is_100(self, api, engine):
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO users (id) VALUES ('alice')"))
            conn.execute(
                sa.text(
                    "INSERT INTO tasks (user_id, title, completed, created_at, updated_at) "
                    "VALUES ('alice', :title, false, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                ),
                [{"title": f"t{i}"} for i in range(101)],
            )
        response = api.get("/api/alice/tasks", headers=ALICE)
        assert len(response.json()) == 100
        assert 'rel="next"' in response.headers["link"]
        assert len(api.get("/api/alice/tasks?limit=500", headers=ALICE).json()) == 101

    @pytest.mark.parametrize(
        ("param", "value", "allowed"),
        [
            ("status", "done", "'all', 'pending' or 'completed'"),
            ("sort", "priority", "'created', 'updated' or 'title'"),
            ("order", "up", "'asc' or 'desc'"),
        ],
    )
    def test_bad_enum_value_is_422_naming_the_allowed_ones(self, api, param, value, allowed):
        response = api.get("/api/alice/tasks", params={param: value}, headers=ALICE)
        assert response.status_code == 422
        assert allowed in response.text

    @pytest.mark.parametrize(
        ("param", "value"), [("limit", "0"), ("limit", "501"), ("limit", "x"), ("offset", "-1")]
    )
    def test_bad_paging_is_422(self, api, param, value):
        response = api.get("/api/alice/tasks", params={param: value}, headers=ALICE)
        assert response.status_code == 422


class TestUpdate:
    def test_partial_update_changes_only_what_is_sent(self, api):
        task = make_task(api, title="old", description="keep")
        response = api.put(f"/api/alice/tasks/{task['id']}", json={"title": "new"}, headers=ALICE)
        assert response.status_code == 200
        updated = response.json()
        assert updated["title"] == "new"
        assert updated["description"] == "keep"
        assert updated["completed"] is False
        assert updated["created_at"] == task["created_at"]
        assert parse_time(updated["updated_at"]) > parse_time(task["updated_at"])

    def test_full_update(self, api):
        task = make_task(api)
        body = {"title": "t2", "description": "d2", "completed": True}
        updated = api.put(f"/api/alice/tasks/{task['id']}", json=body, headers=ALICE).json()
        assert {k: updated[k] for k in body} == body

    def test_description_null_clears_it(self, api):
        task = make_task(api, description="something")
        updated = api.put(
            f"/api/alice/tasks/{task['id']}", json={"description": None}, headers=ALICE
        ).json()
        assert updated["description"] is None

    @pytest.mark.parametrize("body", [{"title": None}, {"completed": None}, {"title": ""}])
    def test_null_title_or_completed_is_422_and_changes_nothing(self, api, body):
        task = make_task(api)
        response = api.put(f"/api/alice/tasks/{task['id']}", json=body, headers=ALICE)
        assert response.status_code == 422
        assert api.get(f"/api/alice/tasks/{task['id']}", headers=ALICE).json() == task

    def test_empty_body_changes_nothing(self, api):
        task = make_task(api)
        response = api.put(f"/api/alice/tasks/{task['id']}", json={}, headers=ALICE)
        assert response.status_code == 200
        assert response.json() == task

    def test_unknown_task_is_404(self, api):
        response = api.put("/api/alice/tasks/424242", json={"title": "x"}, headers=ALICE)
        assert response.status_code == 404


class TestDelete:
    def test_returns_204_with_an_empty_body_and_the_task_is_gone(self, api):
        task = make_task(api)
        response = api.delete(f"/api/alice/tasks/{task['id']}", headers=ALICE)
        assert response.status_code == 204
        assert response.content == b""
        assert api.get(f"/api/alice/tasks/{task['id']}", headers=ALICE).status_code == 404

    def test_twice_is_404(self, api):
        task = make_task(api)
        api.delete(f"/api/alice/tasks/{task['id']}", headers=ALICE)
        assert api.delete(f"/api/alice/tasks/{task['id']}", headers=ALICE).status_code == 404


class TestComplete:
    def test_toggles_back_and_forth(self, api):
        task = make_task(api)
        url = f"/api/alice/tasks/{task['id']}/complete"
        first = api.patch(url, headers=ALICE)
        assert first.status_code == 200
        assert first.json()["completed"] is True
        assert parse_time(first.json()["updated_at"]) > parse_time(task["updated_at"])
        assert api.patch(url, headers=ALICE).json()["completed"] is False

    @pytest.mark.parametrize("value", [True, False])
    def test_body_sets_instead_of_toggling(self, api, value):
        task = make_task(api, completed=value)
        url = f"/api/alice/tasks/{task['id']}/complete"
        for _ in range(2):
            response = api.patch(url, json={"completed": value}, headers=ALICE)
            assert response.json()["completed"] is value

    @pytest.mark.parametrize("body", [{"completed": "yes"}, {"completed": None}, {}])
    def test_bad_body_is_422_and_changes_nothing(self, api, body):
        task = make_task(api)
        url = f"/api/alice/tasks/{task['id']}/complete"
        assert api.patch(url, json=body, headers=ALICE).status_code == 422
        assert api.get(f"/api/alice/tasks/{task['id']}", headers=ALICE).json() == task

    def test_unknown_task_is_404(self, api):
        assert api.patch("/api/alice/tasks/99999/complete", headers=ALICE).status_code == 404
