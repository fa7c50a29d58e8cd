"""Test helpers: tokens, a JWKS server, the app behind a real uvicorn, throwaway databases."""

import base64
import contextlib
import json
import os
import secrets
import socket
import subprocess
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NoReturn

import httpx
import jwt
import pytest
import sqlalchemy as sa
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ed25519
from fastapi import FastAPI
from sqlalchemy.engine import make_url

from todo_api.config import Settings
from todo_api.db import normalise_url
from todo_api.main import create_app

BACKEND = Path(__file__).resolve().parents[2]
REPO = BACKEND.parent
SECRET = "test-secret-" + "x" * 60


def under_ci() -> bool:
    """CI (CI=true, as .ci/run and GitHub Actions set it) demands every real component."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def missing(reason: str) -> NoReturn:
    """A component a test needs is not here: skip loudly, or fail under CI.

    The one place that decides: a skip hides a gap only where nobody asked for the whole suite.
    """
    if under_ci():
        pytest.fail(f"CI is set but {reason}", pytrace=False)
    message = f"SKIPPED (install it to run these tests): {reason}"
    warnings.warn(message, stacklevel=2)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(process: subprocess.Popen[Any], timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout`; bounded either way."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def hs256(sub: str | None = "alice", *, secret: str = SECRET, **claims: Any) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + 900, "jti": jti(), **claims}
    payload = {key: value for key, value in payload.items() if value is not None}
    return jwt.encode(payload, secret.encode(), algorithm="HS256")


def jti() -> str:
    """A unique token id, so that no two test tokens are the same string (and cache entry)."""
    return uuid.uuid4().hex


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def auth(sub: str) -> dict[str, str]:
    return bearer(hs256(sub))


@dataclass
class SigningKey:
    kid: str
    private: ed25519.Ed25519PrivateKey = field(default_factory=ed25519.Ed25519PrivateKey.generate)

    def jwk(self) -> dict[str, str]:
        raw = self.private.public_key().public_bytes_raw()
        x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": self.kid, "alg": "EdDSA"}

    def sign(self, sub: str | None, issuer: str, **claims: Any) -> str:
        now = int(time.time())
        payload = {
            "sub": sub,
            "iat": now,
            "exp": now + 900,
            "iss": issuer,
            "aud": issuer,
            "jti": jti(),
            **claims,
        }
        payload = {key: value for key, value in payload.items() if value is not None}
        return jwt.encode(payload, self.private, algorithm="EdDSA", headers={"kid": self.kid})


class JwksServer:
    """Serves {base}/api/auth/jwks like Better Auth; can be taken down and counts its fetches."""

    def __init__(self) -> None:
        self.keys: list[SigningKey] = [SigningKey(kid="key-1")]
        self.up = True
        self.document: object | None = None  # served instead of the keys when set
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                if not outer.up or self.path != "/api/auth/jwks":
                    self.send_error(503 if not outer.up else 404)
                    return
                document = outer.document
                if document is None:
                    document = {"keys": [key.jwk() for key in outer.keys]}
                body = json.dumps(document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def sign(self, sub: str | None = "alice", **claims: Any) -> str:
        return self.keys[0].sign(sub, self.base_url, **claims)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextlib.contextmanager
def running_app(settings: Settings, app: FastAPI | None = None) -> Iterator[httpx.Client]:
    """The real app (or `app`) behind a real uvicorn server on a free port, with a client."""
    port = free_port()
    config = uvicorn.Config(
        app or create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def create_tasks(client: httpx.Client, user: str, count: int) -> list[int]:
    """`count` tasks titled "<user>:<n>", created by `user` on `client` (which carries their
    token) through the API, each answered 201 as theirs; their ids, in order."""
    ids = []
    for n in range(count):
        response = client.post(f"/api/{user}/tasks", json={"title": f"{user}:{n}"})
        assert response.status_code == 201, response.text
        assert response.json()["user_id"] == user
        ids.append(response.json()["id"])
    return ids


def settings_for(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "better_auth_secret": SECRET,
        "cors_origins": ["http://localhost:3000"],
        "jwks_min_refresh_seconds": 0,
        **overrides,
    }
    return Settings(**values)


def docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception:
        return False
    return True


def port_answers(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


# The app's role in the tests: it owns each test database (and so, after the migrations, the
# tables) but is neither a superuser nor BYPASSRLS, like Neon's neondb_owner, so PostgreSQL's
# row-level security applies to it. The admin URL's role (a superuser) skips row-level security:
# the tests use it to check what was really stored.
APP_ROLE = "todo_owner"
APP_ROLE_PASSWORD = "todo-owner-test-password"


def as_app_role(url: str) -> str:
    """The same database as the app's role (a SQLite URL is returned as it is)."""
    if url.startswith("sqlite"):
        return url
    target = make_url(url).set(username=APP_ROLE, password=APP_ROLE_PASSWORD)
    return target.render_as_string(hide_password=False)


class PostgresServer:
    """A PostgreSQL server the tests may create and drop databases on."""

    def __init__(self, admin_url: str, source: str) -> None:
        self.admin_url = normalise_url(admin_url)
        self.source = source
        self._admin = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        self._ensure_app_role()

    def _ensure_app_role(self) -> None:
        bypass = sa.text("SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = :role")
        with self._admin.connect() as conn:
            if conn.execute(bypass, {"role": APP_ROLE}).first() is None:
                # Other test runs on the same server may create it at the same moment.
                with contextlib.suppress(sa.exc.ProgrammingError, sa.exc.IntegrityError):
                    conn.execute(
                        sa.text(
                            f"CREATE ROLE {APP_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS "
                            f"PASSWORD '{APP_ROLE_PASSWORD}'"
                        )
                    )
            bypasses = conn.execute(bypass, {"role": APP_ROLE}).scalar()
        if bypasses is None:
            raise RuntimeError(f"cannot create the role {APP_ROLE}: the admin URL's role may not")
        if bypasses:
            raise RuntimeError(f"role {APP_ROLE} is a superuser or BYPASSRLS: drop it")

    def create_database(self) -> str:
        """A new database owned by APP_ROLE; its URL names the admin role (see as_app_role)."""
        name = f"todo_test_{uuid.uuid4().hex[:12]}"
        with self._admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}" OWNER {APP_ROLE}'))
        return make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    def drop_database(self, url: str) -> None:
        name = make_url(url).database
        with self._admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def close(self) -> None:
        self._admin.dispose()


def find_postgres() -> tuple[PostgresServer | None, str, contextlib.ExitStack]:
    """TEST_DATABASE_URL, else a testcontainers container, else a server on localhost:5432."""
    stack = contextlib.ExitStack()
    if url := os.environ.get("TEST_DATABASE_URL"):
        return PostgresServer(url, "TEST_DATABASE_URL"), "", stack
    if docker_answers():
        from testcontainers.community.postgres import PostgresContainer

        container = stack.enter_context(PostgresContainer("postgres:17-alpine", driver="psycopg2"))
        return PostgresServer(container.get_connection_url(), "testcontainers"), "", stack
    if port_answers("localhost", 5432):
        user = os.environ.get("PGUSER", "postgres")
        password = os.environ.get("PGPASSWORD", "")
        credentials = f"{user}:{password}" if password else user
        url = f"postgresql://{credentials}@localhost:5432/postgres"
        return PostgresServer(url, "localhost:5432"), "", stack
    return (
        None,
        (
            "no PostgreSQL: TEST_DATABASE_URL is unset, no Docker engine answers for "
            "testcontainers, and nothing listens on localhost:5432"
        ),
        stack,
    )


def random_user() -> str:
    return "user-" + secrets.token_hex(6)
