"""``transport.AiohttpTransport`` against a real upstream on loopback (uvicorn in a thread).

The rest of the suite injects respx's transport, so this is where the production
transport itself is held to httpx's contract: what is sent, streamed bodies, gzip,
connection reuse, and aiohttp's failures arriving as httpx's exception classes.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from hermes_api.errors import UpstreamTimeoutError, UpstreamUnavailableError
from hermes_api.profiles import Profile
from hermes_api.settings import Settings, Timeouts
from hermes_api.transport import AiohttpTransport
from hermes_api.upstream import Upstream

from .conftest import LiveServer

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

T = TypeVar("T")
TIMEOUT = httpx.Timeout(5.0).as_dict()
COMPLETION = {
    "id": "c",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
}


async def slow_headers(request: Request) -> JSONResponse:
    await asyncio.sleep(1)
    return JSONResponse({})


def upstream_app() -> Starlette:
    async def echo(request: Request) -> JSONResponse:
        return JSONResponse(
            {"method": request.method, "headers": dict(request.headers), "body": (await request.body()).decode()}
        )

    async def stream(request: Request) -> StreamingResponse:
        async def parts() -> AsyncIterator[bytes]:
            for i in range(3):
                yield f"data: {i}\n\n".encode()
                await asyncio.sleep(0.01)

        # The client's end of the connection: the same port means the same connection.
        peer = {"x-peer": f"{request.client.host}:{request.client.port}"} if request.client else {}
        return StreamingResponse(parts(), media_type="text/event-stream", headers=peer)

    async def stalled_body(request: Request) -> StreamingResponse:
        async def parts() -> AsyncIterator[bytes]:
            yield b"data: 0\n\n"
            await asyncio.sleep(1)
            yield b"data: 1\n\n"

        return StreamingResponse(parts(), media_type="text/event-stream")

    async def big(request: Request) -> JSONResponse:
        return JSONResponse({"text": "x" * 5000})

    async def best_encoding(request: Request) -> Response:
        """A provider that compresses with the best encoding it is offered, zstd first."""
        offered = {e.strip() for e in request.headers.get("accept-encoding", "").split(",")}
        body = orjson.dumps(COMPLETION)
        if "zstd" in offered:
            return Response(zstd.compress(body), media_type="application/json", headers={"content-encoding": "zstd"})
        if "gzip" in offered:
            return Response(gzip.compress(body), media_type="application/json", headers={"content-encoding": "gzip"})
        return Response(body, media_type="application/json")

    return Starlette(
        routes=[
            Route("/echo", echo, methods=["POST"]),
            Route("/stream", stream, methods=["POST"]),
            Route("/slow-headers", slow_headers, methods=["POST"]),
            Route("/stalled-body", stalled_body, methods=["POST"]),
            Route("/big", big, methods=["POST"]),
            Route("/v1/chat/completions", best_encoding, methods=["POST"]),
        ],
        middleware=[Middleware(GZipMiddleware, minimum_size=1000)],
    )


@pytest.fixture
def up(live: Callable[[Any], LiveServer]) -> LiveServer:
    return live(upstream_app())


def run(make: Callable[[AiohttpTransport], Coroutine[Any, Any, T]]) -> T:
    """Run ``make(transport)`` on a fresh loop with a fresh transport, closing it after."""

    async def main() -> T:
        transport = AiohttpTransport()
        try:
            return await make(transport)
        finally:
            await transport.aclose()

    return asyncio.run(main())


def post(url: str, body: bytes = b"{}", timeout: dict[str, Any] = TIMEOUT) -> httpx.Request:
    headers = {"content-type": "application/json", "authorization": "Bearer sk-test"}
    return httpx.Request("POST", url, content=body, headers=headers, extensions={"timeout": timeout})


def test_sends_method_headers_and_body(up: LiveServer) -> None:
    async def go(t: AiohttpTransport) -> httpx.Response:
        response = await t.handle_async_request(post(up.url + "/echo", b'{"a": 1}'))
        await response.aread()
        return response

    response = run(go)
    assert response.status_code == 200
    seen = orjson.loads(response.content)
    assert seen["method"] == "POST" and seen["body"] == '{"a": 1}'
    assert seen["headers"]["authorization"] == "Bearer sk-test"
    assert seen["headers"]["content-type"] == "application/json"
    assert seen["headers"]["content-length"] == "8"


def test_streams_the_body_and_reuses_the_connection(up: LiveServer) -> None:
    async def go(t: AiohttpTransport) -> list[tuple[bytes, str]]:
        answers = []
        for _ in range(3):
            response = await t.handle_async_request(post(up.url + "/stream"))
            answers.append((b"".join([chunk async for chunk in response.aiter_bytes()]), response.headers["x-peer"]))
            await response.aclose()
        return answers

    answers = run(go)
    assert [body for body, _ in answers] == [b"data: 0\n\ndata: 1\n\ndata: 2\n\n"] * 3
    assert len({peer for _, peer in answers}) == 1, "the three requests came over one connection"


def test_gzip_answers_are_decoded(up: LiveServer) -> None:
    async def go(t: AiohttpTransport) -> httpx.Response:
        response = await t.handle_async_request(post(up.url + "/big"))
        await response.aread()
        return response

    response = run(go)
    assert response.headers["content-encoding"] == "gzip"
    assert orjson.loads(response.content) == {"text": "x" * 5000}


def test_refused_connection_is_a_connect_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens

    async def go(t: AiohttpTransport) -> None:
        await t.handle_async_request(post(f"http://127.0.0.1:{port}/x"))

    with pytest.raises(httpx.ConnectError):
        run(go)


@pytest.mark.parametrize("path", ["/slow-headers", "/stalled-body"], ids=["before-headers", "mid-body"])
def test_a_silent_upstream_is_a_read_timeout(up: LiveServer, path: str) -> None:
    async def go(t: AiohttpTransport) -> None:
        response = await t.handle_async_request(post(up.url + path, timeout=httpx.Timeout(0.2).as_dict()))
        try:
            async for _ in response.aiter_bytes():
                pass
        finally:
            await response.aclose()

    with pytest.raises(httpx.ReadTimeout):
        run(go)


def profile(base_url: str) -> Profile:
    return Profile(
        name="p",
        home=Path("/nonexistent"),
        model="m",
        provider="custom",
        base_url=base_url,
        api_key=None,
        persona_source="",
    )


def test_a_provider_that_answers_zstd_when_offered_is_understood(up: LiveServer) -> None:
    """aiohttp offers every encoding it can decode (zstd with ``backports.zstd``, always
    on Python 3.14), but the bytes are decoded by httpx, which reads zstd only with the
    ``zstandard`` package. We offer only what httpx decodes, so a provider that prefers
    zstd answers with something we read: the answer, not a 502."""

    async def call() -> dict[str, Any]:
        upstream = Upstream(Settings(Path("/nonexistent"), Path("/nonexistent")))
        try:
            return await upstream.create_chat_completion(profile(up.url + "/v1"), {"messages": []})
        finally:
            await upstream.aclose()

    assert asyncio.run(call())["choices"] == COMPLETION["choices"]


def test_upstream_maps_the_real_transports_failures() -> None:
    async def call(base_url: str) -> None:
        upstream = Upstream(
            Settings(Path("/nonexistent"), Path("/nonexistent"), timeouts=Timeouts(connect=0.5, read=0.2))
        )
        try:
            await upstream.create_chat_completion(profile(base_url), {"messages": []})
        finally:
            await upstream.aclose()

    app = Starlette(routes=[Route("/v1/chat/completions", slow_headers, methods=["POST"])])
    with LiveServer(app) as slow:
        with pytest.raises(UpstreamTimeoutError):
            asyncio.run(call(slow.url + "/v1"))
    with pytest.raises(UpstreamUnavailableError):
        asyncio.run(call(slow.url + "/v1"))  # the server has stopped: refused
