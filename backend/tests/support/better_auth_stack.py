"""The Better Auth companion (deploy/better-auth) as the tests run it: a real `node` process on a
free port, sharing a throwaway PostgreSQL database with the API; and its demo page, driven in a
browser as a person would.

Node, the companion's installed packages and Chromium are outside the Python environment: when
one is missing these tests skip with a loud reason, and under CI (CI=true) they fail instead.
"""

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import BrowserContext, Page, expect
from sqlalchemy.engine import make_url

from tests.support import REPO, free_port, missing, stop_process

COMPANION = REPO / "deploy" / "better-auth"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# A fixed secret for the companion (at least 32 characters; private keys are encrypted with it).
COMPANION_SECRET = "companion-test-secret-" + "y" * 40
PASSWORD = "correct horse battery"


def node() -> str:
    path = shutil.which("node")
    if path is None:
        missing("`node` is not on PATH (install Node.js 20+)")
    if not (COMPANION / "node_modules" / "better-auth").is_dir():
        missing("the companion's packages are not installed: run `npm ci` in deploy/better-auth")
    return str(path)


def chromium() -> str:
    if not os.access(CHROMIUM, os.X_OK):
        missing(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM)")
    return CHROMIUM


def pg_url(database_url: str) -> str:
    """The test database's URL as node-postgres reads it (no SQLAlchemy driver suffix)."""
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def schema_check(database_url: str) -> dict[str, object]:
    """Better Auth's migration planner's findings for the companion's configuration."""
    result = subprocess.run(
        [node(), "schema-check.mjs"],
        cwd=COMPANION,
        env={
            "PATH": os.environ.get("PATH", ""),
            "DATABASE_URL": pg_url(database_url),
            "BETTER_AUTH_URL": "http://127.0.0.1:3001",
            "BETTER_AUTH_SECRET": COMPANION_SECRET,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, object] = json.loads(result.stdout)
    return report


class Companion:
    """`node server.mjs` on a free port, once started; `restart(**env)` brings it back on the
    same port with `env` added."""

    def __init__(
        self, database_url: str, log: Path, api_url: str = "http://127.0.0.1:8000", **env: str
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log
        self._base_env = {
            "PATH": os.environ.get("PATH", ""),
            "DATABASE_URL": pg_url(database_url),
            "BETTER_AUTH_URL": self.url,
            "BETTER_AUTH_SECRET": COMPANION_SECRET,
            "TODO_API_URL": api_url,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
        }
        self._env = env
        self._process: subprocess.Popen[bytes] | None = None

    def set_api_url(self, api_url: str) -> None:
        """Where the demo page sends task requests (known once the API is running)."""
        self._base_env["TODO_API_URL"] = api_url

    def start(self, **env: str) -> None:
        with self._log.open("ab") as out:
            self._process = subprocess.Popen(
                [node(), "server.mjs"],
                cwd=COMPANION,
                env={**self._base_env, **self._env, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            assert self._process.poll() is None, self.log()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            assert time.monotonic() < deadline, f"the companion did not start:\n{self.log()}"
            time.sleep(0.1)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            stop_process(process, timeout=15)

    def restart(self, **env: str) -> None:
        self.stop()
        self.start(**env)

    @contextlib.contextmanager
    def configured(self, **env: str) -> Iterator[None]:
        """Run with `env` added for a while, then as before."""
        self.restart(**env)
        try:
            yield
        finally:
            self.restart()

    def log(self) -> str:
        return self._log.read_text(errors="replace") if self._log.exists() else ""

    def sign_up(self, client: httpx.Client, email: str, name: str = "Test User") -> str:
        """A new account through Better Auth's HTTP API; `client` keeps its session cookie."""
        response = client.post(
            f"{self.url}/api/auth/sign-up/email",
            json={"email": email, "password": PASSWORD, "name": name},
            headers={"Origin": self.url},
        )
        assert response.status_code == 200, response.text
        user_id: str = response.json()["user"]["id"]
        return user_id

    def sign_in(
        self, client: httpx.Client, email: str, password: str = PASSWORD, **headers: str
    ) -> int:
        """The status of a sign-in with email and password (429 once rate-limited)."""
        response = client.post(
            f"{self.url}/api/auth/sign-in/email",
            json={"email": email, "password": password},
            headers={"Origin": self.url, **headers},
        )
        assert response.status_code in (200, 401, 429), response.text
        return response.status_code

    def token(self, client: httpx.Client) -> str:
        response = client.get(f"{self.url}/api/auth/token")
        assert response.status_code == 200, response.text
        token: str = response.json()["token"]
        return token


def client_from(address: str) -> httpx.Client:
    """A client whose connections come from `address` (any of 127.0.0.0/8 on Linux): to the
    companion, another machine."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30)


@dataclass
class TodoPage:
    """The demo page in one browser context, driven as a person would."""

    page: Page
    responses: list[tuple[str, str, int]] = field(default_factory=list)

    @classmethod
    def open(cls, context: BrowserContext, url: str) -> "TodoPage":
        page = context.new_page()
        todo = cls(page)
        page.on("response", lambda r: todo.responses.append((r.request.method, r.url, r.status)))
        page.goto(url)
        expect(page.locator("#signed-out, #signed-in").locator("visible=true")).to_have_count(1)
        return todo

    def sign_up(self, name: str, email: str) -> str:
        self.page.fill("#name", name)
        self.page.fill("#email", email)
        self.page.fill("#password", PASSWORD)
        self.page.click("#sign-up")
        expect(self.page.locator("#who")).to_contain_text(email)
        return str(self.page.evaluate("todo.user.id"))

    def sign_in(self, email: str) -> None:
        self.page.fill("#email", email)
        self.page.fill("#password", PASSWORD)
        self.page.click("#sign-in")
        expect(self.page.locator("#who")).to_contain_text(email)

    def add(self, title: str, description: str = "", *, refused: bool = False) -> None:
        """Add a task and, unless the API is to refuse it, wait (as a person does) until it is
        on the list; for a refusal the caller checks the status line."""
        self.page.fill("#title", title)
        self.page.fill("#description", description)
        self.page.click("#new-task button[type=submit]")
        if not refused:
            expect(self.task(title).first).to_be_visible()

    def task(self, title: str) -> Any:
        return self.page.locator("#tasks li", has_text=title)

    def titles(self) -> Any:
        return self.page.locator("#tasks li .title")

    def expect_status(self, status: int, text: str = "") -> None:
        line = self.page.locator("#status")
        expect(line).to_have_attribute("data-status", str(status))
        expect(line).to_contain_text(f"{status}: {text}")

    def request(self, method: str, path: str) -> None:
        """A call through the page's own client, reported on the page like any button's."""
        self.page.evaluate(
            "([method, path]) => todo.action(() => todo.api(method, path))()", [method, path]
        )

    @property
    def token(self) -> str:
        return str(self.page.evaluate("todo.token"))
