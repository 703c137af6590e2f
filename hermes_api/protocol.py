"""The HTTP/1.1 protocol ``hermes-api serve`` runs: uvicorn's httptools one, with
bounds on what one client may hold.

- **Head size.** httptools (llhttp) buffers a request's head without any limit. Here a
  head over ``max_header_bytes`` (request line plus every header name and value) gets
  ``431``; at most ``max_header_bytes`` plus one read (256 KiB) is ever buffered.
- **Head time.** uvicorn waits for a request's head for ever: a client sending one
  header line every few seconds held its connection (and a file descriptor) open
  indefinitely. Here the head must be complete ``header_timeout`` seconds after the
  connection opened, or after the first byte of the next request on a kept-alive
  connection, else ``408`` (nginx's ``client_header_timeout``). Idle time between
  requests is uvicorn's keep-alive timeout.
- **Open connections.** A connection beyond ``max_connections`` open ones gets ``503``
  at once, before any byte is read, and is closed.
- What httptools cannot parse at all (a control character in a header value, a broken
  request line) gets ``400`` ``invalid_http``.

Each of these answers is the OpenAI error envelope with ``Date`` and ``x-request-id``,
closes the connection, and is logged once, with its request id. The close lingers
(nginx's ``lingering_close``): the answer is followed by a half-close (FIN), and what the
client still sends is read and dropped for up to ``LINGER`` seconds, until it closes its
side. A socket closed with unread bytes makes the kernel send a reset, and a reset can
destroy the answer in the client's buffer before it is read: a slow client still sending
header lines got a bare reset instead of its 408. uvicorn's own plain-text
400 and its "Invalid HTTP request received." line are never reached: parser errors stop
in ``_Parser``.

This leans on uvicorn internals, which is why ``pyproject.toml`` bounds uvicorn's
version: ``HttpToolsProtocol``'s parser callbacks (``on_message_begin``, ``on_url``,
``on_header``, ``on_headers_complete``, ``on_message_complete``), ``data_received``,
``connection_made``/``connection_lost``, its ``parser``, ``transport``, ``cycle``,
``connections`` and ``server_state.default_headers`` attributes, and ``STATUS_LINE``.
``tests/test_protocol.py`` fails when any of them changes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .errors import (
    ConnectionLimitError,
    HeadersTooLargeError,
    HermesAPIError,
    MalformedHTTPError,
    RequestTimeoutError,
)
from .request_ids import new_request_id
from .settings import Settings
from .settings_schema import default

logger = logging.getLogger("hermes_api")
# Seconds a refused connection is read (and dropped) after its answer and half-close,
# unless the client closes first: nginx's lingering_time is 30 s, its lingering_timeout 5.
LINGER = 2.0


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing the head."""


