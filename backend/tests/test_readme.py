"""README.md runs as written: its API examples, against `todo-api dev` on a fresh PostgreSQL."""

import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.support import SECRET, PostgresServer, free_port
from todo_api.db import normalise_url

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


def readme_block(after: str) -> str:
    """The first ```sh block after the line containing `after`."""
    text = (REPO / "README.md").read_text()
    match = re.search(r"```sh\n(.*?)```", text[text.index(after) :], re.DOTALL)
    assert match, f"no sh block after {after!r}"
    return match.group(1)


@pytest.fixture
def fresh_database(postgres: PostgresServer) -> Iterator[str]:
    url = postgres.create_database()
    yield url.replace("postgresql+psycopg2://", "postgresql://", 1)
    postgres.drop_database(url)


@pytest.fixture
def dev_server(fresh_database: str) -> Iterator[tuple[int, dict[str, str]]]:
    """`todo-api dev` (what `make run` starts) on the fresh database, on a free port."""
    port = free_port()
    env = {
        "PATH": f"{BIN}:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "DATABASE_URL": fresh_database,
        "BETTER_AUTH_SECRET": SECRET,
    }
    process = subprocess.Popen(
        [str(BIN / "todo-api"), "dev", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()[0]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "todo-api dev did not become ready"
            time.sleep(0.2)
        yield port, env
    finally:
        process.terminate()
        process.communicate(timeout=30)


@pytest.fixture
def curl() -> None:
    """The examples are curl commands (the test image has no curl: a loud skip there)."""
    if shutil.which("curl") is None:
        message = "README EXAMPLE TEST SKIPPED: curl is not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        warnings.warn(message, stacklevel=1)
        pytest.skip(message)


@pytest.mark.usefixtures("curl")
def test_the_api_examples_run_as_written_on_a_fresh_postgresql(dev_server, fresh_database):
    port, env = dev_server
    script = readme_block("With `make run` going")
    assert "backend/.venv/bin/todo-api token alice" in script
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
    output = result.stdout
    assert result.returncode == 0, output + result.stderr
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
