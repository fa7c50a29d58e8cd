"""Request bodies against the production process (`todo-api serve`), over raw sockets: credentials
are checked before a body is waited for, a body that stops arriving gets 408, and chunked framing
is bounded like the body itself."""

import contextlib
import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.server.test_runtime_limits import (
    answer_and_close,
    connect,
    one_worker,
    rss_kib,
    status_of,
)
from tests.server.test_server_process import Server
from tests.support import auth, hs256

pytestmark = pytest.mark.slow

BODY_TIMEOUT = 2.0
# How long a connection whose request body was not read to its end is still read before it is
# closed (protocol.py).
LINGER = 2.0
ALICE = auth("alice")["Authorization"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"REQUEST_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT), "KEEPALIVE": "30"}
    with one_worker(tmp_path_factory.mktemp("bodies"), **env) as running:
        yield running


def head(method: str, path: str, authorization: str | None, **fields: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test", "Content-Type: application/json"]
    if authorization is not None:
        lines.append(f"Authorization: {authorization}")
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in fields.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def json_body(answer: bytes) -> dict:
    return json.loads(answer.partition(b"\r\n\r\n")[2])


ROUTES = [
    ("POST", "/api/alice/tasks"),
    ("PUT", "/api/alice/tasks/1"),
    ("PATCH", "/api/alice/tasks/1/complete"),
]


class TestCredentialsBeforeTheBody:
    @pytest.mark.parametrize(("method", "path"), ROUTES)
    @pytest.mark.parametrize(
        ("authorization", "detail"),
        [
            (None, "Not authenticated"),
            ("Bearer not-a-token", "Token is malformed"),
            (f"Bearer {hs256('alice', secret='another-secret-' + 'y' * 40)}", None),
        ],
        ids=["no token", "malformed token", "wrong signature"],
    )
    def test_a_request_without_valid_credentials_is_answered_401_at_once(
        self, server: Server, method: str, path: str, authorization: str | None, detail: str | None
    ) -> None:
        with connect(server) as sock:
            sock.sendall(head(method, path, authorization, Content_Length="65000"))
            sock.sendall(b'{"title": "' + b"a" * 1000)
            answer, answered_at, closed_at = answer_and_close(sock, LINGER + 3)
        assert answered_at is not None and answered_at < 1.0, answer[:300]
        assert status_of(answer) == 401, answer[:300]
        response_head = answer.partition(b"\r\n\r\n")[0].lower()
        assert b"www-authenticate: bearer" in response_head
        assert b"content-type: application/json" in response_head
        if detail is not None:
            assert json_body(answer) == {"detail": detail}
        # The rest of the body will never be read: the connection is closed, not kept.
        assert closed_at is not None and closed_at < LINGER + 1.5, answer[:300]

    def test_a_chunked_request_without_a_token_is_answered_401_at_once(
        self, server: Server
    ) -> None:
        with connect(server) as sock:
            sock.sendall(head("POST", "/api/alice/tasks", None, Transfer_Encoding="chunked"))
            sock.sendall(b"400\r\n" + b"a" * 1024 + b"\r\n")
            answer, answered_at, closed_at = answer_and_close(sock, LINGER + 3)
        assert answered_at is not None and answered_at < 1.0, answer[:300]
        assert status_of(answer) == 401, answer[:300]
        assert closed_at is not None

    def test_a_complete_request_without_a_token_keeps_its_connection(self, server: Server) -> None:
        body = b'{"title": "t"}'
        with connect(server) as sock:
            request = head("POST", "/api/alice/tasks", None, Content_Length=str(len(body)))
            sock.sendall(request + body)
            answer, _, closed_at = answer_and_close(sock, 1.0)
            assert status_of(answer) == 401
            assert closed_at is None
            sock.sendall(b"GET /livez HTTP/1.1\r\nHost: test\r\n\r\n")
            assert b"HTTP/1.1 200" in sock.recv(65536)


class TestStalledBodies:
    def test_a_body_that_stops_gets_408_and_the_connection_is_closed(self, server: Server) -> None:
        with connect(server) as sock:
            sock.sendall(head("POST", "/api/alice/tasks", ALICE, Content_Length="65000"))
            sock.sendall(b'{"title": "' + b"a" * 1000)
            answer, answered_at, closed_at = answer_and_close(sock, BODY_TIMEOUT + LINGER + 5)
        assert status_of(answer) == 408, answer[:300]
        assert json_body(answer) == {"detail": "Request body timed out"}
        assert answered_at is not None and BODY_TIMEOUT - 0.5 < answered_at < BODY_TIMEOUT + 1.5
        assert closed_at is not None and closed_at < BODY_TIMEOUT + LINGER + 1.5

    def test_a_chunked_body_that_stops_after_one_chunk_gets_408(self, server: Server) -> None:
        with connect(server) as sock:
            sock.sendall(head("POST", "/api/alice/tasks", ALICE, Transfer_Encoding="chunked"))
            sock.sendall(b"10\r\n" + b'{"title": "aaaaa' + b"\r\n")
            answer, answered_at, closed_at = answer_and_close(sock, BODY_TIMEOUT + LINGER + 5)
        assert status_of(answer) == 408, answer[:300]
        assert answered_at is not None and answered_at < BODY_TIMEOUT + 1.5
        assert closed_at is not None

    def test_trickling_a_body_does_not_extend_its_deadline(self, server: Server) -> None:
        with connect(server) as sock:
            sock.sendall(head("POST", "/api/alice/tasks", ALICE, Content_Length="1000"))
            started = time.monotonic()
            answer = b""
            while not answer and time.monotonic() - started < BODY_TIMEOUT + 4:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    sock.sendall(b" ")
                sock.settimeout(0.3)
                with contextlib.suppress(TimeoutError):
                    answer = sock.recv(65536)
        assert answer, "a trickled body kept its request waiting"
        assert status_of(answer) == 408, answer[:300]
        assert time.monotonic() - started < BODY_TIMEOUT + 1.5

    def test_a_body_sent_in_pieces_within_the_deadline_is_served(self, server: Server) -> None:
        body = b'{"title": "in pieces"' + b" " * 2000 + b"}"
        with connect(server) as sock:
            sock.sendall(head("POST", "/api/alice/tasks", ALICE, Content_Length=str(len(body))))
            for start in range(0, len(body), 500):
                time.sleep(0.2)
                sock.sendall(body[start : start + 500])
            answer, _, _ = answer_and_close(sock, 1.0)
        assert status_of(answer) == 201, answer[:300]

    def test_many_stalled_bodies_are_all_answered_and_closed(self, server: Server) -> None:
        (pid,) = server.worker_pids()
        before = rss_kib(pid)
        sockets = []
        try:
            for i in range(300):
                sock = connect(server)
                authorization = None if i % 2 else ALICE
                sock.sendall(
                    head("POST", "/api/alice/tasks", authorization, Content_Length="65000")
                )
                sock.sendall(b'{"title": "' + b"a" * 1000)
                sockets.append(sock)
            deadline = time.monotonic() + BODY_TIMEOUT + LINGER + 5
            still_open = sockets
            while still_open and time.monotonic() < deadline:
                still_open = [s for s in still_open if answer_and_close(s, 0.001)[2] is None]
                time.sleep(0.2)
            assert not still_open, f"{len(still_open)} of 300 stalled bodies are still open"
        finally:
            for sock in sockets:
                sock.close()
        grown = rss_kib(pid) - before
        assert grown < 16 * 1024, f"the worker grew by {grown} KiB"
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.get("/livez").status_code == 200


def chunked_post(sock: socket.socket, *chunks: bytes) -> None:
    sock.sendall(head("POST", "/api/alice/tasks", ALICE, Transfer_Encoding="chunked"))
    for chunk in chunks:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(chunk)


class TestChunkedFraming:
    def test_a_chunked_body_is_served(self, server: Server) -> None:
        body = b'{"title": "chunked"}'
        with connect(server) as sock:
            chunked_post(sock, b"5\r\n" + body[:5] + b"\r\n", b"%x\r\n" % 15 + body[5:] + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
            answer, _, _ = answer_and_close(sock, 2.0)
        assert status_of(answer) == 201, answer[:300]

    @pytest.mark.parametrize(
        "framing",
        [
            b"%x;ext=" + b"e" * 2 * 1024 * 1024 + b"\r\n",  # a 2 MiB chunk extension
            b"0" * 2 * 1024 * 1024 + b"%x\r\n",  # a 2 MiB chunk-size line
        ],
        ids=["extension", "size line"],
    )
    def test_framing_larger_than_a_body_may_be_is_refused(
        self, server: Server, framing: bytes
    ) -> None:
        body = b'{"title": "framed"}'
        with connect(server) as sock:
            chunked_post(sock, framing % len(body) + body + b"\r\n0\r\n\r\n")
            answer, _, closed_at = answer_and_close(sock, BODY_TIMEOUT + LINGER + 5)
        assert answer, "no answer"
        assert 400 <= status_of(answer) < 500, answer[:300]
        assert b"content-type: application/json" in answer.partition(b"\r\n\r\n")[0].lower()
        assert closed_at is not None

    def test_trailers_larger_than_a_head_may_be_are_refused(self, server: Server) -> None:
        body = b'{"title": "trailers"}'
        trailers = b"".join(b"X-Trailer-%d: %s\r\n" % (i, b"t" * 1000) for i in range(2048))
        with connect(server) as sock:
            chunked_post(sock, b"%x\r\n" % len(body) + body + b"\r\n0\r\n" + trailers + b"\r\n")
            answer, _, closed_at = answer_and_close(sock, BODY_TIMEOUT + LINGER + 5)
        assert answer, "no answer"
        assert 400 <= status_of(answer) < 500, answer[:300]
        assert closed_at is not None

    def test_nothing_refused_was_stored(self, server: Server) -> None:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            titles = [
                t["title"] for t in client.get("/api/alice/tasks", headers=auth("alice")).json()
            ]
        assert "framed" not in titles
        assert "trailers" not in titles


class TestMalformedRequests:
    def test_a_malformed_head_gets_a_json_400_and_the_connection_is_closed(
        self, server: Server
    ) -> None:
        with connect(server) as sock:
            sock.sendall(b"GET /livez HTTP/1.1\r\nHost: test\r\nNo colon here\r\n\r\n")
            answer, _, closed_at = answer_and_close(sock, LINGER + 3)
        assert status_of(answer) == 400, answer[:300]
        assert json_body(answer) == {"detail": "Invalid HTTP request"}
        assert closed_at is not None

    def test_a_malformed_chunk_size_gets_a_json_400_from_the_app(self, server: Server) -> None:
        with connect(server) as sock:
            chunked_post(sock, b"zz\r\n")
            answer, _, closed_at = answer_and_close(sock, LINGER + 3)
        assert status_of(answer) == 400, answer[:300]
        assert json_body(answer) == {"detail": "Invalid HTTP request"}
        # Answered by the app, like any of its answers: with the request id.
        assert b"x-request-id:" in answer.partition(b"\r\n\r\n")[0].lower()
        assert closed_at is not None
