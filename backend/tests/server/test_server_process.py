"""The production process: real Gunicorn, two Uvicorn workers, a throwaway PostgreSQL database."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.support import SECRET, auth, free_port, hs256, stop_process
from todo_api.db import normalise_url

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


class Server:
    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.lines() if line.strip()]

    def worker_pids(self) -> set[int]:
        booted = re.compile(r"Booting worker with pid: (\d+)")
        return {int(m.group(1)) for line in self.lines() if (m := booted.search(line))}

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        # A new connection each time, so that Gunicorn hands requests to either worker.
        with httpx.Client(base_url=self.url, timeout=30) as client:
            return client.request(method, path, **kwargs)

    def scrape(self) -> dict[str, float]:
        text = self.request("GET", "/metrics").text
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples


@contextmanager
def gunicorn(database_url: str, tmp_path: Path, **env: str) -> Iterator[Server]:
    port = free_port()
    log = tmp_path / "server.log"
    environment = {
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        "DATABASE_URL": database_url,
        "BETTER_AUTH_SECRET": SECRET,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "WEB_CONCURRENCY": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        "LOG_FORMAT": "json",
        # Each log line in the file as it is written, as the image's own environment has it.
        "PYTHONUNBUFFERED": "1",
        # These tests stop at once on SIGTERM, as before the drain (tests/deploy/test_release.py).
        "SHUTDOWN_DRAIN_SECONDS": "0",
        **env,
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / "todo-api"), "serve"], env=environment, stdout=out, stderr=out
        )
    server = Server(process, port, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if server.request("GET", "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield server
    finally:
        stop_process(process)


@pytest.fixture
def pg_database(postgres):
    url = postgres.create_database()
    yield url
    postgres.drop_database(url)


def requests_counted(samples: dict[str, float]) -> float:
    return sum(v for k, v in samples.items() if k.startswith("http_requests_total{"))


def counted_eventually(server: Server, expected: float) -> float:
    """The request count once it reaches `expected` (a worker counts a request just after
    sending its response), or what it is after 5 seconds."""
    deadline = time.monotonic() + 5
    while (counted := requests_counted(server.scrape())) < expected:
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return counted


def spread_over_workers(server: Server, total: int) -> set[int]:
    """Send requests until both workers have answered; return the pids that did."""
    headers = auth("alice")
    sent = 0
    while sent < total:
        response = server.request("GET", "/api/alice/tasks", headers=headers)
        assert response.status_code == 200
        sent += 1
    time.sleep(0.3)
    return {r["pid"] for r in server.records() if r.get("logger") == "todo_api.access"}


class TestTwoWorkers:
    def test_one_scrape_sums_both_workers_and_labels_are_templates(self, pg_database, tmp_path):
        with gunicorn(pg_database, tmp_path) as server:
            pids = set()
            sent = 0
            while len(pids) < 2 and sent < 400:
                pids = spread_over_workers(server, 20)
                sent += 20
            assert len(pids) == 2, "one worker served every request"
            create = server.request(
                "POST", "/api/alice/tasks", json={"title": "t"}, headers=auth("alice")
            )
            assert create.status_code == 201
            assert counted_eventually(server, sent + 1) == sent + 1
            samples = server.scrape()
            assert samples['todo_task_changes_total{action="created"}'] == 1
            handlers = {m.group(1) for k in samples if (m := re.search(r'handler="([^"]*)"', k))}
            assert handlers == {"/api/{user_id}/tasks"}
            assert "alice" not in server.request("GET", "/metrics").text

    def test_counts_survive_worker_recycling(self, pg_database, tmp_path):
        env = {"MAX_REQUESTS": "15", "MAX_REQUESTS_JITTER": "0"}
        with gunicorn(pg_database, tmp_path, **env) as server:
            first = server.worker_pids()
            headers = auth("alice")
            served = 0
            while served < 80:
                # A new connection each time: one accepted by a worker in its last moments is
                # served all the same (no retry here).
                response = server.request("GET", "/api/alice/tasks", headers=headers)
                assert response.status_code == 200
                served += 1
            time.sleep(1)
            assert len(server.worker_pids() - first) >= 2, "no worker was recycled"
            assert counted_eventually(server, served) == served

    def test_recycling_under_keep_alive_load_fails_no_request(self, pg_database, tmp_path):
        """Several keep-alive clients, no retries, while workers recycle every ~50 requests."""
        env = {"MAX_REQUESTS": "50", "MAX_REQUESTS_JITTER": "5"}
        with gunicorn(pg_database, tmp_path, **env) as server:
            first = server.worker_pids()
            stop = threading.Event()
            errors: list[str] = []
            created: list[int] = []
            answered = [0]

            def client(user: str) -> None:
                headers = auth(user)
                # httpx keeps the connection alive and never retries a request.
                with httpx.Client(base_url=server.url, headers=headers, timeout=30) as http:
                    while not stop.is_set():
                        try:
                            made = http.post(f"/api/{user}/tasks", json={"title": "t"})
                            assert made.status_code == 201, made.text
                            created.append(made.json()["id"])
                            listed = http.get(f"/api/{user}/tasks")
                            assert listed.status_code == 200, listed.text
                            answered[0] += 2
                        except (httpx.HTTPError, AssertionError) as error:
                            errors.append(f"{user}: {error!r}")

            threads = [threading.Thread(target=client, args=(f"user{i}",)) for i in range(6)]
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 120
            while len(server.worker_pids() - first) < 12 and time.monotonic() < deadline:
                time.sleep(0.2)
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
            recycled = len(server.worker_pids() - first)
            assert errors == [], f"{len(errors)} failed of {answered[0]}: {errors[:5]}"
            assert recycled >= 12, f"only {recycled} workers recycled"
            engine = sa.create_engine(normalise_url(pg_database))
            with engine.connect() as connection:
                stored = connection.execute(sa.text("SELECT count(*) FROM tasks")).scalar_one()
            engine.dispose()
            assert stored == len(created)

    def test_a_killed_worker_is_replaced_and_its_counts_are_kept(self, pg_database, tmp_path):
        with gunicorn(pg_database, tmp_path) as server:
            headers = auth("alice")
            for _ in range(30):
                assert server.request("GET", "/api/alice/tasks", headers=headers).is_success
            assert counted_eventually(server, 30) == 30
            victim = next(iter(server.worker_pids()))
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while len(server.worker_pids()) < 3:
                assert time.monotonic() < deadline, "the killed worker was not replaced"
                time.sleep(0.1)
            for _ in range(10):
                assert server.request("GET", "/api/alice/tasks", headers=headers).is_success
            assert counted_eventually(server, 40) == 40

    def test_metrics_token_protects_the_scrape(self, pg_database, tmp_path):
        with gunicorn(pg_database, tmp_path, METRICS_TOKEN="scrape-secret") as server:
            assert server.request("GET", "/metrics").status_code == 401
            wrong = {"Authorization": "Bearer nope"}
            assert server.request("GET", "/metrics", headers=wrong).status_code == 401
            right = {"Authorization": "Bearer scrape-secret"}
            response = server.request("GET", "/metrics", headers=right)
            assert response.status_code == 200
            assert "http_requests_total" in response.text or "todo_" in response.text


class TestGracefulShutdown:
    def test_sigterm_lets_an_in_flight_request_finish_and_exits_0(self, pg_database, tmp_path):
        with gunicorn(pg_database, tmp_path) as server:
            task = server.request(
                "POST", "/api/alice/tasks", json={"title": "t"}, headers=auth("alice")
            ).json()
            # Hold the task's row lock so that the update below waits inside the server.
            engine = sa.create_engine(normalise_url(pg_database))
            blocker = engine.connect()
            blocker.execute(
                sa.text("SELECT id FROM tasks WHERE id = :id FOR UPDATE"), {"id": task["id"]}
            )
            result: dict[str, httpx.Response] = {}

            def slow_update() -> None:
                result["response"] = server.request(
                    "PUT",
                    f"/api/alice/tasks/{task['id']}",
                    json={"title": "finished"},
                    headers=auth("alice"),
                )

            thread = threading.Thread(target=slow_update)
            thread.start()
            time.sleep(1.0)
            assert "response" not in result, "the update did not wait"
            server.process.send_signal(signal.SIGTERM)
            time.sleep(1.0)
            with pytest.raises(httpx.TransportError):
                server.request("GET", "/livez")
            blocker.rollback()
            blocker.close()
            engine.dispose()
            thread.join(timeout=30)
            assert result["response"].status_code == 200
            assert result["response"].json()["title"] == "finished"
            assert server.process.wait(timeout=30) == 0


class TestLogs:
    def test_json_lines_with_request_ids_and_no_tokens(self, pg_database, tmp_path):
        token = hs256("alice")
        bad_token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
        with gunicorn(pg_database, tmp_path) as server:
            given = server.request(
                "GET",
                "/api/alice/tasks",
                headers={"Authorization": f"Bearer {token}", "X-Request-ID": "req-42"},
            )
            assert given.headers["x-request-id"] == "req-42"
            made = server.request("GET", "/api/alice/tasks", headers={"X-Request-ID": "bad id!"})
            assert made.status_code == 401
            assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
            server.request(
                "POST", "/api/alice/tasks", headers={"Authorization": f"Bearer {bad_token}"}
            )
            time.sleep(0.5)
        lines = [line for line in server.lines() if line.strip()]
        records = [json.loads(line) for line in lines]  # every line is one JSON object
        access = [r for r in records if r.get("logger") == "todo_api.access"]
        ours = next(r for r in access if r.get("request_id") == "req-42")
        assert ours["route"] == "/api/{user_id}/tasks"
        assert ours["status"] == 200
        assert ours["method"] == "GET"
        assert isinstance(ours["duration_ms"], float)
        assert {"time", "level", "message"} <= set(ours)
        assert any(r.get("request_id") == made.headers["x-request-id"] for r in access)
        text = "\n".join(lines)
        assert token not in text
        assert bad_token not in text
        assert "Bearer" not in text
        assert SECRET not in text
