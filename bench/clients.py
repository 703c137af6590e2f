"""The HTTP client layer alone: CPU per request of the ways to call the upstream.

One process on the gateway CPU calls nginx's fixed ``chat.completion`` (POST, read the
body, parse it with orjson), sequentially and 32 at a time, through:

- ``httpx.AsyncClient`` over httpx-aiohttp's transport (the floor passthrough's stack);
- hermes-api's own ``transport.AiohttpTransport`` as ``upstream.py`` uses it;
- raw aiohttp (the limit for an aiohttp-based client).

CPU seconds of this process (``time.process_time``) per request, in µs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import httpx
import orjson

from . import fixtures

Call = Callable[[], Awaitable[Any]]


async def _cpu_per_request(call: Call, concurrency: int, count: int) -> float:
    for _ in range(200):
        await call()
    per_worker = max(1, count // concurrency)

    async def worker() -> None:
        for _ in range(per_worker):
            await call()

    began = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.process_time() - began) / (per_worker * concurrency) * 1e6


async def measure(port: int, rounds: int = 3, count: int = 3000) -> dict[str, dict[str, float]]:
    """µs of CPU per request: {client: {"c=1": median, "c=32": median}}."""
    from httpx_aiohttp import AiohttpTransport as HttpxAiohttpTransport

    from hermes_api.transport import AiohttpTransport

    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    parsed = httpx.URL(url)
    body = orjson.dumps(fixtures.chat_request("bench"))
    headers = {"content-type": "application/json", "authorization": "Bearer sk-bench"}
    timeout = httpx.Timeout(60).as_dict()
    client = httpx.AsyncClient(
        transport=HttpxAiohttpTransport(client=lambda: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))),
        timeout=60,
    )
    ours = AiohttpTransport()
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def via_client() -> Any:
        response = await client.send(client.build_request("POST", url, content=body, headers=headers))
        return orjson.loads(response.content)

    async def via_transport() -> Any:
        request = httpx.Request("POST", parsed, content=body, headers=headers, extensions={"timeout": timeout})
        response = await ours.handle_async_request(request)
        try:
            await response.aread()
        finally:
            await response.aclose()
        return orjson.loads(response.content)

    async def via_aiohttp() -> Any:
        async with session.post(url, data=body, headers=headers) as response:
            return orjson.loads(await response.read())

    calls = {
        "httpx.AsyncClient + httpx-aiohttp": via_client,
        "hermes-api transport.AiohttpTransport": via_transport,
        "raw aiohttp": via_aiohttp,
    }
    samples: dict[str, dict[str, list[float]]] = {name: {"c=1": [], "c=32": []} for name in calls}
    try:
        for _ in range(rounds):
            for name, call in calls.items():
                samples[name]["c=1"].append(await _cpu_per_request(call, 1, count))
                samples[name]["c=32"].append(await _cpu_per_request(call, 32, count))
    finally:
        await client.aclose()
        await ours.aclose()
        await session.close()
    return {name: {k: sorted(v)[len(v) // 2] for k, v in by.items()} for name, by in samples.items()}


def run(port: int, log: Any = print) -> dict[str, dict[str, float]]:
    import os

    import uvloop

    from .procs import GATEWAY_CPU

    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {GATEWAY_CPU})
    figures = uvloop.run(measure(port))
    for name, by in figures.items():
        log(f"{name:40} c=1 {by['c=1']:6.1f} µs/req   c=32 {by['c=32']:6.1f} µs/req")
    return figures
