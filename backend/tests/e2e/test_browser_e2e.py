"""The whole stack in a real browser: Debian's Chromium (driven by Playwright, which downloads
nothing here) opens the companion's demo page, signs up with Better Auth, trades the session for
a JWT and manages tasks against the API cross-origin. A throwaway PostgreSQL database, the real
API behind uvicorn and the companion (`node`) run on free ports.

Set E2E_SCREENSHOT to a path to keep the page's screenshot there (`make screenshot` does, for
the README).
"""

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import sqlalchemy as sa
from playwright.sync_api import Browser, BrowserContext, expect, sync_playwright

from tests.support import bearer, running_app, settings_for
from tests.support.better_auth_stack import Companion, TodoPage, chromium, node
from todo_api.config import Settings
from todo_api.db import normalise_url
from todo_api.migrate import migrate

pytestmark = pytest.mark.slow

# Playwright's launch() adds --headless and a fresh temporary --user-data-dir itself.
CHROMIUM_FLAGS = [
    "--no-sandbox",  # the tests run as root, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
GRACE_SECONDS = 3600


@dataclass
class Stack:
    database_url: str
    companion: Companion
    api: httpx.Client
    settings: Settings
    browser: Browser
    shots: Path

    def sql(self, statement: str, **params: Any) -> list[Any]:
        engine = sa.create_engine(normalise_url(self.database_url))
        try:
            with engine.begin() as conn:
                result = conn.execute(sa.text(statement), params)
                return list(result) if result.returns_rows else []
        finally:
            engine.dispose()


@pytest.fixture(scope="module")
def stack(postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    executable = chromium()
    node()
    database_url = postgres.create_database()
    migrate(settings_for(database_url))
    logs = tmp_path_factory.mktemp("e2e")
    companion = Companion(
        database_url, logs / "companion.log", JWKS_GRACE_SECONDS=str(GRACE_SECONDS)
    )
    # Only Better Auth's tokens (no HS256 secret); no leeway, so expiry is exact; a token with a
    # new key id makes the API fetch the JWKS at once.
    settings = settings_for(
        database_url,
        better_auth_secret=None,
        better_auth_url=companion.url,
        cors_origins=[companion.url],
        jwt_leeway_seconds=0,
        jwks_min_refresh_seconds=0,
    )
    try:
        with running_app(settings) as api, sync_playwright() as playwright:
            companion.set_api_url(str(api.base_url))
            companion.start()
            browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
            try:
                yield Stack(database_url, companion, api, settings, browser, logs)
            finally:
                browser.close()
    finally:
        companion.stop()
        postgres.drop_database(database_url)


def new_context(stack: Stack) -> BrowserContext:
    return stack.browser.new_context(viewport={"width": 900, "height": 640})


def kid(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def test_two_users_each_manage_only_their_own_tasks(stack: Stack):
    with new_context(stack) as ada_context, new_context(stack) as bob_context:
        ada = TodoPage.open(ada_context, stack.companion.url)
        bob = TodoPage.open(bob_context, stack.companion.url)
        ada_id = ada.sign_up("Ada", "ada@example.com")
        bob_id = bob.sign_up("Bob", "bob@example.com")
        assert ada_id != bob_id

        ada.add("Buy milk", "2 litres")
        ada.add("Write the report")
        ada.add("Call the plumber", "before Friday")
        ada.add("Old note")
        bob.add("Bob's secret plan")
        expect(ada.titles()).to_have_count(4)
        expect(bob.titles()).to_have_text(["Bob's secret plan"])

        ada.task("Write the report").locator("input[type=checkbox]").check()
        expect(ada.task("Write the report")).to_have_class("done")
        ada.task("Old note").locator("button.delete").click()
        expect(ada.task("Old note")).to_have_count(0)
        ada.task("Buy milk").locator("button.edit").click()
        ada.page.locator(".edit-title").fill("Buy oat milk")
        ada.page.locator(".edit-form button[type=submit]").click()
        expect(ada.task("Buy oat milk")).to_contain_text("2 litres")

        ada.page.screenshot(path=stack.shots / "demo.png")
        if target := os.environ.get("E2E_SCREENSHOT"):
            shutil.copyfile(stack.shots / "demo.png", target)

        # What the server holds, as each user sees it after a fresh load.
        ada.page.reload()
        expect(ada.titles()).to_have_text(["Call the plumber", "Write the report", "Buy oat milk"])
        expect(ada.task("Write the report")).to_have_class("done")
        bob.page.reload()
        expect(bob.titles()).to_have_text(["Bob's secret plan"])

        # Bob's path with Ada's token: the page shows the API's 403.
        ada.request("GET", f"/api/{bob_id}/tasks")
        ada.expect_status(403, "Token does not belong to this user")

    # The tasks point at the very rows Better Auth created at sign-up.
    rows = stack.sql(
        "SELECT u.email, a.provider_id, count(t.id) FROM users u "
        "JOIN accounts a ON a.user_id = u.id LEFT JOIN tasks t ON t.user_id = u.id "
        "WHERE u.id IN (:ada, :bob) GROUP BY u.email, a.provider_id ORDER BY u.email",
        ada=ada_id,
        bob=bob_id,
    )
    assert [tuple(row) for row in rows] == [
        ("ada@example.com", "credential", 3),
        ("bob@example.com", "credential", 1),
    ]


def test_preflights_and_error_statuses_reach_the_page(stack: Stack):
    with new_context(stack) as context:
        carol = TodoPage.open(context, stack.companion.url)
        # Chromium's own record of its CORS preflights (Playwright does not report them).
        cdp = context.new_cdp_session(carol.page)
        preflights: dict[str, str] = {}
        preflight_status: dict[str, int] = {}

        def sent(event: dict[str, Any]) -> None:
            if event.get("type") == "Preflight":
                preflights[event["requestId"]] = event["request"]["url"]

        def answered(event: dict[str, Any]) -> None:
            if event.get("type") == "Preflight":
                preflight_status[event["requestId"]] = event["response"]["status"]

        cdp.on("Network.requestWillBeSent", sent)
        cdp.on("Network.responseReceived", answered)
        cdp.send("Network.enable")

        carol_id = carol.sign_up("Carol", "carol@example.com")
        carol.add("stale")
        expect(carol.task("stale")).to_have_count(1)
        api_origin = str(stack.api.base_url).rstrip("/")
        deadline = time.monotonic() + 5
        while not any(status == 200 for status in preflight_status.values()):
            assert time.monotonic() < deadline, f"no answered preflight: {preflights}"
            carol.page.wait_for_timeout(50)
        assert all(url.startswith(api_origin) for url in preflights.values())

        # 422: a blank title, refused by the API.
        carol.add("   ", refused=True)
        carol.expect_status(422, "title")

        # 404: the task was deleted in another tab; this one still shows it.
        other_tab = TodoPage.open(context, stack.companion.url)
        other_tab.task("stale").locator("button.delete").click()
        expect(other_tab.task("stale")).to_have_count(0)
        carol.task("stale").locator("input[type=checkbox]").check()
        carol.expect_status(404, "Task not found")
        expect(carol.task("stale").locator("input[type=checkbox]")).not_to_be_checked()

        # 403: another user's path.
        carol.request("GET", "/api/someone-else/tasks")
        carol.expect_status(403)

        # 401 after sign-out: no session, so no token; the API says so itself.
        carol.page.click("#sign-out")
        expect(carol.page.locator("#signed-out")).to_be_visible()
        carol.request("GET", f"/api/{carol_id}/tasks")
        carol.expect_status(401, "Not authenticated")
        assert ("GET", f"{api_origin}/api/{carol_id}/tasks", 401) in carol.responses


def expires_in(token: str) -> float:
    return float(jwt.decode(token, options={"verify_signature": False})["exp"]) - time.time()


def test_an_expired_token_is_replaced_once_and_a_lost_session_shows_401(stack: Stack):
    with stack.companion.configured(JWT_EXPIRATION_SECONDS="3"), new_context(stack) as context:
        dave = TodoPage.open(context, stack.companion.url)
        dave_id = dave.sign_up("Dave", "dave@example.com")
        dave.add("first")
        tasks_url = f"{str(stack.api.base_url).rstrip('/')}/api/{dave_id}/tasks"

        def posts() -> list[int]:
            return [
                status
                for method, url, status in dave.responses
                if (method, url) == ("POST", tasks_url)
            ]

        # Counted from here: on a slow machine the first token may already have expired once.
        retries, posted, old_token = (
            dave.page.evaluate("todo.stats.retries"),
            len(posts()),
            dave.token,
        )
        assert expires_in(old_token) <= 3
        time.sleep(max(0.0, expires_in(old_token)) + 1.1)

        dave.add("second")
        assert dave.page.evaluate("todo.stats.retries") == retries + 1
        assert dave.token != old_token
        assert posts()[posted:] == [401, 201], "expired token: 401, then a new token and a retry"

        # Signed out in another tab: once the token expires, no new one can be had.
        other_tab = TodoPage.open(context, stack.companion.url)
        other_tab.page.click("#sign-out")
        expect(other_tab.page.locator("#signed-out")).to_be_visible()
        time.sleep(max(0.0, expires_in(dave.token)) + 1.1)
        dave.add("third", refused=True)
        dave.expect_status(401, "Token has expired")
        expect(dave.page.locator("#signed-out")).to_be_visible()
        remaining = stack.sql("SELECT title FROM tasks WHERE user_id = :id ORDER BY id", id=dave_id)
        assert [row.title for row in remaining] == ["first", "second"]


def test_a_key_rotation_keeps_old_tokens_valid_for_the_grace_period(stack: Stack):
    with new_context(stack) as context:
        erin = TodoPage.open(context, stack.companion.url)
        erin_id = erin.sign_up("Erin", "erin@example.com")
        erin.add("before rotation")
        expect(erin.task("before rotation")).to_have_count(1)
        old_token = erin.token

        # The rotation interval has passed for the current key: the next token gets a new one.
        stack.sql(
            "UPDATE jwks SET expires_at = now() - interval '1 second' WHERE id = :kid",
            kid=kid(old_token),
        )
        new_token = str(erin.page.evaluate("todo.fetchToken()"))
        assert kid(new_token) != kid(old_token)
        erin.add("after rotation")
        expect(erin.task("after rotation")).to_have_count(1)

        jwks_url = f"{stack.companion.url}/api/auth/jwks"
        published = {key["kid"] for key in httpx.get(jwks_url).json()["keys"]}
        assert {kid(old_token), kid(new_token)} <= published

        # An API instance that has seen neither key: both verify within the grace period...
        path = f"/api/{erin_id}/tasks"
        with running_app(stack.settings) as fresh:
            assert fresh.get(path, headers=bearer(old_token)).status_code == 200
            assert fresh.get(path, headers=bearer(new_token)).status_code == 200

        # ...and after it the old key is gone from the JWKS, and its tokens with it.
        stack.sql(
            "UPDATE jwks SET expires_at = now() - make_interval(secs => :grace) WHERE id = :kid",
            grace=GRACE_SECONDS + 1,
            kid=kid(old_token),
        )
        published = {key["kid"] for key in httpx.get(jwks_url).json()["keys"]}
        assert kid(old_token) not in published and kid(new_token) in published
        with running_app(stack.settings) as fresh:
            refused = fresh.get(path, headers=bearer(old_token))
            assert refused.status_code == 401
            assert refused.json()["detail"] == "Token signing key is not known"
            assert fresh.get(path, headers=bearer(new_token)).status_code == 200
