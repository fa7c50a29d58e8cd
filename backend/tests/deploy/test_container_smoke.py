"""The image's runtime, reproduced without Docker: its ENV, its CMD, compose's migrate command.

The environment is built from nothing but the Dockerfile's final-stage ENV and what
docker-compose.yml hands the container, so a dependency on anything else in the developer's
shell shows up here. The commands run from this virtualenv, built from the same lock file as
the image's. As root (CI in a container), the server runs as uid/gid 65534 without capabilities,
through setpriv, with a working directory it cannot write, as in the image's read-only root.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
import pytest
import sqlalchemy as sa

from tests.support import PostgresServer, free_port
from tests.support.deploy_files import (
    compose_environment,
    compose_services,
    compose_tmpfs,
    exec_form,
    runtime_stage,
)
from tests.support.deploy_files import (
    metrics_dir as compose_metrics_dir,
)
from todo_api.db import normalise_url

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
SECRET = "smoke-secret-" + "s" * 40
METRICS_TOKEN = "smoke-metrics-token"
NOBODY = 65534


def image_environment(**overrides: str) -> dict[str, str]:
    """The final stage's ENV, with its virtualenv mapped onto this one's."""
    _, env = runtime_stage()
    paths = []
    for entry in env["PATH"].split(":"):
        if entry in ("${PATH}", "$PATH"):
            paths.append(os.environ.get("PATH", "/usr/bin:/bin"))
        elif entry.endswith("/.venv/bin"):
            paths.append(str(BIN))
        else:
            paths.append(entry)
    # The python base image's own ENV (LANG) is not in our Dockerfile; it sets this one.
    return {"LANG": "C.UTF-8", **env, "PATH": ":".join(paths), **overrides}


def unprivileged(directories: list[Path]) -> list[str]:
    """A command prefix that drops root, as the image's USER does; [] when not root."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    prefix = [
        *([setpriv] if setpriv else []),
        f"--reuid={NOBODY}",
        f"--regid={NOBODY}",
        "--clear-groups",
        "--no-new-privs",
        "--inh-caps=-all",
        "--bounding-set=-all",
    ]
    probe = [*prefix, sys.executable, "-c", "import todo_api"]
    if setpriv is None or subprocess.run(probe, capture_output=True, timeout=60).returncode:
        warnings.warn(
            "container smoke test runs as root: setpriv is missing or cannot drop privileges",
            stacklevel=2,
        )
        return []
    for directory in directories:
        os.chown(directory, NOBODY, NOBODY)
    return prefix


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    url: str
    log: Path
    metrics_dir: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-5000:]


@pytest.fixture(scope="module")
def database(postgres: PostgresServer) -> Iterator[str]:
    """A fresh database, as a deployment passes it: a plain postgresql:// URL."""
    url = postgres.create_database().replace("postgresql+psycopg2://", "postgresql://", 1)
    yield url
    postgres.drop_database(normalise_url(url))


@pytest.fixture(scope="module")
def migrated(database: str) -> str:
    """The database after compose's migrate service's command, with that service's environment."""
    service = compose_services()["migrate"]
    command = service["command"]
    env = image_environment(**{**compose_environment(service), "DATABASE_URL": database})
    with tempfile.TemporaryDirectory(prefix="todo-smoke-migrate-") as workdir:
        result = subprocess.run(command, env=env, cwd=workdir, capture_output=True, timeout=120)
    assert result.returncode == 0, (result.stdout + result.stderr).decode(errors="replace")
    return database


def serve(database: str, workdir: Path) -> Served:
    """The image's CMD with the api service's environment, the way compose would start it."""
    stage, _ = runtime_stage()
    command = exec_form(stage.last("CMD") or "[]")
    metrics_dir = workdir / "prometheus-multiproc"
    cwd = workdir / "app"  # like WORKDIR /app: readable, not writable by the server's user
    for directory in (metrics_dir, cwd):
        directory.mkdir()
    # The metrics directory with the mode compose's tmpfs gives it (owned by the server's user
    # below): the workers must be able to write there with exactly that.
    _, image_env = runtime_stage()
    api = compose_services()["api"]
    tmpfs = compose_tmpfs(api)[compose_metrics_dir(api, image_env)]
    metrics_dir.chmod(int(tmpfs["mode"], 8))
    workdir.chmod(0o755)
    cwd.chmod(0o755)
    port = free_port()
    env = image_environment(
        **{
            **compose_environment(compose_services()["api"]),
            "DATABASE_URL": database,
            "BETTER_AUTH_SECRET": SECRET,
            "METRICS_TOKEN": METRICS_TOKEN,
            "MIGRATE_ON_START": "false",
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            "HOST": "127.0.0.1",
            "PORT": str(port),
        }
    )
    prefix = unprivileged([metrics_dir])
    log = workdir / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*prefix, *command], env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT
        )
    served = Served(process, f"http://127.0.0.1:{port}", log, metrics_dir)
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, f"the server exited early:\n{served.output()}"
        try:
            if httpx.get(served.url + "/readyz", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"/readyz never answered 200:\n{served.output()}"
        time.sleep(0.2)
    if prefix:
        status = Path(f"/proc/{process.pid}/status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        assert set(uids) == {str(NOBODY)}, status
    return served


def stop(served: Served) -> int | None:
    """SIGTERM, as Docker and Kubernetes send it; the exit code, or None if it would not stop."""
    if served.process.poll() is None:
        served.process.send_signal(signal.SIGTERM)
    graceful = int(compose_environment(compose_services()["api"])["GRACEFUL_TIMEOUT"])
    try:
        return served.process.wait(timeout=graceful + 10)
    except subprocess.TimeoutExpired:
        served.process.kill()
        served.process.wait()
        return None


@pytest.fixture(scope="module")
def server(migrated: str) -> Iterator[Served]:
    with tempfile.TemporaryDirectory(prefix="todo-smoke-") as workdir:
        served = serve(migrated, Path(workdir))
        try:
            yield served
        finally:
            stop(served)


def token(sub: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "iat": now, "exp": now + 300}, SECRET, algorithm="HS256")


def test_migrate_command_creates_the_schema(migrated: str) -> None:
    engine = sa.create_engine(normalise_url(migrated))
    try:
        tables = set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"alembic_version", "tasks", "users"} <= tables


def test_image_command_serves_an_authenticated_task_round_trip(server: Served) -> None:
    headers = {"Authorization": f"Bearer {token('alice')}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=10) as client:
        created = client.post("/api/alice/tasks", json={"title": "smoke"})
        assert created.status_code == 201, created.text
        fetched = client.get(f"/api/alice/tasks/{created.json()['id']}")
    assert fetched.status_code == 200, fetched.text
    assert fetched.json()["title"] == "smoke"


def test_metrics_are_served_to_the_token_holder_from_the_multiproc_dir(server: Served) -> None:
    httpx.get(server.url + "/livez", timeout=10)
    assert httpx.get(server.url + "/metrics", timeout=10).status_code == 401
    bearer = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    response = httpx.get(server.url + "/metrics", headers=bearer, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "http_requests_total" in response.text or "http_request_duration" in response.text
    # The workers write their samples where the image's PROMETHEUS_MULTIPROC_DIR points.
    assert list(server.metrics_dir.glob("*.db")), "no multiprocess files: metrics are per worker"


def test_sigterm_stops_the_server_with_exit_code_0(migrated: str) -> None:
    with tempfile.TemporaryDirectory(prefix="todo-smoke-stop-") as workdir:
        served = serve(migrated, Path(workdir))
        code = stop(served)
        assert code == 0, f"exit code {code}:\n{served.output()}"
