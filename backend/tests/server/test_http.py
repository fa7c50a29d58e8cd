"""HTTP surface: CORS on every status, OpenAPI, health probes, no 500s."""

import asyncio
import json

import pytest

from tests.support import auth, running_app, settings_for
from todo_api.http import REFUSED_BY_SERVER
from todo_api.main import create_app

ORIGIN = "http://localhost:3000"


class TestCors:
    def test_preflight_allows_the_authorization_header(self, api):
        response = api.options(
            "/api/alice/tasks",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == ORIGIN
        assert "authorization" in response.headers["access-control-allow-headers"].lower()
        assert "POST" in response.headers["access-control-allow-methods"]

    def test_unknown_origin_gets_no_allow_header(self, api):
        response = api.get("/api/alice/tasks", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in response.headers

    @pytest.mark.parametrize(
        ("method", "url", "headers", "body", "status"),
        [
            ("GET", "/api/alice/tasks", {}, None, 401),
            ("GET", "/api/bob/tasks", auth("alice"), None, 403),
            ("GET", "/api/alice/tasks/777", auth("alice"), None, 404),
            ("POST", "/api/alice/tasks", auth("alice"), {"title": ""}, 422),
            ("POST", "/api/alice/tasks", auth("alice"), {"title": "x" * 70000}, 413),
            ("POST", "/api/alice/tasks", auth("alice"), {"title": "ok"}, 201),
        ],
    )
    def test_every_status_carries_cors_headers(self, api, method, url, headers, body, status):
        response = api.request(method, url, json=body, headers={**headers, "Origin": ORIGIN})
        assert response.status_code == status
        assert response.headers["access-control-allow-origin"] == ORIGIN
        assert response.headers["content-type"] == "application/json"

    def test_location_and_link_are_exposed_to_browsers(self, api):
        response = api.get("/api/alice/tasks", headers={**auth("alice"), "Origin": ORIGIN})
        exposed = response.headers["access-control-expose-headers"].lower()
        assert "location" in exposed
        assert "link" in exposed

    def test_origins_come_from_settings(self, sqlite_url):
        settings = settings_for(
            sqlite_url, cors_origins=["https://app.example", "https://b.example"]
        )
        with running_app(settings) as client:
            for origin in ("https://app.example", "https://b.example"):
                response = client.get("/livez", headers={"Origin": origin})
                assert response.headers["access-control-allow-origin"] == origin
            response = client.get("/livez", headers={"Origin": ORIGIN})
            assert "access-control-allow-origin" not in response.headers


class TestOpenApi:
    def test_declares_bearer_and_documents_errors(self, api):
        spec = api.get("/openapi.json").json()
        schemes = spec["components"]["securitySchemes"]
        assert any(s["type"] == "http" and s["scheme"] == "bearer" for s in schemes.values())
        paths = spec["paths"]
        assert set(paths) == {
            "/api/{user_id}/tasks",
            "/api/{user_id}/tasks/{task_id}",
            "/api/{user_id}/tasks/{task_id}/complete",
        }
        for path, operations in paths.items():
            for method, operation in operations.items():
                assert operation.get("security"), (method, path)
                assert operation.get("description"), (method, path)
                assert {"401", "403", "422"} <= set(operation["responses"]), (method, path)
                if "{task_id}" in path:
                    assert "404" in operation["responses"], (method, path)

    def test_task_id_is_a_bounded_integer(self, api):
        operation = api.get("/openapi.json").json()["paths"]["/api/{user_id}/tasks/{task_id}"]
        (task_id,) = [p for p in operation["get"]["parameters"] if p["name"] == "task_id"]
        assert task_id["schema"]["type"] == "integer"
        assert task_id["schema"]["minimum"] == 1
        assert task_id["schema"]["maximum"] == 2**31 - 1

    def test_docs_page_is_served(self, api):
        response = api.get("/docs")
        assert response.status_code == 200
        assert "swagger" in response.text.lower()

    def test_health_routes_are_not_in_the_schema(self, api):
        paths = api.get("/openapi.json").json()["paths"]
        assert "/livez" not in paths
        assert "/readyz" not in paths


class TestHealth:
    def test_livez(self, api):
        response = api.get("/livez")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}

    def test_readyz_with_a_database(self, api):
        response = api.get("/readyz")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}

    def test_readyz_without_a_database_is_503_with_a_reason(self, tmp_path):
        # A PostgreSQL URL where nothing listens: the app still starts (no migrations) and
        # reports not ready instead of failing or hanging.
        from tests.support import free_port

        url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
        settings = settings_for(url, migrate_on_start=False, readiness_timeout_seconds=2)
        with running_app(settings) as client:
            assert client.get("/livez").status_code == 200
            response = client.get("/readyz")
            assert response.status_code == 503
            assert response.json()["status"] == "unavailable"
            assert "database" in response.json()["reason"]
            tasks = client.get("/api/alice/tasks", headers=auth("alice"))
            assert tasks.status_code == 503
            assert tasks.json() == {"detail": "Database unavailable; try again shortly"}


