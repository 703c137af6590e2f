"""The floor: a minimal passthrough on hermes-api's own stack, with no auth, routing or
rewriting: Starlette, one httpx.AsyncClient over httpx-aiohttp's transport, uvicorn.

``python bench/passthrough.py PORT UPSTREAM`` forwards every POST to ``UPSTREAM`` +
path and streams SSE answers back as they come. Whatever hermes-api costs above this is
the price of its own work (auth, routing, persona, re-serialising).
"""

from __future__ import annotations

import sys

import aiohttp
import httpx
import uvicorn
from httpx_aiohttp import AiohttpTransport
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


def create_app(upstream: str) -> Starlette:
    transport = AiohttpTransport(client=lambda: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)))
    client = httpx.AsyncClient(transport=transport, timeout=60)

    async def forward(request: Request) -> Response:
        sent = client.build_request(
            "POST",
            upstream + request.url.path,
            content=await request.body(),
            headers={"content-type": "application/json"},
        )
        answer = await client.send(sent, stream=True)
        media_type = answer.headers.get("content-type", "application/json")
        if media_type.startswith("text/event-stream"):
            return StreamingResponse(
                answer.aiter_raw(), answer.status_code, media_type=media_type, background=BackgroundTask(answer.aclose)
            )
        body = await answer.aread()
        await answer.aclose()
        return Response(body, answer.status_code, media_type=media_type)

    return Starlette(routes=[Route("/{path:path}", forward, methods=["POST"])])


if __name__ == "__main__":
    port, upstream = int(sys.argv[1]), sys.argv[2].rstrip("/")
    uvicorn.run(create_app(upstream), host="127.0.0.1", port=port, log_level="warning", server_header=False)
