"""OWASP REST headers on every response: routes, errors, unknown paths, preflights, crashes."""

import pytest

from tests.support import auth, running_app, settings_for

ALICE = auth("alice")
ORIGIN = "http://localhost:3000"
API_HEADERS = {
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
    "referrer-policy": "no-referrer",
}


def assert_secured(response, csp: str = API_HEADERS["content-security-policy"]) -> None:
    for name, value in {**API_HEADERS, "content-security-policy": csp}.items():
        assert response.headers.get_list(name) == [value], (name, response.status_code)
    assert "strict-transport-security" not in response.headers


@pytest.fixture
def task_url(api) -> str:
    return str(api.post("/api/alice/tasks", json={"title": "t"}, headers=ALICE).headers["location"])


@pytest.mark.parametrize(
    ("method", "url", "headers", "body", "status"),
    [
        ("GET", "/api/alice/tasks", ALICE, None, 200),
        ("POST", "/api/alice/tasks", ALICE, {"title": "x"}, 201),
        ("GET", "{task}", ALICE, None, 200),
        ("PUT", "{task}", ALICE, {"title": "y"}, 200),
        ("PATCH", "{task}/complete", ALICE, None, 200),
        ("DELETE", "{task}", ALICE, None, 204),
        ("GET", "/api/alice/tasks", {}, None, 401),
        ("GET", "/api/bob/tasks", ALICE, None, 403),
        ("GET", "/api/alice/tasks/777", ALICE, None, 404),
        ("GET", "/no/such/path", ALICE, None, 404),
        ("PATCH", "{task}", ALICE, None, 405),
        ("POST", "/api/alice/tasks", ALICE, {"title": "x" * 70_000}, 413),
        ("POST", "/api/alice/tasks", ALICE, {"title": ""}, 422),
        ("GET", "/livez", {}, None, 200),
        ("HEAD", "/livez", {}, None, 200),
        ("GET", "/readyz", {}, None, 200),
        ("GET", "/metrics", {}, None, 200),
        ("GET", "/openapi.json", {}, None, 200),
    ],
)
def test_every_route_and_status(api, task_url, method, url, headers, body, status):
    url = url.replace("{task}", task_url)
    response = api.request(method, url, json=body, headers={**headers, "Origin": ORIGIN})
    assert response.status_code == status
    assert_secured(response)


def test_cors_preflight(api):
    response = api.options(
        "/api/alice/tasks",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert_secured(response)


def test_refused_preflight(api):
    response = api.options(
        "/api/alice/tasks",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert response.status_code == 400
    assert_secured(response)


def test_a_crash_500(sqlite_url):
    from todo_api.main import create_app

    app = create_app(settings_for(sqlite_url))

    @app.get("/crash")
    def crash() -> None:
        raise RuntimeError("boom")

    with running_app(settings_for(sqlite_url), app) as client:
        response = client.get("/crash")
    assert response.status_code == 500
    assert_secured(response)


def test_docs_pages_get_a_policy_that_lets_them_render(api):
    for url in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        response = api.get(url)
        assert response.status_code == 200
        csp = response.headers["content-security-policy"]
        assert "default-src 'none'" in csp
        assert "frame-ancestors 'none'" in csp
        assert "script-src 'self'" in csp
        assert "https:" not in csp
        assert response.headers["cache-control"] == "no-store"


def test_hsts_only_when_configured(sqlite_url):
    with running_app(settings_for(sqlite_url, hsts_seconds=31_536_000)) as client:
        for response in (client.get("/livez"), client.get("/nowhere"), client.get("/docs")):
            assert response.headers["strict-transport-security"] == "max-age=31536000"
