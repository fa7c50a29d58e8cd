"""Real database outages for the tests: PostgreSQL refuses new connections to one database and
cuts the open ones, until the block ends; or a proxy in front of it goes silent mid-request."""

import contextlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.support import PostgresServer


@contextmanager
def database_outage(postgres: PostgresServer, url: str) -> Iterator[None]:
    name = make_url(url).database
    admin = sa.create_engine(postgres.admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
        yield
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()


class StallingProxy:
    """A TCP proxy in front of PostgreSQL that forwards everything until a client sends
    `marker` (say the COMMIT query), forwards that too, then goes silent both ways: the
    server's answer never arrives, and new connections (a cancel request) get nothing either,
    until `release()`. Bounded: every wait ends with `release()` or the proxy's close."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._marker: bytes | None = None
        self.stalled = threading.Event()
        self._released = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def url_for(self, database_url: str) -> str:
        url = make_url(database_url).set(host="127.0.0.1", port=self.port)
        return url.render_as_string(hide_password=False)

    def stall_after(self, marker: bytes) -> None:
        self._marker = marker

    def release(self) -> None:
        self._released.set()

    def close(self) -> None:
        self.release()
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> "StallingProxy":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._upstream, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, from_client: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if self.stalled.is_set():
                    self._released.wait(timeout=60)
                target.sendall(data)
                if from_client and self._marker is not None and self._marker in data:
                    self.stalled.set()
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
