"""A slow OpenAI-compatible upstream: every chat completion is streamed as the fixture's
words, one event every ``INTERVAL`` seconds, then usage and ``[DONE]``.

``python bench/slow_upstream.py PORT SECONDS`` (SECONDS: the length of one stream).
For the concurrency benchmark: a thousand of these open at once through one gateway.
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web

from bench.fixtures import stream_events


async def chat_completions(request: web.Request) -> web.StreamResponse:
    await request.read()
    events = stream_events()
    interval = request.app["seconds"] / len(events)
    response = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
    await response.prepare(request)
    for event in events:
        await asyncio.sleep(interval)
        await response.write(event)
    await response.write_eof()
    return response


def main() -> None:
    port, seconds = int(sys.argv[1]), float(sys.argv[2])
    app = web.Application()
    app["seconds"] = seconds
    app.router.add_post("/v1/chat/completions", chat_completions)
    web.run_app(app, host="127.0.0.1", port=port, backlog=4096, access_log=None, print=None)


if __name__ == "__main__":
    main()
