"""``protocol.BoundedHttpToolsProtocol`` on a fake transport, no sockets.

The protocol subclasses uvicorn's ``HttpToolsProtocol`` and uses its private parts
(hermes_api/protocol.py lists them). ``pyproject.toml`` bounds uvicorn's version; these
tests are what tells, at a version bump, whether those parts still behave: each one
drives uvicorn's own ``data_received`` and callbacks and checks the bytes written.
tests/test_connections.py and tests/test_limits.py test the same through real servers.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from typing import Any
from unittest import mock

import orjson
import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from hermes_api import protocol as protocol_module
from hermes_api.protocol import BoundedHttpToolsProtocol, bounded_protocol


class FakeTransport(asyncio.Transport):
    """What the protocol writes, whether it half-closed (``eof``, as a TCP transport
    can), and whether it closed."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False
        self.eof = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def close(self) -> None:
        self.closed = True

    @property
    def ended(self) -> bool:
        """The answer is complete on the client's side: half-closed or closed."""
        return self.eof or self.closed

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8642), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def state() -> ServerState:
    state = ServerState()
    state.default_headers = [(b"date", b"Mon, 01 Jan 2024 00:00:00 GMT")]
    return state


def connect(loop: asyncio.AbstractEventLoop, state: ServerState, **bounds: Any) -> tuple[Any, FakeTransport]:
    cls = bounded_protocol(bounds.pop("max_header_bytes", 1024), **bounds)
    config = uvicorn.Config(_app, log_config=None, lifespan="off", ws="none")
    protocol = cls(config=config, server_state=state, app_state={}, _loop=loop)
    # uvicorn's own log calls (it compares .level, so that stays a number)
    protocol.logger = mock.Mock(wraps=protocol.logger, level=protocol.logger.level)
    transport = FakeTransport()
    protocol.connection_made(transport)
    return protocol, transport


def answer(transport: FakeTransport) -> tuple[int, dict[str, str], dict[str, Any]]:
    head, _, body = transport.written.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return int(status_line.split(" ")[1]), headers, orjson.loads(body)["error"]


def test_the_uvicorn_methods_overridden_keep_their_signatures() -> None:
    expected = {
        "connection_made": ["self", "transport"],
        "connection_lost": ["self", "exc"],
        "data_received": ["self", "data"],
        "on_message_begin": ["self"],
        "on_url": ["self", "url"],
        "on_header": ["self", "name", "value"],
        "on_headers_complete": ["self"],
        "on_message_complete": ["self"],
    }
    found = {name: list(inspect.signature(getattr(HttpToolsProtocol, name)).parameters) for name in expected}
    assert found == expected


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 2000 + b"\r\n\r\n", 431, "request_headers_too_large"
        ),
        pytest.param(
            (b"GET / HTTP/1.1\r\nX-Pad: ", b"a" * 2000), 431, "request_headers_too_large", id="unfinished-header"
        ),
        pytest.param(b"GET / HTTP/1.1\r\nX-Bad: a\x01b\r\n\r\n", 400, "invalid_http", id="control-char"),
        pytest.param(b"NOT HTTP AT ALL\r\n\r\n", 400, "invalid_http", id="garbage"),
    ],
)
def test_what_the_parser_refuses_is_answered_once_in_the_envelope(
    loop: asyncio.AbstractEventLoop, state: ServerState, data: bytes | tuple[bytes, ...], status: int, code: str
) -> None:
    protocol, transport = connect(loop, state)
    for chunk in data if isinstance(data, tuple) else (data,):
        protocol.data_received(chunk)
    got, headers, error = answer(transport)
    assert (got, error["code"], transport.ended) == (status, code, True)
    assert headers["date"] == "Mon, 01 Jan 2024 00:00:00 GMT" and headers["x-request-id"].startswith("req_")
    assert protocol.logger.warning.call_count == 0, "uvicorn logged it too"
    written = transport.written
    protocol.data_received(b"GET / HTTP/1.1\r\n\r\n")  # nothing more is read once refused
    assert transport.written == written


def test_a_good_request_reaches_the_app(loop: asyncio.AbstractEventLoop, state: ServerState) -> None:
    protocol, transport = connect(loop, state)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    loop.run_until_complete(asyncio.sleep(0.01))
    assert transport.written.startswith(b"HTTP/1.1 200 OK\r\n") and transport.written.endswith(b"\r\n\r\nok")
    assert not transport.closed and protocol._head_timer is None


def test_a_head_not_complete_within_header_timeout_gets_408(
    loop: asyncio.AbstractEventLoop, state: ServerState
) -> None:
    protocol, transport = connect(loop, state, header_timeout=0.05)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n")
    loop.run_until_complete(asyncio.sleep(0.2))
    got, headers, error = answer(transport)
    assert (got, error["code"], transport.ended) == (408, "request_timeout", True)


def test_the_head_timer_restarts_for_the_next_request_on_the_connection(
    loop: asyncio.AbstractEventLoop, state: ServerState
) -> None:
    protocol, transport = connect(loop, state, header_timeout=0.05)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    loop.run_until_complete(asyncio.sleep(0.2))  # answered; idle is keep-alive's business
    assert not transport.closed
    protocol.data_received(b"GET / HTTP/1.1\r\n")
    loop.run_until_complete(asyncio.sleep(0.2))
    assert transport.ended and b"408 Request Timeout" in transport.written


def test_a_connection_over_max_connections_gets_503_before_any_byte(
    loop: asyncio.AbstractEventLoop, state: ServerState
) -> None:
    open_ = [connect(loop, state, max_connections=2) for _ in range(2)]
    assert not any(t.closed for _, t in open_)
    protocol, transport = connect(loop, state, max_connections=2)
    got, headers, error = answer(transport)
    assert (got, error["code"], headers["retry-after"], transport.ended) == (503, "too_many_connections", "1", True)
    assert protocol._head_timer is None


def test_the_default_bounds_are_the_settings_defaults() -> None:
    from hermes_api.settings import Settings

    defaults = {f: Settings.__dataclass_fields__[f].default for f in ("header_timeout", "max_connections")}
    assert {f: getattr(BoundedHttpToolsProtocol, f) for f in defaults} == defaults


def test_a_refused_connection_lingers_then_closes(
    loop: asyncio.AbstractEventLoop, state: ServerState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After its answer a refused connection is half-closed and what the client still
    sends is dropped, so the kernel never resets it while the answer waits to be read
    (a bare reset instead of a 408); it is closed after ``LINGER`` seconds, and meanwhile
    holds no place under ``max_connections``."""
    monkeypatch.setattr(protocol_module, "LINGER", 0.05)
    protocol, transport = connect(loop, state, header_timeout=0.01, max_connections=1)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n")
    loop.run_until_complete(asyncio.sleep(0.03))
    assert (answer(transport)[0], transport.eof, transport.closed) == (408, True, False)
    protocol.data_received(b"X-Still: sending\r\n")  # read and dropped
    assert protocol not in state.connections
    second, other = connect(loop, state, max_connections=1)
    assert not other.ended  # the lingering one does not count
    loop.run_until_complete(asyncio.sleep(0.1))
    assert transport.closed
