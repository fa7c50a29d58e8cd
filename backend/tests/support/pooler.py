"""A real PgBouncer in transaction mode (what Neon's pooled endpoint is) in front of the test
PostgreSQL, started on a free port and stopped by its PID.

Loaded by conftest.py as a plugin: the `pgbouncer` fixture (one pooler for the run) and
`pooled_pg_url` (a throwaway database reached through it). Without a pgbouncer binary the tests
that need one are skipped with a loud reason, or fail when CI is set.
"""

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.support import (
    APP_ROLE,
    APP_ROLE_PASSWORD,
    PostgresServer,
    free_port,
    missing,
    stop_process,
)

# Debian installs it outside a normal user's PATH.
_DEBIAN_BINARY = "/usr/sbin/pgbouncer"


@dataclass
class PgBouncer:
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def url_for(self, database_url: str) -> str:
        """The same database and user, reached through this pooler."""
        url = make_url(database_url).set(host="127.0.0.1", port=self.port)
        return url.render_as_string(hide_password=False)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        # SIGTERM is PgBouncer's immediate shutdown: it closes every client and server connection.
        stop_process(self.process, timeout=10)


def pgbouncer_binary() -> str | None:
    found = shutil.which("pgbouncer")
    if found:
        return found
    return _DEBIAN_BINARY if os.access(_DEBIAN_BINARY, os.X_OK) else None


@contextlib.contextmanager
def running_pgbouncer(
    postgres: PostgresServer, *, pool_size: int = 10, passwords: Mapping[str, str] | None = None
) -> Iterator[PgBouncer]:
    """PgBouncer with pool_mode=transaction and `pool_size` server connections per database."""
    binary = pgbouncer_binary()
    if binary is None:
        raise RuntimeError("no pgbouncer binary")
    upstream = make_url(postgres.admin_url)
    with tempfile.TemporaryDirectory(prefix="pgbouncer-") as name:
        directory = Path(name)
        # Clients are trusted (as on the test PostgreSQL). PgBouncer accepts only the users in
        # its auth file, which also gives it their passwords for its own logins to the server:
        # every login role (no password: fine where the server trusts local connections), the
        # admin URL's role and the app's role with their passwords, and any `passwords` given.
        known = {role: "" for role in _login_roles(postgres.admin_url)}
        known[str(upstream.username)] = upstream.password or ""
        known[APP_ROLE] = APP_ROLE_PASSWORD
        known.update(passwords or {})
        users = directory / "users.txt"
        users.write_text("".join(f'"{role}" "{password}"\n' for role, password in known.items()))
        port = free_port()
        config = directory / "pgbouncer.ini"
        config.write_text(
            f"""[databases]
* = host={upstream.host or "127.0.0.1"} port={upstream.port or 5432}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {users}
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 500
server_login_retry = 1
"""
        )
        command = [binary, str(config)]
        if os.geteuid() == 0:
            # PgBouncer refuses to run as root.
            directory.chmod(0o755)
            users.chmod(0o644)
            config.chmod(0o644)
            command[1:1] = ["-u", "nobody"]
        log = directory / "pgbouncer.log"
        with log.open("wb") as log_file:
            process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
        pooler = PgBouncer(port=port, process=process, log=log)
        try:
            _wait_until_listening(pooler)
            yield pooler
        finally:
            pooler.stop()


def _login_roles(admin_url: str) -> list[str]:
    engine = sa.create_engine(admin_url)
    try:
        with engine.connect() as conn:
            query = sa.text("SELECT rolname FROM pg_roles WHERE rolcanlogin")
            return list(conn.execute(query).scalars())
    finally:
        engine.dispose()


def _wait_until_listening(pooler: PgBouncer, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if pooler.process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited at start:\n{pooler.log_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", pooler.port), 1):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"pgbouncer did not listen within {timeout}s:\n{pooler.log_text()}")
        time.sleep(0.05)


def require_pgbouncer() -> None:
    """Skip loudly without a pgbouncer binary; under CI its absence is a failure."""
    if pgbouncer_binary() is not None:
        return
    missing("no pgbouncer binary on PATH or at /usr/sbin/pgbouncer (apt-get install pgbouncer)")


@pytest.fixture(scope="session")
def pgbouncer(postgres: PostgresServer) -> Iterator[PgBouncer]:
    require_pgbouncer()
    with running_pgbouncer(postgres) as pooler:
        yield pooler


@pytest.fixture(scope="session")
def pooled_pg_url(postgres: PostgresServer, pgbouncer: PgBouncer) -> Iterator[str]:
    """A database of its own for the run, reached only through the pooler."""
    url = postgres.create_database()
    yield pgbouncer.url_for(url)
    postgres.drop_database(url)
