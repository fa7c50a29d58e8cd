"""ETag, If-Match and If-None-Match (RFC 9110) on tasks, over real HTTP, on SQLite and PostgreSQL:
a second tab's stale edit is refused and changes nothing."""

import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support import auth, random_user
from tests.support.retries import tasks_of

STRONG_ETAG = re.compile(r'^"[!#-~]+"$')


@pytest.fixture
def owner() -> str:
    return random_user()


def make(api: httpx.Client, owner: str, title: str = "shared") -> httpx.Response:
    response = api.post(f"/api/{owner}/tasks", json={"title": title}, headers=auth(owner))
    assert response.status_code == 201
    return response


def url(owner: str, task: httpx.Response, suffix: str = "") -> str:
    return f"/api/{owner}/tasks/{task.json()['id']}{suffix}"


class TestETag:
    def test_every_task_response_carries_a_strong_etag(self, api, owner):
        created = make(api, owner)
        read = api.get(url(owner, created), headers=auth(owner))
        assert STRONG_ETAG.match(created.headers["etag"])
        assert read.headers["etag"] == created.headers["etag"]
        put = api.put(url(owner, created), json={"title": "b"}, headers=auth(owner))
        patch = api.patch(url(owner, created, "/complete"), headers=auth(owner))
        etags = [created.headers["etag"], put.headers["etag"], patch.headers["etag"]]
        assert len(set(etags)) == 3
        assert api.get(url(owner, created), headers=auth(owner)).headers["etag"] == etags[-1]

    def test_the_body_does_not_change(self, api, owner):
        created = make(api, owner)
        assert set(created.json()) == {
            "id",
            "user_id",
            "title",
            "description",
            "completed",
            "created_at",
            "updated_at",
        }

    def test_quick_updates_never_share_an_etag(self, api, owner):
        task = make(api, owner)
        seen = {task.headers["etag"]}
        for n in range(20):
            response = api.put(url(owner, task), json={"title": f"t{n}"}, headers=auth(owner))
            seen.add(response.headers["etag"])
        assert len(seen) == 21

    def test_a_task_that_reuses_a_deleted_tasks_id_has_another_etag(self, api, owner):
        old = make(api, owner)
        assert api.delete(url(owner, old), headers=auth(owner)).status_code == 204
        new = make(api, owner)
        # SQLite may hand out the same id again; the ETag still tells the tasks apart.
        assert new.headers["etag"] != old.headers["etag"]
        stale = api.put(
            url(owner, new),
            json={"title": "x"},
            headers=auth(owner) | {"If-Match": old.headers["etag"]},
        )
        assert stale.status_code in (404, 412)


