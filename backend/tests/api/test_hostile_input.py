"""Hostile bodies: any nesting depth, any bytes, on every route with a body: a JSON 4xx, no 500."""

import logging

import pytest

from tests.support import auth

ALICE = auth("alice")
JSON = {**ALICE, "Content-Type": "application/json"}
DEPTHS = [10, 500, 1_000, 30_000, 100_000]


def nested(depth: int, field: str | None) -> bytes:
    inner = b"[" * depth + b"]" * depth
    return inner if field is None else b'{"%s": %s}' % (field.encode(), inner)


@pytest.fixture
def task_id(api) -> int:
    return int(api.post("/api/alice/tasks", json={"title": "t"}, headers=ALICE).json()["id"])


class TestDeepNesting:
    @pytest.mark.parametrize("depth", DEPTHS)
    @pytest.mark.parametrize("field", ["title", "description", "completed", None])
    @pytest.mark.parametrize("route", ["create", "update", "complete"])
    def test_any_depth_is_a_json_4xx(self, api, task_id, caplog, route, field, depth):
        method, url = {
            "create": ("POST", "/api/alice/tasks"),
            "update": ("PUT", f"/api/alice/tasks/{task_id}"),
            "complete": ("PATCH", f"/api/alice/tasks/{task_id}/complete"),
        }[route]
        with caplog.at_level(logging.INFO):
            response = api.request(method, url, content=nested(depth, field), headers=JSON)
        assert response.status_code in (413, 422), response.text[:300]
        assert response.headers["content-type"] == "application/json"
        assert response.json()["detail"]
        assert len(response.content) < 16 * 1024, "the error echoes the whole input back"
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
        assert max(len(r.getMessage()) for r in caplog.records) < 300

    def test_nothing_changes(self, api, task_id):
        api.put(f"/api/alice/tasks/{task_id}", content=nested(600, "title"), headers=JSON)
        api.post("/api/alice/tasks", content=nested(600, "title"), headers=JSON)
        tasks = api.get("/api/alice/tasks", headers=ALICE).json()
        assert [(t["id"], t["title"]) for t in tasks] == [(task_id, "t")]


class TestUnparsableBodies:
    """Every body that is not JSON is the same documented 422, whatever breaks the parser."""

    @pytest.mark.parametrize(
        "body",
        [
            '{"title":"caf\xe9"}'.encode("latin-1"),  # not UTF-8
            b'{"title": "\xc3\x28"}',  # a broken two-byte sequence
            b'{"title": ' + b"1" * 5000 + b"}",  # past Python's int digit limit
            b"[" * 30_000 + b"]" * 30_000,  # past the parser's recursion limit
        ],
    )
    def test_is_422_with_a_json_detail(self, api, body):
        for method, url in (("POST", "/api/alice/tasks"), ("PATCH", "/api/alice/tasks/1/complete")):
            response = api.request(method, url, content=body, headers=JSON)
            assert response.status_code == 422, response.text[:300]
            assert response.json()["detail"][0]["type"] == "json_invalid"
