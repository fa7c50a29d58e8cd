"""The `todo-api` command as a developer and an operator run it: real processes, real PostgreSQL.

Every start-up failure is one line on stderr that names the variable and the fix, and a non-zero
exit, for `dev`, `serve` and `migrate` alike; `serve` refuses before Gunicorn starts a worker.
"""

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.support import BACKEND, REPO, SECRET, PostgresServer, free_port, missing
from tests.support.dev_process import (
    BIN,
    environment,
    require,
    start_dev,
    stop,
    wait_until_answers,
)

pytestmark = pytest.mark.slow
COMMANDS = [["dev", "--port", "0"], ["serve"], ["migrate"]]


def run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 60):
    return subprocess.run(
        [str(BIN / "todo-api"), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_one_clear_line(result, *fragments: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert "Starting gunicorn" not in output and "Booting worker" not in output, output
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), lines[0]


@pytest.fixture(scope="module")
def server_url(postgres: PostgresServer) -> Iterator[str]:
    """A PostgreSQL URL of the test server, written as an operator writes it."""
    url = postgres.create_database()
    yield url.replace("postgresql+psycopg2://", "postgresql://", 1)
    postgres.drop_database(url)


def with_database(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


class TestStartupFailures:
    @pytest.mark.parametrize("args", COMMANDS, ids=lambda a: a[0])
    def test_a_database_that_does_not_exist(self, args, server_url, tmp_path):
        url = with_database(server_url, "no_such_database_xyz")
        env = environment(DATABASE_URL=url, BETTER_AUTH_SECRET=SECRET)
        result = run(args, env, tmp_path)
        assert_one_clear_line(result, "DATABASE_URL", "no_such_database_xyz", "createdb")

    @pytest.mark.parametrize("args", COMMANDS, ids=lambda a: a[0])
    def test_a_server_that_does_not_answer(self, args, tmp_path):
        address = f"127.0.0.1:{free_port()}"
        env = environment(DATABASE_URL=f"postgresql://postgres@{address}/todo")
        result = run(args, {**env, "BETTER_AUTH_SECRET": SECRET}, tmp_path)
        assert_one_clear_line(result, "DATABASE_URL", address)

    @pytest.mark.parametrize("args", COMMANDS, ids=lambda a: a[0])
    @pytest.mark.parametrize(
        "url", ["not a url", "postgresql://u@host:notaport/db", "mysql://u@localhost/db"]
    )
    def test_a_malformed_url(self, args, url, tmp_path):
        env = environment(DATABASE_URL=url, BETTER_AUTH_SECRET=SECRET)
        assert_one_clear_line(run(args, env, tmp_path), "DATABASE_URL", "postgresql://")

    @pytest.mark.parametrize(
        ("args", "variable", "value"),
        [
            (args, variable, value)
            for args in COMMANDS
            for variable, value in [
                ("DB_POOL_SIZE", "lots"),
                ("BETTER_AUTH_SECRET", "short"),
                ("BETTER_AUTH_URL", "app.example.com"),
                ("PORT", "99999"),
                # PostgreSQL's timeouts are milliseconds in 32 bits; inf is no bound at all.
                ("DB_STATEMENT_TIMEOUT_SECONDS", "2147484"),
                ("DB_CLIENT_TIMEOUT_SECONDS", "inf"),
                ("MIGRATION_STATEMENT_TIMEOUT_SECONDS", "inf"),
            ]
            if not (variable == "PORT" and args[0] == "migrate")  # migrate opens no port
        ],
        ids=str,
    )
    def test_an_invalid_setting(self, args, variable, value, tmp_path):
        env = environment(
            DATABASE_URL=f"sqlite:///{tmp_path / 'todo.db'}",
            **{"BETTER_AUTH_SECRET": SECRET, variable: value},
        )
        assert_one_clear_line(run(args, env, tmp_path), variable)

    def test_the_password_of_the_url_never_appears(self, server_url, tmp_path):
        url = with_database(server_url, "no_such_database_xyz")
        url = make_url(url).set(password="hunter2-secret").render_as_string(hide_password=False)
        for args in COMMANDS:
            env = environment(DATABASE_URL=url, BETTER_AUTH_SECRET=SECRET)
            result = run(args, env, tmp_path)
            assert "hunter2-secret" not in result.stdout + result.stderr


class TestDev:
    def test_the_banner_masks_the_database_password(self, server_url, tmp_path):
        # Trust authentication ignores the password; the banner must not show it anyway.
        url = make_url(server_url).set(password="hunter2-secret")
        env = environment(
            DATABASE_URL=url.render_as_string(hide_password=False), BETTER_AUTH_SECRET=SECRET
        )
        process = start_dev(env, tmp_path, free_port())
        output = stop(process)
        assert "hunter2-secret" not in output
        assert url.render_as_string(hide_password=True) in output

    def test_a_token_minted_in_any_directory_is_accepted_by_the_dev_server(self, tmp_path):
        """`make run` starts the server from the repository root; `todo-api token` may run from
        backend/ or anywhere else, and both find the same development secret."""
        env = environment(DATABASE_URL=f"sqlite:///{tmp_path / 'todo.db'}")
        default = BACKEND / ".todo-dev-secret"
        if not (default.exists() or os.access(BACKEND, os.W_OK)):
            # A read-only checkout (the test image): the same check, with the file elsewhere.
            env["DEV_SECRET_FILE"] = str(tmp_path / "dev-secret")
        port = free_port()
        process = start_dev(env, REPO, port)
        try:
            elsewhere = tmp_path / "elsewhere"
            elsewhere.mkdir()
            for cwd in (BACKEND, elsewhere, REPO):
                minted = run(["token", "alice"], env, cwd)
                assert minted.returncode == 0, minted.stderr
                response = httpx.get(
                    f"http://127.0.0.1:{port}/api/alice/tasks",
                    headers={"Authorization": f"Bearer {minted.stdout.strip()}"},
                    timeout=10,
                )
                assert response.status_code == 200, (cwd, response.text)
        finally:
            stop(process)
        assert not (elsewhere / ".todo-dev-secret").exists()


def test_a_good_database_url_passes_the_check(server_url, tmp_path):
    """The check itself must not refuse what works: a fresh database, migrated by the CLI."""
    result = run(["migrate"], environment(DATABASE_URL=server_url), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "database migrated up to head"


@pytest.fixture
def make() -> str:
    """`make` and the repository's Makefile (the test image has neither: a loud skip there)."""
    if not (REPO / "Makefile").exists():
        missing("this tree has no Makefile (make run tests)")
    return require("make", "MAKE RUN TESTS")


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_make_run_listens_on_port(make, how, tmp_path):
    port = free_port()
    env = environment(DATABASE_URL=f"sqlite:///{tmp_path / 'todo.db'}", BETTER_AUTH_SECRET=SECRET)
    args = [make, "--no-print-directory", "run"]
    if how == "argument":
        args.append(f"PORT={port}")
    else:
        env["PORT"] = str(port)
    # Its own process group: make starts todo-api as a child, and both are stopped together.
    process = subprocess.Popen(
        args,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        wait_until_answers(process, f"http://127.0.0.1:{port}/livez")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}" in output
