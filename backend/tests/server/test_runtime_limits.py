"""Hostile request heads against the production process (`todo-api serve`): raw sockets, one
worker, so that its memory can be measured."""

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server.test_server_process import Server, gunicorn
from tests.support import auth
from todo_api.security_headers import API_CSP, security_headers

pytestmark = pytest.mark.slow

HEAD_TIMEOUT = 2.0
KEEPALIVE = 3
DEFAULT_MAX_HEAD = 32 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"REQUEST_HEAD_TIMEOUT_SECONDS": str(HEAD_TIMEOUT), "KEEPALIVE": str(KEEPALIVE)}
    with one_worker(tmp_path_factory.mktemp("limits"), **env) as running:
        yield running


@contextlib.contextmanager
def one_worker(tmp: Path, **env: str) -> Iterator[Server]:
    """`todo-api serve` with one worker (so that its memory can be measured), never recycled.
    On SQLite: what is measured here happens before a request reaches the app's database."""
    env = {"WEB_CONCURRENCY": "1", "MAX_REQUESTS": "0", **env}
    with gunicorn(f"sqlite:///{tmp / 'todo.db'}", tmp, **env) as running:
        yield running


def connect(server: Server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def read_until_closed(sock: socket.socket, within: float) -> tuple[bytes, bool]:
    """What the server sent, and whether it closed the connection within `within` seconds."""
    received, _, closed_at = answer_and_close(sock, within)
    return received, closed_at is not None


def answer_and_close(
    sock: socket.socket, within: float
) -> tuple[bytes, float | None, float | None]:
    """The bytes the server sent, when its answer began and when it closed (seconds from now;
    None if it did not within `within`)."""
    started = time.monotonic()
    received, answered_at, closed_at = b"", None, None
    while closed_at is None and (left := started + within - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            closed_at = time.monotonic() - started
        elif answered_at is None:
            answered_at = time.monotonic() - started
        received += chunk
    return received, answered_at, closed_at


def read_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length (its head and body may come in separate reads)."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        assert chunk, f"the connection was closed after {answer!r}"
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    fields = dict(line.split(b": ", 1) for line in head.lower().split(b"\r\n")[1:])
    length = int(fields[b"content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"the connection was closed after {answer!r}"
        body += chunk
    return head + b"\r\n\r\n" + body


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def request_head(path: str, padding: int) -> bytes:
    """A GET whose head is about `padding` bytes of headers long (1 KiB headers)."""
    lines = [f"GET {path} HTTP/1.1", "Host: test"]
    lines += [f"X-Pad-{i}: {'a' * 1000}" for i in range(padding // 1024)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class TestHeadSize:
    def test_a_head_under_the_cap_is_served(self, server: Server) -> None:
        with connect(server) as sock:
            sock.sendall(request_head("/livez", DEFAULT_MAX_HEAD - 4096))
            answer = sock.recv(65536)
        assert status_of(answer) == 200

    def test_a_head_over_the_cap_gets_431_and_the_connection_is_closed(
        self, server: Server
    ) -> None:
        with connect(server) as sock:
            sock.sendall(request_head("/livez", 64 * 1024))
            answer, closed = read_until_closed(sock, 5)
        assert status_of(answer) == 431
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b"connection: close" in head.lower()
        assert json.loads(body) == {"detail": "Request header fields too large"}
        assert closed
        # The answer written before any app code runs still carries the security headers.
        for name, value in security_headers(API_CSP, hsts_seconds=0):
            assert name + b": " + value in head.lower()

    def test_sixteen_megabytes_of_headers_are_refused(self, server: Server) -> None:
        with connect(server) as sock:
            sent_everything = True
            try:
                sock.sendall(request_head("/livez", 16 * 1024 * 1024))
            except (BrokenPipeError, ConnectionResetError):
                sent_everything = False
            answer, closed = read_until_closed(sock, 10)
        assert closed
        assert answer == b"" or status_of(answer) == 431, answer[:200]
        assert not (sent_everything and answer.startswith(b"HTTP/1.1 200"))

    def test_endless_heads_do_not_grow_the_worker(self, server: Server) -> None:
        (pid,) = server.worker_pids()
        before = rss_kib(pid)
        chunk = b"a" * 65536
        sockets = [connect(server) for _ in range(2)]
        try:
            for sock in sockets:
                try:
                    sock.sendall(b"GET /livez HTTP/1.1\r\nHost: test\r\nX-Endless: ")
                    for _ in range(32 * 16):  # 32 MiB, never terminated
                        sock.sendall(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    pass
            grown = rss_kib(pid) - before
            assert grown < 8 * 1024, f"the worker grew by {grown} KiB"
            for sock in sockets:
                answer, closed = read_until_closed(sock, 5)
                assert closed, "an endless head kept its connection open"
                assert answer == b"" or status_of(answer) == 431, answer[:200]
        finally:
            for sock in sockets:
                sock.close()

    def test_a_body_larger_than_the_head_cap_is_not_counted_as_head(self, server: Server) -> None:
        # 40 KiB of JSON whitespace: a valid body, larger than the head cap.
        body = b'{"title": "big body"' + b" " * 40 * 1024 + b"}"
        response = httpx.post(
            f"{server.url}/api/alice/tasks",
            content=body,
            headers={**auth("alice"), "Content-Type": "application/json"},
            timeout=30,
        )
        assert response.status_code == 201
        assert response.json()["title"] == "big body"

    def test_pipelined_requests_in_one_packet_are_all_served(self, server: Server) -> None:
        head = b"GET /livez HTTP/1.1\r\nHost: test\r\n\r\n"
        with connect(server) as sock:
            last = b"GET /livez HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
            sock.sendall(head * 3 + last)
            answer, closed = read_until_closed(sock, 5)
        assert answer.count(b"HTTP/1.1 200 OK") == 4
        assert closed

    def test_a_request_before_an_oversized_pipelined_head_is_answered(self, server: Server) -> None:
        # A head pipelined in the same read as the request before it is counted from the next
        # read on: 1 MiB is over the limit plus any read.
        with connect(server) as sock:
            first = b"GET /livez HTTP/1.1\r\nHost: test\r\n\r\n"
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(first + request_head("/", 1024 * 1024))
            answer, closed = read_until_closed(sock, 5)
        assert answer.startswith(b"HTTP/1.1 200 OK"), answer[:200]
        # The oversized head gets a 431 when the first answer was complete before it was read.
        second = answer.partition(b'{"status":"ok"}')[2]
        assert second == b"" or status_of(second) == 431, second
        assert closed


class TestHeadTimeout:
    def test_a_partial_head_is_answered_408_and_closed(self, server: Server) -> None:
        with connect(server) as sock:
            sock.sendall(b"GET /livez HTTP/1.1\r\nHost: test\r\n")
            started = time.monotonic()
            answer, closed = read_until_closed(sock, HEAD_TIMEOUT + 3)
        assert closed, "a partial head kept its connection open"
        assert time.monotonic() - started > HEAD_TIMEOUT - 0.5
        assert status_of(answer) == 408
        assert json.loads(answer.partition(b"\r\n\r\n")[2]) == {"detail": "Request head timed out"}

    def test_a_partial_head_behind_a_request_in_the_same_packet_times_out(
        self, server: Server
    ) -> None:
        # Not the keep-alive timer (KEEPALIVE, 75 s by default), which closes without a word.
        with connect(server) as sock:
            sock.sendall(b"GET /livez HTTP/1.1\r\nHost: test\r\n\r\nGET /livez HTTP/1.1\r\n")
            answer, closed = read_until_closed(sock, HEAD_TIMEOUT + KEEPALIVE + 3)
        assert answer.startswith(b"HTTP/1.1 200 OK"), answer[:200]
        assert closed
        second = answer.partition(b'{"status":"ok"}')[2]
        assert second and status_of(second) == 408, second

    def test_trickling_bytes_does_not_extend_the_deadline(self, server: Server) -> None:
        with connect(server) as sock:
            sock.sendall(b"GET /livez HTTP/1.1\r\n")
            started = time.monotonic()
            closed = False
            while not closed and time.monotonic() - started < HEAD_TIMEOUT + 3:
                try:
                    sock.sendall(b"X")
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
                _, closed = read_until_closed(sock, 0.3)
        assert closed, "a head that never completes kept its connection open"
        assert time.monotonic() - started < HEAD_TIMEOUT + 1.5

    def test_a_silent_connection_is_closed_after_the_keepalive_timeout(
        self, server: Server
    ) -> None:
        with connect(server) as sock:
            answer, closed = read_until_closed(sock, KEEPALIVE + 3)
        assert closed, "a connection that never sent a byte stayed open"
        assert answer == b""

    def test_a_head_sent_in_pieces_within_the_deadline_is_served(self, server: Server) -> None:
        head = request_head("/livez", 4096)
        pieces = [head[i : i + len(head) // 8 + 1] for i in range(0, len(head), len(head) // 8 + 1)]
        with connect(server) as sock:
            for piece in pieces:
                sock.sendall(piece)
                time.sleep(0.1)
            answer = sock.recv(65536)
        assert status_of(answer) == 200


class TestBlankLines:
    """CR/LF before a request line is allowed (RFC 9112 2.2) but begins no request: the connection
    stays idle, and its keep-alive timer keeps running."""

    def test_a_fresh_connection_sending_only_crlf_is_closed_by_the_keepalive_timeout(
        self, server: Server
    ) -> None:
        with connect(server) as sock:
            started = time.monotonic()
            closed = send_crlf_until_closed(sock, KEEPALIVE + 4)
        assert closed, "a connection sending only CR/LF stayed open"
        assert time.monotonic() - started < KEEPALIVE + 1.5

    def test_crlf_after_a_keep_alive_exchange_does_not_hold_the_connection(
        self, server: Server
    ) -> None:
        with connect(server) as sock:
            sock.sendall(b"GET /livez HTTP/1.1\r\nHost: test\r\n\r\n")
            assert status_of(read_response(sock)) == 200
            started = time.monotonic()
            closed = send_crlf_until_closed(sock, KEEPALIVE + 4)
        assert closed, "CR/LF after a response kept the connection open"
        assert time.monotonic() - started < KEEPALIVE + 1.5

    def test_a_request_after_crlf_is_served(self, server: Server) -> None:
        with connect(server) as sock:
            sock.sendall(b"\r\n\r\n")
            time.sleep(0.3)
            sock.sendall(b"GET /livez HTTP/1.1\r\nHost: test\r\n\r\n")
            assert status_of(read_response(sock)) == 200

    def test_two_hundred_crlf_connections_are_all_closed(self, server: Server) -> None:
        sockets = [connect(server) for _ in range(200)]
        try:
            for sock in sockets:
                sock.sendall(b"\r\n")
            time.sleep(KEEPALIVE / 2)
            for sock in sockets:
                sock.sendall(b"\r\n")
            deadline = time.monotonic() + KEEPALIVE + 3
            still_open = sockets
            while still_open and time.monotonic() < deadline:
                still_open = [s for s in still_open if not read_until_closed(s, 0.001)[1]]
                time.sleep(0.2)
            assert not still_open, f"{len(still_open)} of 200 CR/LF connections are still open"
        finally:
            for sock in sockets:
                sock.close()


def send_crlf_until_closed(sock: socket.socket, within: float) -> bool:
    """Send CR/LF every half second until the server closes the connection (True) or `within`
    seconds pass (False)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            sock.sendall(b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            return True
        answer, closed = read_until_closed(sock, 0.5)
        assert answer == b"", answer[:200]
        if closed:
            return True
    return False


class TestSlowClients:
    def test_a_thousand_slow_connections_do_not_stop_other_clients(self, server: Server) -> None:
        slow = []
        try:
            for _ in range(1000):
                sock = connect(server)
                sock.sendall(b"GET /livez HTTP/1.1\r\nHost: test\r\n")
                slow.append(sock)
            latencies = []
            with httpx.Client(base_url=server.url, timeout=10) as client:
                for _ in range(20):
                    started = time.monotonic()
                    assert client.get("/livez").status_code == 200
                    latencies.append(time.monotonic() - started)
                    time.sleep(0.05)
            assert max(latencies) < 1.0, latencies
            # Each slow connection is closed once its head is overdue.
            deadline = time.monotonic() + HEAD_TIMEOUT + 5
            still_open = list(slow)
            while still_open and time.monotonic() < deadline:
                waiting = []
                for sock in still_open:
                    _, closed = read_until_closed(sock, 0.001)
                    if not closed:
                        waiting.append(sock)
                still_open = waiting
                time.sleep(0.2)
            assert not still_open, f"{len(still_open)} of 1000 slow connections are still open"
        finally:
            for sock in slow:
                sock.close()


def test_other_clients_are_served_while_heads_stream_in(server: Server) -> None:
    """Two clients stream endless heads while a third makes requests."""
    stop = threading.Event()

    def stream() -> None:
        with connect(server) as sock:
            try:
                sock.sendall(b"GET /livez HTTP/1.1\r\nHost: test\r\nX-Endless: ")
                while not stop.is_set():
                    sock.sendall(b"a" * 65536)
            except OSError:
                pass

    streams = [threading.Thread(target=stream) for _ in range(2)]
    for thread in streams:
        thread.start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for _ in range(20):
                assert client.get("/livez").status_code == 200
    finally:
        stop.set()
        for thread in streams:
            thread.join(timeout=15)


def test_a_stopping_worker_answers_a_request_on_an_idle_connection(tmp_path: Path) -> None:
    """A keep-alive connection is idle when its worker starts to stop (recycled); the client's
    next request comes a moment later and is answered, with `Connection: close`."""
    env = {
        "WEB_CONCURRENCY": "1",
        "MAX_REQUESTS": "10",
        "MAX_REQUESTS_JITTER": "0",
        "SHUTDOWN_IDLE_GRACE_SECONDS": "5",
    }
    request = b"GET /livez HTTP/1.1\r\nHost: test\r\n\r\n"
    with gunicorn(f"sqlite:///{tmp_path / 'todo.db'}", tmp_path, **env) as server:
        with connect(server) as sock:
            stopping = False
            for _ in range(20):
                sock.sendall(request)
                answer = read_response(sock)
                assert status_of(answer) == 200
                assert b"connection: close" not in answer.lower()
                time.sleep(0.3)  # the worker checks its request count every 0.1 s
                if any("Maximum request limit" in line for line in server.lines()):
                    stopping = True
                    break
            assert stopping, "the worker was not recycled"
            sock.sendall(request)
            answer, closed = read_until_closed(sock, 6)
        assert answer.startswith(b"HTTP/1.1 200"), answer
        assert b"connection: close" in answer.lower()
        assert closed