class TestNoServerErrors:
    @pytest.mark.parametrize(
        ("method", "url"),
        [
            ("GET", "/api/alice/tasks?limit=99999999999999999999999"),
            ("GET", "/api/alice/tasks?offset=99999999999999999999999"),
            ("GET", "/api/alice/tasks?status=%00"),
            ("GET", "/api/alice/tasks/%00"),
            ("GET", "/api/alice/tasks/1e3"),
            ("POST", "/api/alice/tasks/1"),
            ("PUT", "/api/alice/tasks"),
            ("DELETE", "/api/alice/tasks"),
            ("GET", "/api/alice/tasks/1/complete"),
            ("GET", "/nowhere"),
        ],
    )
    def test_odd_requests_get_a_json_4xx(self, api, method, url):
        response = api.request(method, url, headers=auth("alice"))
        assert 400 <= response.status_code < 500, response.text
        assert "detail" in response.json()

    def test_body_with_a_wrong_content_type_is_422(self, api):
        response = api.post(
            "/api/alice/tasks",
            content=b"title=x",
            headers={**auth("alice"), "Content-Type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code == 422


class TestUnexpectedErrors:
    def test_a_crash_is_a_json_500_with_cors_and_request_id(self, sqlite_url):
        from todo_api.main import create_app

        app = create_app(settings_for(sqlite_url))

        @app.get("/crash")
        def crash() -> None:
            raise RuntimeError("boom")

        with running_app(settings_for(sqlite_url), app) as client:
            response = client.get("/crash", headers={"Origin": ORIGIN, "X-Request-ID": "r-1"})
        assert response.status_code == 500
        assert response.json() == {"detail": "Internal server error"}
        assert response.headers["access-control-allow-origin"] == ORIGIN
        assert response.headers["x-request-id"] == "r-1"
        assert "boom" not in response.text

    @pytest.mark.parametrize(
        ("content_type", "body"),
        [
            ("text/plain", b"\xff\xfe"),
            (None, b"\xff"),
            ("application/json", b'{"title": NaN}'),
            ("application/json", b'{"title": 1e400}'),
            ("application/json", b'{"title": -Infinity}'),
        ],
    )
    def test_undecodable_or_non_finite_bodies_are_a_renderable_422(self, api, content_type, body):
        headers = auth("alice")
        if content_type:
            headers["Content-Type"] = content_type
        for path in ("/api/alice/tasks", "/api/alice/tasks/1/complete"):
            method = "POST" if path.endswith("tasks") else "PATCH"
            response = api.request(method, path, content=body, headers=headers)
            assert response.status_code == 422, response.text
            assert "detail" in response.json()  # strict JSON: no bare NaN or Infinity


class TestRequestBodyLayer:
    """The request layer (edge.py), called as the server calls the app: the token is checked
    before the body is asked for, and a refusal the server hands over is answered by the app."""

    @staticmethod
    def post(app, headers: dict[str, str], receive) -> list[dict]:
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/api/alice/tasks",
            "raw_path": b"/api/alice/tasks",
            "query_string": b"",
            "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
            "state": {},
        }

        async def call() -> None:
            # As the server does: the lifespan's state (todo_api/state.py) in every request.
            async with app.router.lifespan_context(app) as state:
                scope["state"].update(state or {})
                await asyncio.wait_for(app(scope, receive(scope), send), timeout=5)

        asyncio.run(call())
        return sent

    def test_no_token_is_answered_without_asking_for_the_body(self, sqlite_url):
        app = create_app(settings_for(sqlite_url))

        def receive(scope):
            async def never() -> dict:
                raise AssertionError("the body was asked for")

            return never

        sent = self.post(app, {"Content-Type": "application/json"}, receive)
        assert sent[0]["status"] == 401
        assert (b"www-authenticate", b"Bearer") in sent[0]["headers"]
        assert json.loads(sent[1]["body"]) == {"detail": "Not authenticated"}

    def test_a_refusal_from_the_server_is_answered_by_the_app(self, sqlite_url):
        app = create_app(settings_for(sqlite_url))

        def receive(scope):
            async def refused() -> dict:
                scope["state"][REFUSED_BY_SERVER] = (408, "Request body timed out")
                return {"type": "http.request", "body": b'{"ti', "more_body": True}

            return refused

        sent = self.post(app, {**auth("alice"), "Content-Type": "application/json"}, receive)
        assert sent[0]["status"] == 408
        assert any(name == b"x-request-id" for name, _ in sent[0]["headers"])
        assert json.loads(sent[1]["body"]) == {"detail": "Request body timed out"}
