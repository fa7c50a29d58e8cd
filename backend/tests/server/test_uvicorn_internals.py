"""The private names of Uvicorn and uvicorn-worker that the server relies on still exist, with the
kind and signature it expects: an upgrade that changes one fails here, not in production."""

import ast
import asyncio
import inspect
from pathlib import Path

import pytest
import uvicorn
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn_worker import UvicornWorker

from todo_api import uvicorn_internals
from todo_api.uvicorn_internals import (
    CYCLE_ATTRIBUTES,
    FLOW_ATTRIBUTES,
    PROTOCOL_ATTRIBUTES,
    PROTOCOL_METHODS,
    SERVER_STATE_ATTRIBUTES,
    WORKER_ATTRIBUTES,
    WORKER_METHODS,
    StoppingState,
    UvicornHttp,
)

PACKAGE = Path(uvicorn_internals.__file__).parent


async def _app(scope: object, receive: object, send: object) -> None:
    pass


@pytest.fixture
def connection() -> HttpToolsProtocol:
    """Uvicorn's own protocol (not ours) with a request read up to its body."""

    class Transport(asyncio.Transport):
        def get_extra_info(self, name: str, default: object = None) -> object:
            return ("127.0.0.1", 8000) if name in ("sockname", "peername") else default

        def pause_reading(self) -> None:
            pass

        def resume_reading(self) -> None:
            pass

    loop = asyncio.new_event_loop()
    config = Config(app=_app, http="httptools", ws="none", lifespan="off")
    protocol = HttpToolsProtocol(config, StoppingState(), {}, _loop=loop)
    protocol.connection_made(Transport())
    protocol.data_received(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n")
    yield protocol
    tasks = list(protocol.tasks)
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    loop.close()


def test_the_protocol_has_every_attribute_used(connection: HttpToolsProtocol) -> None:
    missing = [name for name in PROTOCOL_ATTRIBUTES if not hasattr(connection, name)]
    assert not missing, f"Uvicorn's protocol no longer has {missing}"
    assert isinstance(connection.flow, FlowControl)
    assert isinstance(connection.pipeline, type(connection.pipeline)) and not connection.pipeline
    assert isinstance(connection.timeout_keep_alive, int | float)


def test_the_protocol_methods_keep_their_signatures() -> None:
    expected = {
        "timeout_keep_alive_handler": [],
        "_unset_keepalive_if_required": [],
        "on_response_complete": [],
        "shutdown": [],
        "send_400_response": ["msg"],
        "_unsupported_upgrade_warning": [],
    }
    assert set(expected) == set(PROTOCOL_METHODS)
    for name, parameters in expected.items():
        method = getattr(HttpToolsProtocol, name, None)
        assert callable(method), f"Uvicorn's protocol no longer has {name}()"
        assert list(inspect.signature(method).parameters)[1:] == parameters, name


def test_the_request_cycle_has_every_attribute_used(connection: HttpToolsProtocol) -> None:
    cycle = connection.cycle
    missing = [name for name in CYCLE_ATTRIBUTES if not hasattr(cycle, name)]
    assert not missing, f"Uvicorn's request cycle no longer has {missing}"
    assert isinstance(cycle.message_event, asyncio.Event)
    assert isinstance(cycle.scope["state"], dict)
    assert cycle.keep_alive is True
    assert (cycle.response_started, cycle.response_complete) == (False, False)
    assert cycle.waiting_for_100_continue is False
    # Our protocol sees each response's end through the cycle's callback.
    assert cycle.on_response == connection.on_response_complete


def test_flow_control_and_server_state(connection: HttpToolsProtocol) -> None:
    for name in FLOW_ATTRIBUTES:
        assert hasattr(connection.flow, name), f"Uvicorn's FlowControl no longer has {name}"
    connection.flow.pause_reading()
    assert connection.flow.read_paused is True
    for name in SERVER_STATE_ATTRIBUTES:
        assert hasattr(connection.server_state, name), name
    assert connection in connection.server_state.connections
    assert STATUS_LINE[408] == b"HTTP/1.1 408 Request Timeout\r\n"


def test_the_server_and_the_worker_keep_what_we_override() -> None:
    assert list(inspect.signature(uvicorn.Server.shutdown).parameters) == ["self", "sockets"]
    assert "server_state" in inspect.getsource(uvicorn.Server.__init__)
    for name in WORKER_METHODS:
        assert callable(getattr(UvicornWorker, name, None)), f"uvicorn-worker lost {name}"
    assert inspect.iscoroutinefunction(UvicornWorker._serve)
    # Our _serve is uvicorn-worker's with another server class: the rest must be the same.
    theirs = inspect.getsource(UvicornWorker._serve).replace("Server(", "StoppingServer(")
    ours = inspect.getsource(uvicorn_internals.Worker._serve)
    assert _code(theirs) == _code(ours), "uvicorn-worker's _serve changed: compare and update"
    assert "CONFIG_KWARGS" in vars(UvicornWorker)
    # The worker builds Uvicorn's Config from CONFIG_KWARGS in __init__, under this name.
    built = inspect.getsource(UvicornWorker.__init__)
    for name in WORKER_ATTRIBUTES:
        assert f"self.{name} = Config(**config_kwargs)" in built, name


def test_the_adapter_overrides_only_names_uvicorn_still_has() -> None:
    ours = {
        name
        for name, value in vars(UvicornHttp).items()
        if callable(value) and name in vars(HttpToolsProtocol)
    }
    assert ours == {
        "on_response_complete",
        "shutdown",
        "send_400_response",
        "_unsupported_upgrade_warning",
    }


def test_no_other_module_imports_uvicorn_internals() -> None:
    # `import uvicorn` (uvicorn.run, for `todo-api dev`) is public; its modules and
    # uvicorn-worker are not.
    importers = []
    for path in PACKAGE.glob("*.py"):
        if path.name == "uvicorn_internals.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(name.startswith(("uvicorn.", "uvicorn_worker")) for name in names):
                importers.append(path.name)
    assert importers == [], "import Uvicorn's internals through uvicorn_internals.py only"


def _code(source: str) -> str:
    """The statements of a method's source, without its comments and docstring."""
    function = ast.parse(inspect.cleandoc("\n" + source)).body[0]
    assert isinstance(function, ast.AsyncFunctionDef)
    body = [
        s
        for s in function.body
        if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
    ]
    return "\n".join(ast.unparse(statement) for statement in body)
