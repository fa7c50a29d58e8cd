"""README.md runs as written: its API examples, against `todo-api dev` on a fresh PostgreSQL."""

import re
import subprocess
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from tests.support import REPO, SECRET, PostgresServer, free_port
from tests.support.dev_process import BIN, environment, require, start_dev, stop
from todo_api.db import normalise_url

pytestmark = pytest.mark.slow


def readme_block(after: str) -> str:
    """The first ```sh block after the line containing `after`."""
    text = (REPO / "README.md").read_text()
    match = re.search(r"```sh\n(.*?)```", text[text.index(after) :], re.DOTALL)
    assert match, f"no sh block after {after!r}"
    return match.group(1)


def run_block(script: str, dev_server: tuple[int, dict[str, str]]) -> str:
    """Run a README block with bash -euo pipefail against the dev server; its output."""
    port, env = dev_server
    # This run's server and virtualenv (the test image keeps its virtualenv elsewhere).
    script = script.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    script = script.replace("backend/.venv/bin/", f"{BIN}/")
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture
def fresh_database(postgres: PostgresServer) -> Iterator[str]:
    url = postgres.create_database()
    yield url.replace("postgresql+psycopg2://", "postgresql://", 1)
    postgres.drop_database(url)


@pytest.fixture
def dev_server(fresh_database: str) -> Iterator[tuple[int, dict[str, str]]]:
    """`todo-api dev` (what `make run` starts) on the fresh database, on a free port."""
    port = free_port()
    env = environment(DATABASE_URL=fresh_database, BETTER_AUTH_SECRET=SECRET)
    process = start_dev(env, REPO, port)
    try:
        yield port, env
    finally:
        stop(process)


@pytest.fixture
def curl() -> str:
    """The examples are curl commands (the test image has no curl: a loud skip there)."""
    return require("curl", "README EXAMPLE TEST")


@pytest.mark.usefixtures("curl")
def test_the_api_examples_run_as_written_on_a_fresh_postgresql(dev_server, fresh_database):
    script = readme_block("With `make run` going")
    assert "backend/.venv/bin/todo-api token alice" in script
    output = run_block(script, dev_server)
    assert '"title":"Buy milk"' in output, output
    # PUT and PATCH reached the task just created (not a 404 for an assumed id 1).
    assert '"title":"Buy oat milk"' in output, output
    assert '"completed":true' in output, output
    assert "Task not found" not in output, output
    assert "\n204\n" in f"\n{output}", output
    assert "Token does not belong to this user" in output, output
    engine = sa.create_engine(normalise_url(fresh_database))
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM tasks")).scalar() == 0
    finally:
        engine.dispose()


@pytest.mark.usefixtures("curl")
def test_the_retries_and_concurrent_edits_examples_run_as_written(dev_server, fresh_database):
    output = run_block(readme_block("### Retries and concurrent edits"), dev_server)
    lines = [line.strip() for line in output.splitlines()]
    assert "HTTP/1.1 201 Created" in lines, output
    assert "idempotent-replayed: true" in lines, output
    codes = [line for line in lines if line.isdigit()]
    assert codes == ["422", "200", "412", "304"], output
    engine = sa.create_engine(normalise_url(fresh_database))
    try:
        with engine.connect() as conn:
            titles = conn.execute(sa.text("SELECT title FROM tasks")).scalars().all()
    finally:
        engine.dispose()
    assert titles == ["Pay rent (tab 1)"]