class TestIfMatch:
    def test_a_stale_edit_from_a_second_tab_is_412_and_changes_nothing(self, api, engine, owner):
        task = make(api, owner)
        tab_a = tab_b = task.headers["etag"]
        saved = api.put(
            url(owner, task), json={"title": "from A"}, headers=auth(owner) | {"If-Match": tab_a}
        )
        assert saved.status_code == 200
        stale = api.put(
            url(owner, task), json={"title": "from B"}, headers=auth(owner) | {"If-Match": tab_b}
        )
        assert stale.status_code == 412
        assert stale.headers["etag"] == saved.headers["etag"]
        assert stale.json() == {"detail": "The task has changed since the ETag in If-Match"}
        assert [t["title"] for t in tasks_of(engine, owner)] == ["from A"]

    @pytest.mark.parametrize(
        ("method", "suffix", "body"),
        [("PATCH", "/complete", None), ("DELETE", "", None), ("PUT", "", {})],
    )
    def test_each_write_refuses_a_stale_etag(self, api, engine, owner, method, suffix, body):
        task = make(api, owner)
        stale = task.headers["etag"]
        current = api.put(url(owner, task), json={"title": "moved on"}, headers=auth(owner))
        refused = api.request(
            method, url(owner, task, suffix), json=body, headers=auth(owner) | {"If-Match": stale}
        )
        assert refused.status_code == 412
        assert refused.headers["etag"] == current.headers["etag"]
        assert tasks_of(engine, owner) == [
            {"id": task.json()["id"], "title": "moved on", "completed": False}
        ]

    @pytest.mark.parametrize(
        ("method", "suffix", "body", "status"),
        [
            ("PATCH", "/complete", None, 200),
            ("DELETE", "", None, 204),
            ("PUT", "", {"title": "y"}, 200),
        ],
    )
    def test_the_current_etag_or_star_lets_the_write_through(
        self, api, owner, method, suffix, body, status
    ):
        for condition in ("current", "*", "list"):
            task = make(api, owner)
            value = {
                "current": task.headers["etag"],
                "*": "*",
                "list": f'"nope", W/{task.headers["etag"]}, {task.headers["etag"]}',
            }[condition]
            answer = api.request(
                method,
                url(owner, task, suffix),
                json=body,
                headers=auth(owner) | {"If-Match": value},
            )
            assert answer.status_code == status, (condition, answer.text)

    def test_a_weak_etag_never_matches(self, api, owner):
        task = make(api, owner)
        weak = "W/" + task.headers["etag"]
        answer = api.patch(url(owner, task, "/complete"), headers=auth(owner) | {"If-Match": weak})
        assert answer.status_code == 412

    def test_a_missing_task_is_404_whatever_the_condition(self, api, owner):
        make(api, owner)
        for value in ("*", '"1-1"'):
            answer = api.put(
                f"/api/{owner}/tasks/999999",
                json={"title": "x"},
                headers=auth(owner) | {"If-Match": value},
            )
            assert answer.status_code == 404

    def test_another_users_task_is_404_not_412(self, api, owner):
        task = make(api, owner)
        stranger = random_user()
        answer = api.delete(
            f"/api/{stranger}/tasks/{task.json()['id']}",
            headers=auth(stranger) | {"If-Match": task.headers["etag"]},
        )
        assert answer.status_code == 404
        assert "etag" not in answer.headers

    def test_a_condition_that_names_no_etag_is_412_and_changes_nothing(self, api, engine, owner):
        task = make(api, owner)
        for value in ("abc", '"unterminated', task.headers["etag"].strip('"'), '"1-1"'):
            answer = api.put(
                url(owner, task), json={"title": "no"}, headers=auth(owner) | {"If-Match": value}
            )
            assert answer.status_code == 412, value
            assert answer.headers["etag"] == task.headers["etag"]
        assert [t["title"] for t in tasks_of(engine, owner)] == ["shared"]

    def test_an_empty_condition_counts_as_none(self, api, owner):
        task = make(api, owner)
        answer = api.put(
            url(owner, task), json={"title": "y"}, headers=auth(owner) | {"If-Match": ""}
        )
        assert answer.status_code == 200

    def test_racing_edits_with_one_etag_let_exactly_one_through(self, api, engine, owner):
        task = make(api, owner)
        etag = task.headers["etag"]

        def edit(n: int) -> int:
            return api.put(
                url(owner, task),
                json={"title": f"tab {n}"},
                headers=auth(owner) | {"If-Match": etag},
            ).status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = sorted(pool.map(edit, range(8)))
        assert statuses == [200] + [412] * 7
        assert len(tasks_of(engine, owner)) == 1


class TestIfNoneMatch:
    def test_the_current_etag_is_304_with_no_body(self, api, owner):
        task = make(api, owner)
        etag = task.headers["etag"]
        for value in (etag, "W/" + etag, f'"other", {etag}', "*"):
            answer = api.get(url(owner, task), headers=auth(owner) | {"If-None-Match": value})
            assert answer.status_code == 304, value
            assert answer.content == b""
            assert answer.headers["etag"] == etag

    def test_a_changed_task_is_sent_in_full(self, api, owner):
        task = make(api, owner)
        changed = api.put(url(owner, task), json={"title": "new"}, headers=auth(owner))
        answer = api.get(
            url(owner, task), headers=auth(owner) | {"If-None-Match": task.headers["etag"]}
        )
        assert answer.status_code == 200
        assert answer.json()["title"] == "new"
        assert answer.headers["etag"] == changed.headers["etag"]

    def test_a_missing_task_is_404(self, api, owner):
        make(api, owner)
        answer = api.get(f"/api/{owner}/tasks/999999", headers=auth(owner) | {"If-None-Match": "*"})
        assert answer.status_code == 404

    def test_a_value_that_names_no_etag_gets_the_task(self, api, owner):
        task = make(api, owner)
        for value in ("garbage", "", task.headers["etag"].strip('"')):
            answer = api.get(url(owner, task), headers=auth(owner) | {"If-None-Match": value})
            assert answer.status_code == 200, value


class TestCors:
    def test_the_new_headers_are_allowed_and_the_etag_exposed(self, api, owner):
        origin = "http://localhost:3000"
        preflight = api.options(
            f"/api/{owner}/tasks/1",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "PUT",
                "Access-Control-Request-Headers": "authorization, if-match, idempotency-key",
            },
        )
        assert preflight.status_code == 200
        allowed = preflight.headers["access-control-allow-headers"].lower()
        for header in ("if-match", "if-none-match", "idempotency-key"):
            assert header in allowed
        created = api.post(
            f"/api/{owner}/tasks", json={"title": "x"}, headers=auth(owner) | {"Origin": origin}
        )
        exposed = created.headers["access-control-expose-headers"].lower()
        assert "etag" in exposed and "idempotent-replayed" in exposed
