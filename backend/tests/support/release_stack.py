"""A release's moving parts for the tests: `todo-api serve` instances (this tree's or another
release's code), a real HAProxy with deploy/haproxy/haproxy.cfg, and a bounded keep-alive load of
reads and writes that records every request and every acknowledged write. All on loopback, on
free ports, stopped by PID."""

import contextlib
import csv
import io
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support import REPO, SECRET, auth, free_port, missing, stop_process

BIN = Path(sys.executable).parent
HAPROXY_CONFIG = REPO / "deploy" / "haproxy" / "haproxy.cfg"
# Debian installs it outside a normal user's PATH.
_DEBIAN_HAPROXY = "/usr/sbin/haproxy"


@dataclass
class Instance:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_instance(
    database_url: str,
    directory: Path,
    *,
    port: int | None = None,
    code: Path | None = None,
    python: str = sys.executable,
    **env: str,
) -> Instance:
    """`todo-api serve` on `port`, ready (/readyz 200) when returned. `code`: another release's
    backend directory, run by `python` (an interpreter with that release's dependencies)."""
    port = port or free_port()
    directory.mkdir(parents=True, exist_ok=True)
    name = f"serve-{port}-{uuid.uuid4().hex[:6]}"
    environment = {
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        "DATABASE_URL": database_url,
        "BETTER_AUTH_SECRET": SECRET,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WEB_CONCURRENCY": "1",
        "MIGRATE_ON_START": "false",
        "PROMETHEUS_MULTIPROC_DIR": str(directory / f"{name}-metrics"),
        "LOG_FORMAT": "json",
        **env,
    }
    command = [str(BIN / "todo-api"), "serve"]
    if code is not None:
        environment["PYTHONPATH"] = str(code)
        command = [python, "-m", "todo_api.cli", "serve"]
    log = directory / f"{name}.log"
    with log.open("wb") as out:
        # Its own process group, as under a terminal or a container runtime.
        process = subprocess.Popen(
            command,
            env=environment,
            cwd=code,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    instance = Instance(process, port, log)
    deadline = time.monotonic() + 60
    while not _answers(f"{instance.url}/readyz"):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process(process)
            raise AssertionError(f"the instance did not become ready:\n{instance.log_text()}")
        time.sleep(0.1)
    return instance


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def haproxy_binary() -> str:
    """Debian's haproxy; missing, the test skips loudly (or fails under CI=true)."""
    found = shutil.which("haproxy") or (
        _DEBIAN_HAPROXY if os.access(_DEBIAN_HAPROXY, os.X_OK) else None
    )
    if found is None:
        missing("no haproxy binary on PATH or at /usr/sbin/haproxy (apt-get install haproxy)")
    return found


@dataclass
class Balancer:
    process: subprocess.Popen[bytes]
    url: str
    stats_url: str
    log: Path

    def server_states(self) -> dict[str, str]:
        """Each API server's state as HAProxy's health checks see it (UP, DOWN, UP 1/2...)."""
        text = httpx.get(f"{self.stats_url};csv", timeout=5).text.lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {
            row["svname"]: row["status"]
            for row in rows
            if row["pxname"] == "instances" and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def wait_until(self, server: str, state: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while self.server_states().get(server) != state:
            assert time.monotonic() < deadline, f"{server} never {state}: {self.server_states()}"
            time.sleep(0.1)


@contextlib.contextmanager
def running_haproxy(servers: list[int], directory: Path, *, retries: int) -> Iterator[Balancer]:
    """deploy/haproxy/haproxy.cfg as shipped; only its environment variables are set."""
    binary = haproxy_binary()
    port, stats = free_port(), free_port()
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "LB_BIND": f"127.0.0.1:{port}",
        "LB_STATS": f"127.0.0.1:{stats}",
        "LB_RETRIES": str(retries),
        "API_1": f"127.0.0.1:{servers[0]}",
        "API_2": f"127.0.0.1:{servers[1]}",
    }
    log = directory / "haproxy.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, "-db", "-f", str(HAPROXY_CONFIG)],
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    balancer = Balancer(process, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{stats}/stats", log)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, log.read_text()
            with contextlib.suppress(httpx.TransportError, KeyError):
                if set(balancer.server_states().values()) == {"UP"}:
                    break
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield balancer
    finally:
        stop_process(process, timeout=10)


@dataclass
class Load:
    """Keep-alive clients of mixed reads and writes, until stopped or `max_requests` are sent.

    Every request is one sample (start time, latency, outcome). A create carries an
    Idempotency-Key; when it fails the client retries it with the same key (each failed attempt
    still counts as a failure), so that an acknowledged write is never lost nor duplicated.
    """

    base_url: str
    clients: int = 8
    max_requests: int = 40_000
    samples: list[tuple[float, float, bool]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    # (owner, Idempotency-Key) -> the id of the task the API acknowledged
    acknowledged: dict[tuple[str, str], int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        for number in range(self.clients):
            owner = f"release-{uuid.uuid4().hex[:8]}-{number}"
            thread = threading.Thread(target=self._client, args=(owner,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in self._threads), "a load client hung"

    @property
    def owners(self) -> set[str]:
        return {owner for owner, _ in self.acknowledged}

    def between(self, start: float, end: float) -> list[tuple[float, float, bool]]:
        return [sample for sample in self.samples if start <= sample[0] <= end]

    def _client(self, owner: str) -> None:
        headers = auth(owner)
        with httpx.Client(base_url=self.base_url, headers=headers, timeout=15) as client:
            sent = 0
            while not self._stop.is_set() and len(self.samples) < self.max_requests:
                if sent % 2 == 0:
                    self._create(client, owner)
                else:
                    self._call(client, "GET", f"/api/{owner}/tasks", expect=200)
                sent += 1

    def _create(self, client: httpx.Client, owner: str) -> None:
        key = str(uuid.uuid4())
        for _ in range(20):
            response = self._call(
                client,
                "POST",
                f"/api/{owner}/tasks",
                expect=201,
                json={"title": f"task {key}"},
                headers={"Idempotency-Key": key},
            )
            if response is not None:
                with self._lock:
                    self.acknowledged[(owner, key)] = response.json()["id"]
                return
            time.sleep(0.05)

    def _call(
        self, client: httpx.Client, method: str, path: str, *, expect: int, **kwargs: object
    ) -> httpx.Response | None:
        started = time.monotonic()
        outcome: httpx.Response | None = None
        try:
            response = client.request(method, path, **kwargs)  # type: ignore[arg-type]
            if response.status_code == expect:
                outcome = response
            else:
                self.failures.append(f"{method} {path}: {response.status_code} {response.text}")
        except httpx.TransportError as error:
            self.failures.append(f"{method} {path}: {type(error).__name__} {error}")
        with self._lock:
            self.samples.append((started, time.monotonic() - started, outcome is not None))
        return outcome


def p99(samples: list[tuple[float, float, bool]]) -> float:
    latencies = sorted(latency for _, latency, _ in samples)
    return latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0


def longest(samples: list[tuple[float, float, bool]]) -> float:
    return max((latency for _, latency, _ in samples), default=0.0)


def latency_summary(samples: list[tuple[float, float, bool]]) -> str:
    """`N requests, p50 .. ms, p99 .. ms, max .. ms` of these samples."""
    middle = statistics.median(latency for _, latency, _ in samples) if samples else 0.0
    return (
        f"{len(samples)} requests, p50 {middle * 1000:.0f} ms,"
        f" p99 {p99(samples) * 1000:.0f} ms, max {longest(samples) * 1000:.0f} ms"
    )


def stop_for_release(instance: Instance, timeout: float) -> int:
    """SIGTERM as an orchestrator sends it; the exit code (SIGKILL after `timeout`)."""
    instance.process.send_signal(signal.SIGTERM)
    try:
        return instance.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process(instance.process)
        raise AssertionError(f"not stopped within {timeout}s:\n{instance.log_text()}") from None
