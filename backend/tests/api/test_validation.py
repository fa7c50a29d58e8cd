"""Bad input gets a clear 4xx with a JSON error and changes nothing."""

import pytest
import sqlalchemy as sa

from tests.support import auth

ALICE = auth("alice")
URL = "/api/alice/tasks"


def task_count(engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM tasks")).scalar_one())


class TestTitle:
    @pytest.mark.parametrize(
        ("title", "stored"),
        [
            ("a", "a"),
            ("x" * 200, "x" * 200),
            ("  padded  ", "padded"),
            ("é" * 200, "é" * 200),
            ("🦆" * 200, "🦆" * 200),
            ("日本語のタスク", "日本語のタスク"),
            (" " + "y" * 200 + "\n", "y" * 200),
        ],
    )
    def test_accepted_and_stored_trimmed(self, api, title, stored):
        response = api.post(URL, json={"title": title}, headers=ALICE)
        assert response.status_code == 201, response.text
        assert response.json()["title"] == stored
        fetched = api.get(response.headers["location"], headers=ALICE).json()
        assert fetched["title"] == stored

    @pytest.mark.parametrize(
        "title",
        ["", "   ", "\t\n", "x" * 201, "🦆" * 201, "a\x00b", "\x00", 5, True, None, ["a"]],
    )
    def test_refused_with_422(self, api, engine, title):
        response = api.post(URL, json={"title": title}, headers=ALICE)
        assert response.status_code == 422, response.text
        assert response.json()["detail"]
        assert task_count(engine) == 0

    def test_missing_title_is_422(self, api, engine):
        assert api.post(URL, json={"description": "d"}, headers=ALICE).status_code == 422
        assert task_count(engine) == 0

    def test_lone_surrogate_is_422(self, api, engine):
        body = b'{"title": "bad \\ud800 surrogate"}'
        headers = {**ALICE, "Content-Type": "application/json"}
        response = api.post(URL, content=body, headers=headers)
        assert response.status_code == 422
        assert task_count(engine) == 0


class TestDescription:
    def test_1000_characters_accepted(self, api):
        response = api.post(URL, json={"title": "t", "description": "d" * 1000}, headers=ALICE)
        assert response.status_code == 201
        assert len(response.json()["description"]) == 1000

    @pytest.mark.parametrize("description", ["d" * 1001, "nul\x00", 7])
    def test_refused_with_422(self, api, engine, description):
        response = api.post(URL, json={"title": "t", "description": description}, headers=ALICE)
        assert response.status_code == 422
        assert task_count(engine) == 0

    def test_update_with_bad_description_changes_nothing(self, api):
        task = api.post(URL, json={"title": "t", "description": "keep"}, headers=ALICE).json()
        response = api.put(
            f"{URL}/{task['id']}", json={"description": "d" * 1001, "title": "new"}, headers=ALICE
        )
        assert response.status_code == 422
        assert api.get(f"{URL}/{task['id']}", headers=ALICE).json() == task


class TestBody:
    @pytest.mark.parametrize(
        "body",
        [b"{", b"not json", b"[]", b'"title"', b"null", b'{"title": "a",}', b"\xff\xfe"],
    )
    def test_malformed_or_wrong_shape_json_is_422(self, api, engine, body):
        headers = {**ALICE, "Content-Type": "application/json"}
        response = api.post(URL, content=body, headers=headers)
        assert response.status_code == 422, response.text
        assert "detail" in response.json()
        assert task_count(engine) == 0

    def test_completed_must_be_a_json_boolean(self, api, engine):
        for value in ("true", 1, "yes"):
            response = api.post(URL, json={"title": "t", "completed": value}, headers=ALICE)
            assert response.status_code == 422
        assert task_count(engine) == 0

    def test_body_over_64_kib_is_413_json(self, api, engine):
        body = {"title": "t", "description": "x" * (65 * 1024)}
        response = api.post(URL, json=body, headers=ALICE)
        assert response.status_code == 413
        assert "detail" in response.json()
        assert task_count(engine) == 0

    def test_streamed_body_over_64_kib_is_413_json(self, api, engine):
        def chunks():
            yield b'{"title": "t", "description": "'
            for _ in range(70):
                yield b"x" * 1024
            yield b'"}'

        headers = {**ALICE, "Content-Type": "application/json"}
        response = api.post(URL, content=chunks(), headers=headers)
        assert response.status_code == 413
        assert "detail" in response.json()
        assert task_count(engine) == 0


class TestPathUser:
    def test_overlong_user_id_is_refused(self, api):
        user = "u" * 300
        response = api.get(f"/api/{user}/tasks", headers=auth("alice"))
        assert response.status_code in (403, 422)

    def test_unicode_user_id_round_trips(self, api):
        user = "用户-ü"
        response = api.post(f"/api/{user}/tasks", json={"title": "t"}, headers=auth(user))
        assert response.status_code == 201
        assert response.json()["user_id"] == user
        api.post(f"/api/{user}/tasks", json={"title": "t2"}, headers=auth(user))
        first = api.get(f"/api/{user}/tasks?limit=1", headers=auth(user))
        assert len(first.json()) == 1
        second = api.get(first.links["next"]["url"], headers=auth(user))
        assert [t["title"] for t in first.json() + second.json()] == ["t2", "t"]
