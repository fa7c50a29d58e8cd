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

from todo_api.one_send import HOLD_BYTES, PairedWrites


class Recorded:
    """The socket's real transport, with each write it is given recorded."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.real = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.real.write(data)

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