class _Parser:
    """httptools' parser, handing every parse error to ``on_error`` instead of raising
    it into uvicorn's ``data_received`` (which would log and answer it its own way)."""

    def __init__(self, parser: httptools.HttpRequestParser, on_error: Any) -> None:
        self._parser, self._on_error = parser, on_error

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parser, name)

    def feed_data(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._on_error(exc)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` with the bounds of the module docstring (class attributes,
    set per server by ``bounded_protocol``)."""

    max_header_bytes: int = default(Settings, "max_header_bytes")
    header_timeout: float = default(Settings, "header_timeout")
    max_connections: int = default(Settings, "max_connections")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.parser = _Parser(self.parser, self._parse_error)  # type: ignore[assignment]
        self._in_head = True  # between the end of one request and its successor's headers
        self._head_size = 0  # exact: request line and header bytes the parser handed over
        self._unparsed = 0  # bytes of reads that fell wholly inside an incomplete head
        self._boundary = False  # a request began or its head ended during this read
        self._refused = False  # an answer of our own was sent: nothing more is read
        self._head_timer: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None  # closes a refused connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._refuse(
                ConnectionLimitError(f"The server has {self.max_connections} connections open; retry shortly."),
                f"refused a connection: max_connections ({self.max_connections}) are open",
            )
            return
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        if self._linger is not None:
            self._linger.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._boundary = False
        super().data_received(data)
        if self._boundary or not self._in_head:
            self._unparsed = 0
        elif not self._refused and not self.transport.is_closing():
            # The whole chunk lies inside one head that is still incomplete: what
            # httptools holds for a header it has not finished is counted here only.
            self._unparsed += len(data)
            if self._unparsed > self.max_header_bytes:
                self._too_large()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_size, self._boundary = True, 0, True
        if self._head_timer is None:  # the next request on a kept-alive connection
            self._start_head_timer()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head, self._boundary = False, True
        self._stop_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._boundary = True, True

    def _count(self, size: int) -> None:
        self._head_size += size
        if self._head_size > self.max_header_bytes:
            raise _HeadTooLarge  # httptools stops; _parse_error answers

    def _parse_error(self, exc: httptools.HttpParserError) -> None:
        if isinstance(exc.__context__, _HeadTooLarge):
            self._too_large()
        else:
            # llhttp's reason ("Invalid header value char"), or a failing callback's exception.
            detail = str(exc).rstrip(".") if exc.__context__ is None else repr(exc.__context__)
            self._refuse(
                MalformedHTTPError(f"The request is not valid HTTP/1.1 ({detail})."),
                f"refused a request that is not valid HTTP/1.1 ({detail})",
            )

    def _too_large(self) -> None:
        self._refuse(
            HeadersTooLargeError(f"The request line and headers are larger than {self.max_header_bytes} bytes."),
            f"refused a request whose headers are larger than {self.max_header_bytes} bytes",
        )

    def _start_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head arriving while a response is being sent: never write
            # into that response; look again once this much time has passed again.
            self._start_head_timer()
            return
        self._refuse(
            RequestTimeoutError(f"The request line and headers took longer than {self.header_timeout:g} s to arrive."),
            f"closed a connection whose request headers took longer than {self.header_timeout:g} s",
            logging.INFO,  # also an idle preconnected socket (a browser's): no alarm
        )

    def _refuse(self, error: HermesAPIError, reason: str, level: int = logging.WARNING) -> None:
        """Answer ``error`` in the envelope, log ``reason`` once, close the connection."""
        if self._refused or self.transport.is_closing():
            return
        self._refused = True
        self._stop_head_timer()
        request_id = new_request_id()
        logger.log(level, "%s (%s, x-request-id %s)", reason, error.status_code, request_id)
        body = orjson.dumps(error.to_dict())
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.encode(), v.encode()) for k, v in error.headers.items()]
        headers += [*self.server_state.default_headers, (b"x-request-id", request_id.encode())]
        head = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        self.transport.write(STATUS_LINE[error.status_code] + head + b"connection: close\r\n\r\n" + body)
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()  # the client reads the answer, then the end; its FIN closes ours
        self.connections.discard(self)  # lingering, it holds no place under max_connections
        self._linger = self.loop.call_later(LINGER, self.transport.close)


def bounded_protocol(
    max_header_bytes: int,
    *,
    header_timeout: float = BoundedHttpToolsProtocol.header_timeout,
    max_connections: int = BoundedHttpToolsProtocol.max_connections,
) -> type[BoundedHttpToolsProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` with these bounds (bytes, seconds, connections)."""
    bounds = {
        "max_header_bytes": max_header_bytes,
        "header_timeout": header_timeout,
        "max_connections": max_connections,
    }
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), bounds)


class ProtocolFactory:
    """uvicorn's ``http=`` for ``bounded_protocol``'s bounds (header bytes, header
    seconds, connections per process), callable as the protocol class is. That class is
    made at run time and cannot be pickled; this object can (by its bounds), so it also
    crosses to the processes of ``serve --workers`` (uvicorn pickles its ``Config``)."""

    def __init__(self, max_header_bytes: int, header_timeout: float, max_connections: int) -> None:
        self.bounds = (max_header_bytes, header_timeout, max_connections)

    @functools.cached_property
    def _cls(self) -> type[BoundedHttpToolsProtocol]:
        max_header_bytes, header_timeout, max_connections = self.bounds
        return bounded_protocol(max_header_bytes, header_timeout=header_timeout, max_connections=max_connections)

    def __call__(self, *args: Any, **kwargs: Any) -> BoundedHttpToolsProtocol:
        return self._cls(*args, **kwargs)

    def __reduce__(self) -> tuple[type[ProtocolFactory], tuple[int, float, int]]:
        return (ProtocolFactory, self.bounds)
