"""The HTTP/1.1 protocol ``hermes-api serve`` runs: uvicorn's httptools one, with a cap
on the request line and headers.

httptools (llhttp) buffers a request's head without any limit: one client could send
gigabytes of headers and the server would hold them all in memory. uvicorn's h11
protocol has a limit (``h11_max_incomplete_event_size``) but is slower, and answers a
plain-text 400. Here a head over ``max_header_bytes`` (request line plus every header
name and value) gets ``431`` with the OpenAI error envelope and the connection is
closed; at most ``max_header_bytes`` plus one read (256 KiB) is ever buffered. What
httptools cannot parse at all (a control character in a header value, a broken request
line) gets uvicorn's 400, but in the envelope (``invalid_http``) instead of plain text.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .errors import HeadersTooLargeError, HermesAPIError, MalformedHTTPError

logger = logging.getLogger("hermes_api")


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing the head."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` refusing heads larger than ``max_header_bytes``."""

    max_header_bytes = 64 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # between the end of one request and its successor's headers
        self._head_size = 0  # exact: request line and header bytes the parser handed over
        self._unparsed = 0  # bytes of reads that fell wholly inside an incomplete head
        self._boundary = False  # a request began or its head ended during this read
        self._too_large = False

    def data_received(self, data: bytes) -> None:
        self._boundary = False
        super().data_received(data)
        if self._boundary or not self._in_head:
            self._unparsed = 0
        elif not self._too_large and not self.transport.is_closing():
            # The whole chunk lies inside one head that is still incomplete: what
            # httptools holds for a header it has not finished is counted here only.
            self._unparsed += len(data)
            if self._unparsed > self.max_header_bytes:
                self._refuse()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_size, self._boundary = True, 0, True

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head, self._boundary = False, True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._boundary = True, True

    def _count(self, size: int) -> None:
        self._head_size += size
        if self._head_size > self.max_header_bytes:
            self._too_large = True
            raise _HeadTooLarge  # httptools stops; uvicorn calls send_400_response

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to what httptools cannot parse, in the envelope (§5)."""
        if self._too_large:
            self._refuse()
        else:
            self._close_with(MalformedHTTPError("The request is not valid HTTP/1.1 (" + msg.rstrip(".") + ")."))

    def _refuse(self) -> None:
        """Answer 431 with the envelope and close the connection."""
        self._too_large = True
        logger.warning("refused a request whose headers are larger than %d bytes", self.max_header_bytes)
        self._close_with(
            HeadersTooLargeError(f"The request line and headers are larger than {self.max_header_bytes} bytes.")
        )

    def _close_with(self, error: HermesAPIError) -> None:
        body = orjson.dumps(error.to_dict())
        self.transport.write(
            STATUS_LINE[error.status_code] + b"content-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n"
            b"connection: close\r\n\r\n" + body
        )
        self.transport.close()


def bounded_protocol(max_header_bytes: int) -> type[BoundedHttpToolsProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` with this head limit."""
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), {"max_header_bytes": max_header_bytes})
