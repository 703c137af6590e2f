"""``AiohttpTransport``: httpx's transport interface over one aiohttp connection pool.

``upstream.Upstream`` builds ``httpx.Request`` objects and hands them straight to a
transport: this one in production, respx's mock in tests, so the same code runs in both.
It replaces ``httpx.AsyncClient.send`` over httpx-aiohttp's transport on the hot path:
measured in one process against nginx (``python -m bench clients``), the client layer
cost ~260 µs of CPU per request at 32 concurrent requests that way, ~125 µs this way,
~70 µs for raw aiohttp. The savings come from skipping what a gateway never uses
(cookie jar, auth and redirect machinery, event hooks) and from converting headers
and URLs once instead of once per layer.

aiohttp's failures leave as httpx's exception classes (``ConnectError``,
``ConnectTimeout``, ``ReadTimeout``, ``ReadError``, ``NetworkError``), raised ``from``
the aiohttp error, before and during the body alike, so ``upstream.transport_error``
maps one family of exceptions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import aiohttp
import httpx

# What httpx.Response decodes with the standard library alone. aiohttp would offer what
# *it* can decode: zstd too with backports.zstd (always on Python 3.14), which httpx reads
# only with the zstandard package, so a zstd answer would reach us undecoded.
ACCEPT_ENCODING = "gzip, deflate"


def _session(limit: int) -> aiohttp.ClientSession:
    # limit=0: no pool cap here; concurrency limits belong to the server.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, keepalive_timeout=30),
        headers={"Accept-Encoding": ACCEPT_ENCODING},  # a request's own header still wins
        trust_env=False,
        auto_decompress=False,  # httpx.Response decodes, as with any httpx transport
    )


def _mapped(exc: BaseException, request: httpx.Request) -> httpx.TransportError:
    """The httpx exception for an aiohttp failure (or an asyncio timeout)."""
    cls: type[httpx.TransportError]
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        cls = httpx.ConnectTimeout
    elif isinstance(exc, TimeoutError):
        cls = httpx.ReadTimeout
    elif isinstance(exc, aiohttp.ClientConnectorError):
        cls = httpx.ConnectError
    elif isinstance(exc, aiohttp.ClientPayloadError):
        cls = httpx.ReadError
    else:
        cls = httpx.NetworkError
    return cls(str(exc) or type(exc).__name__, request=request)


class _Body(httpx.AsyncByteStream):
    """An aiohttp response body as httpx's stream; closing returns the connection to the
    pool when the body was read to its end, and drops it otherwise."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _mapped(exc, self._request) from exc

    async def aclose(self) -> None:
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One lazily made ``aiohttp.ClientSession`` (it must be made inside the running
    loop); ``limit`` caps its connections (0 = no cap). Honours httpx's ``timeout``
    request extension (seconds): ``connect`` and ``read`` per socket operation,
    ``pool`` for getting a connection at all."""

    def __init__(self, limit: int = 0, *, session: Callable[[int], aiohttp.ClientSession] = _session) -> None:
        self._limit = limit
        self._make_session = session
        self._session: aiohttp.ClientSession | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._session is None:
            self._session = self._make_session(self._limit)
        timeout = request.extensions.get("timeout") or {}
        try:
            response = await self._session.request(
                request.method,
                str(request.url),
                data=request.content,
                headers=request.headers.multi_items(),
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(
                    sock_connect=timeout.get("connect"), sock_read=timeout.get("read"), connect=timeout.get("pool")
                ),
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _mapped(exc, request) from exc
        return httpx.Response(
            response.status,
            headers=response.raw_headers,
            stream=_Body(response, request),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
