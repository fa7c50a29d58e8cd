"""What the load is sent to: the product and the floor under Gunicorn, and the tokens they accept
(HS256 with the harness's secret, EdDSA through a JWKS the harness serves itself)."""

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import procstat
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

BENCH_DIR = Path(__file__).resolve().parent
KID = "bench"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Keys:
    """The run's signing keys, and a JWKS endpoint on 127.0.0.1 that publishes the public one."""

    def __init__(self) -> None:
        self.secret = secrets.token_urlsafe(48)
        self._private = Ed25519PrivateKey.generate()
        raw = self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        body = json.dumps(
            {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": KID, "alg": "EdDSA"}]}
        ).encode()

        class Jwks(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                found = self.path == "/api/auth/jwks"
                self.send_response(200 if found else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body) if found else 0))
                self.end_headers()
                if found:
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # each worker fetches once; nothing worth printing

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def token(self, user_id: str, algorithm: str) -> str:
        """A token valid for the whole run (one hour), as Better Auth would issue it."""
        now = int(time.time())
        claims: dict[str, Any] = {"sub": user_id, "iat": now, "exp": now + 3600}
        if algorithm == "HS256":
            return jwt.encode(claims, self.secret.encode(), algorithm="HS256")
        claims.update(iss=self.url, aud=self.url)
        return jwt.encode(claims, self._private, algorithm="EdDSA", headers={"kid": KID})

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class App:
    """One Gunicorn master (started in its own session) and its workers."""

    name: str
    workers: int
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str] = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def worker_pids(self) -> list[int]:
        return procstat.children(self.process.pid)

    def wait_ready(self, timeout: float = 90.0) -> None:
        """GET /readyz answers 200 and Gunicorn has every worker it was asked for."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start:\n{self.tail()}")
            if len(self.worker_pids()) == self.workers and self._ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} was not ready within {timeout:.0f}s:\n{self.tail()}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=5) as response:  # noqa: S310
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            # SIGTERM is Gunicorn's graceful stop; the workers have no request in flight.
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def start_app(
    kind: str,
    *,
    venv_bin: Path,
    database_url: str,
    keys: Keys,
    workers: int,
    log_dir: Path,
    log_level: str = "info",
    label: str | None = None,
) -> App:
    """Start the product (`todo-api serve`, its production command) or the floor, the same way."""
    port = free_port()
    name = label or kind
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WEB_CONCURRENCY": str(workers),
        "DATABASE_URL": database_url,
        "BETTER_AUTH_SECRET": keys.secret,
        "BETTER_AUTH_URL": keys.url,
        "MIGRATE_ON_START": "false",  # the harness migrated once; workers start faster
        "MAX_REQUESTS": "0",  # no worker recycling in the middle of a measurement
        "LOG_LEVEL": log_level,
        "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix=f"{name}-metrics-", dir=log_dir),
    }
    if kind == "product":
        command = [str(venv_bin / "todo-api"), "serve"]
    else:
        # The product's Gunicorn settings that matter for speed: keep-alive, no recycling.
        command = [
            str(venv_bin / "gunicorn"),
            "--bind", f"127.0.0.1:{port}",
            "--workers", str(workers),
            "--worker-class", "floor.FloorWorker",
            "--keep-alive", "75",
            "--max-requests", "0",
            "--worker-tmp-dir", "/dev/shm",  # noqa: S108  (as the product: tmpfs heartbeat)
            "--pythonpath", str(BENCH_DIR),
            "--log-level", "warning",
            "floor_fastapi:app" if kind == "fastapi-floor" else "floor:app",
        ]  # fmt: skip
    log = log_dir / f"{name}-{workers}w.log"
    with log.open("ab") as out:
        # Own session: a Ctrl-C in the terminal reaches the harness, which stops the servers
        # in order, instead of every process at once.
        process = subprocess.Popen(  # noqa: S603  (our own command line)
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    app = App(name, workers, port, process, log, env)
    try:
        app.wait_ready()
    except BaseException:
        app.stop()
        raise
    return app
