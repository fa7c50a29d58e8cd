"""The suite's third way to a PostgreSQL (tests/support.py find_postgres): testcontainers, when a
Docker engine answers. Elsewhere the suite finds TEST_DATABASE_URL or localhost:5432 first, so
this runs it for real once per run, against the engine's socket."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import as_app_role, auth, find_postgres, running_app, settings_for
from tests.support.container_engine import Engine

pytestmark = [pytest.mark.container, pytest.mark.slow]

BACKEND = Path(__file__).resolve().parents[2]


def socket_env(engine: Engine) -> dict[str, str]:
    """The engine's socket for testcontainers, and no TEST_DATABASE_URL to take precedence."""
    env = {k: v for k, v in engine.env.items() if k != "TEST_DATABASE_URL"}
    if engine.kind == "podman":
        # No Ryuk image without a registry (the session removes its containers itself), and
        # the socket is on this host even where /.dockerenv makes testcontainers think otherwise.
        env |= {
            "TESTCONTAINERS_RYUK_DISABLED": "true",
            "TESTCONTAINERS_CONNECTION_MODE": "docker_host",
        }
    return env


def test_find_postgres_starts_a_testcontainers_postgresql_that_serves_the_api(
    container_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in socket_env(container_engine).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("TEST_DATABASE_URL", raising=False)
    server, reason, stack = find_postgres()
    with stack:
        assert server is not None, reason
        assert server.source == "testcontainers"
        url = server.create_database()
        with running_app(settings_for(as_app_role(url))) as api:
            created = api.post("/api/alice/tasks", json={"title": "tc"}, headers=auth("alice"))
            assert created.status_code == 201, created.text
            listed = api.get("/api/alice/tasks", headers=auth("alice")).json()
            assert [task["title"] for task in listed] == ["tc"]
        server.drop_database(url)
        server.close()


def test_the_api_tests_pass_on_a_testcontainers_postgresql(container_engine: Engine) -> None:
    """The task API's tests on their PostgreSQL backends (direct and through PgBouncer), the
    server from testcontainers: the same environment as above, so the same choice."""
    env = socket_env(container_engine) | {"CI": "true"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/api/test_tasks_api.py",
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            "postgresql or pgbouncer",
            "-W",
            "ignore::DeprecationWarning",
        ],
        cwd=BACKEND,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "passed" in summary and "skipped" not in summary, summary
