"""PairedWrites (todo_api/one_send.py) over a real TCP connection on the server's event loop: a
head and its body reach the peer whole and in order, in one write of the socket's transport, sent
at once; a lone write goes out at the end of the loop turn; nothing held is lost to a close or a
half-close; a large write is not held."""

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop
from uvicorn.config import Config

from todo_api.one_send import HOLD_BYTES, PairedWrites
from todo_api.protocol import http_protocol
from todo_api.uvicorn_internals import StoppingState


class Recorded:
    """The socket's real transport, with each write it is given recorded."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.real = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.real.write(data)

    def writelines(self, list_of_data: Any) -> None:
        parts = [bytes(part) for part in list_of_data]
        self.writes.append(b"".join(parts))
        self.real.writelines(parts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class Server(asyncio.Protocol):
    def __init__(self, accepted: "asyncio.Future[tuple[PairedWrites, Recorded]]") -> None:
        self.accepted = accepted

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        recorded = Recorded(transport)  # type: ignore[arg-type]
        wrapped = PairedWrites(recorded, asyncio.get_running_loop())  # type: ignore[arg-type]
        self.accepted.set_result((wrapped, recorded))


Scenario = Callable[[PairedWrites, Recorded, asyncio.StreamReader], Coroutine[Any, Any, None]]


def run(scenario: Scenario) -> None:
    """`scenario` with the server's side of a fresh connection and the client's reader."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        accepted: asyncio.Future[tuple[PairedWrites, Recorded]] = loop.create_future()
        server = await loop.create_server(lambda: Server(accepted), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        wrapped, recorded = await asyncio.wait_for(accepted, 5)
        try:
            await asyncio.wait_for(scenario(wrapped, recorded, reader), 10)
        finally:
            writer.close()
            server.close()
            await server.wait_closed()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


def test_a_head_and_its_body_are_one_write_sent_at_once() -> None:
    async def scenario(out: PairedWrites, recorded: Recorded, reader: Any) -> None:
        head = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"
        out.write(head)
        assert recorded.writes == [], "the head waits for its body"
        out.write(b"hello")
        assert recorded.writes == [head + b"hello"], "sent with the body, in the same turn"
        assert await reader.readexactly(len(head) + 5) == head + b"hello"

    run(scenario)


def test_a_lone_write_goes_out_at_the_end_of_the_turn() -> None:
    async def scenario(out: PairedWrites, recorded: Recorded, reader: Any) -> None:
        head = b"HTTP/1.1 204 No Content\r\n\r\n"
        out.write(head)
        assert recorded.writes == []
        await asyncio.sleep(0)
        assert recorded.writes == [head]
        # Three writes in a turn: a pair, then one held to the end of the turn; in order.
        for part in (b"one", b"two", b"three"):
            out.write(part)
        assert recorded.writes[1:] == [b"onetwo"]
        assert await reader.readexactly(len(head) + 11) == head + b"onetwothree"
        assert recorded.writes[1:] == [b"onetwo", b"three"]

    run(scenario)


def test_a_reused_buffer_is_sent_as_it_was_written() -> None:
    async def scenario(out: PairedWrites, recorded: Recorded, reader: Any) -> None:
        buffer = bytearray(b"first")
        out.write(buffer)
        buffer[:] = b"XXXXX"
        out.write(b"!")
        assert await reader.readexactly(6) == b"first!"

    run(scenario)


@pytest.mark.parametrize("ending", ["close", "write_eof"])
def test_held_bytes_go_out_before_a_close_or_a_half_close(ending: str) -> None:
    async def scenario(out: PairedWrites, recorded: Recorded, reader: Any) -> None:
        out.write(b"last words")
        getattr(out, ending)()
        assert recorded.writes == [b"last words"]
        assert await reader.read() == b"last words"  # then the end of the stream

    run(scenario)


def test_abort_drops_what_is_held() -> None:
    async def scenario(out: PairedWrites, recorded: Recorded, reader: Any) -> None:
        out.write(b"never sent")
        out.abort()
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await reader.readexactly(1)
        assert recorded.writes == []

    run(scenario)


def test_a_large_write_is_not_held() -> None:
    async def scenario(out: PairedWrites, recorded: Recorded, reader: Any) -> None:
        out.write(b"x" * HOLD_BYTES)
        assert recorded.writes == [b"x" * HOLD_BYTES], "sent at once"
        out.write(b"held")
        assert out.get_write_buffer_size() == recorded.real.get_write_buffer_size() + 4
        assert len(await reader.readexactly(HOLD_BYTES + 4)) == HOLD_BYTES + 4

    run(scenario)


def test_the_rest_is_the_real_transports() -> None:
    async def scenario(out: PairedWrites, recorded: Recorded, reader: Any) -> None:
        sock = out.get_extra_info("socket")
        assert sock.family == socket.AF_INET
        assert out.get_extra_info("peername") == recorded.real.get_extra_info("peername")
        out.pause_reading()
        assert not out.is_reading()
        out.resume_reading()
        assert out.is_reading() and not out.is_closing() and out.can_write_eof()

    run(scenario)


def test_a_write_held_when_the_connection_is_lost_is_dropped_quietly() -> None:
    errors: list[dict[str, Any]] = []

    async def scenario(out: PairedWrites, recorded: Recorded, reader: Any) -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda _loop, context: errors.append(context)
        )
        recorded.real.abort()  # a reset: the loss is handled before the held write's turn ends
        out.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        for _ in range(3):
            await asyncio.sleep(0)
        assert recorded.writes == []

    run(scenario)
    assert errors == [], errors


def test_writelines_keeps_the_order_of_a_held_write() -> None:
    async def scenario(out: PairedWrites, recorded: Recorded, reader: Any) -> None:
        out.write(b"head;")
        out.writelines([b"one;", b"two"])
        assert await reader.readexactly(12) == b"head;one;two"

    run(scenario)


def test_the_servers_protocol_sends_a_response_in_one_write() -> None:
    """Our HTTP protocol (as Uvicorn's worker builds it) over a real socket, with a real app."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = [(b"content-length", b"11")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"ok":true}'})

    configured = http_protocol(
        max_head_bytes=32 * 1024, head_timeout=10, max_body_wire_bytes=96 * 1024,
        body_timeout=10, idle_grace=1,
    )  # fmt: skip
    recorded: list[Recorded] = []

    class Watched(configured):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            recorded.append(Recorded(transport))
            super().connection_made(recorded[-1])

    async def main() -> None:
        loop = asyncio.get_running_loop()
        config = Config(app=app, http="httptools", ws="none", lifespan="off", access_log=False)
        config.load()
        state = StoppingState()
        server = await loop.create_server(
            lambda: Watched(config, state, {}, _loop=loop), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert await reader.readexactly(11) == b'{"ok":true}'
        writer.close()
        server.close()
        await server.wait_closed()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
    (connection,) = recorded
    assert len(connection.writes) == 1, connection.writes
    assert connection.writes[0].startswith(b"HTTP/1.1 200 OK") and connection.writes[0].endswith(
        b'{"ok":true}'
    )
