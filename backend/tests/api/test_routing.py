"""Routing edges: 405 with the full Allow list, trailing slashes, HEAD on the probes."""

import json

import pytest

from tests.support import auth, settings_for
from todo_api.main import create_app
from todo_api.tasks.router import router as tasks_router

ALICE = auth("alice")


class TestMethodNotAllowed:
    @pytest.mark.parametrize(
        ("method", "url", "allow"),
        [
            ("PATCH", "/api/alice/tasks/1", "GET, PUT, DELETE"),
            ("POST", "/api/alice/tasks/1", "GET, PUT, DELETE"),
            ("DELETE", "/api/alice/tasks", "GET, POST"),
            ("PUT", "/api/alice/tasks", "GET, POST"),
            ("GET", "/api/alice/tasks/1/complete", "PATCH"),
            ("POST", "/livez", "GET, HEAD"),
            ("DELETE", "/readyz", "GET, HEAD"),
        ],
    )
    def test_allow_lists_every_method_of_the_path(self, api, method, url, allow):
        response = api.request(method, url, headers=ALICE)
        assert response.status_code == 405
        assert response.headers["allow"] == allow
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {"detail": "Method Not Allowed"}


class TestTrailingSlash:
    def test_list_is_served_with_a_trailing_slash(self, api):
        api.post("/api/alice/tasks", json={"title": "t"}, headers=ALICE)
        response = api.get("/api/alice/tasks/", headers=ALICE)
        assert response.status_code == 200
        assert [t["title"] for t in response.json()] == ["t"]

    def test_create_is_served_with_a_trailing_slash(self, api):
        response = api.post("/api/alice/tasks/", json={"title": "slash"}, headers=ALICE)
        assert response.status_code == 201, response.text
        assert response.headers["location"] == f"/api/alice/tasks/{response.json()['id']}"
        assert api.get(response.headers["location"], headers=ALICE).json()["title"] == "slash"

    def test_task_routes_are_served_with_a_trailing_slash(self, api):
        task = api.post("/api/alice/tasks", json={"title": "t"}, headers=ALICE).json()
        url = f"/api/alice/tasks/{task['id']}"
        assert api.get(url + "/", headers=ALICE).json() == task
        assert api.patch(url + "/complete/", headers=ALICE).json()["completed"] is True
        assert api.put(url + "/", json={"title": "u"}, headers=ALICE).json()["title"] == "u"
        assert api.delete(url + "/", headers=ALICE).status_code == 204

    @pytest.mark.parametrize("url", ["/api/alice/tasks/", "/api/alice/tasks/1/", "/nowhere/"])
    def test_no_redirect_and_nothing_from_the_host_header(self, api, url):
        headers = {**ALICE, "Host": "evil.example"}
        for method in ("GET", "POST"):
            response = api.request(method, url, headers=headers, json={"title": "t"})
            assert not response.is_redirect, response.headers
            assert "evil.example" not in str(response.headers)
            assert "evil.example" not in response.text


class TestHead:
    @pytest.mark.parametrize("url", ["/livez", "/readyz"])
    def test_probes_answer_head_like_get_without_a_body(self, api, url):
        get = api.get(url)
        head = api.head(url)
        assert head.status_code == get.status_code == 200
        assert head.content == b""
        assert head.headers["content-type"] == get.headers["content-type"]


def test_the_task_routes_are_the_apps_own_and_document_what_include_router_would():
    """main.py puts the task routes on the app's router itself, first (for speed): the OpenAPI
    document must be the one the included router gives, byte for byte."""
    served = create_app(settings_for("sqlite://"))
    assert served.router.routes[: len(tasks_router.routes)] == tasks_router.routes
    included = create_app(settings_for("sqlite://"))
    del included.router.routes[: len(tasks_router.routes)]
    included.include_router(tasks_router)
    assert json.dumps(served.openapi()) == json.dumps(included.openapi())
