"""``sse.EventDecoder``: SSE parsing (WHATWG) however the bytes are split across reads,
and ``turns.batches``: chunks grouped as they arrived."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from hermes_api.app import create_app
from hermes_api.sse import PING, EventDecoder, EventStreamResponse
from hermes_api.turns import batches

STREAM = (
    b": a comment\n"
    b"data: one\n\n"
    b"event: ignored\ndata:two\nid: 7\n\n"
    b"data: three-a\ndata: three-b\n\n"
    b"data\n\n"
    b"\n\n"  # blank lines without data dispatch nothing
    b"retry: 10\n\n"
    b"data:  four\n\n"
    b"datum: not data\ndata: five\n\n"
    b"data: [DONE]\n\n"
    b"data: never dispatched"  # no blank line after it
)
EVENTS = [b"one", b"two", b"three-a\nthree-b", b"", b" four", b"five", b"[DONE]"]


def decode(parts: list[bytes]) -> list[bytes]:
    decoder = EventDecoder()
    return [event for part in parts for event in decoder.feed(part)]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_every_split_gives_the_same_events(newline: bytes) -> None:
    stream = STREAM.replace(b"\n", newline)
    assert decode([stream]) == EVENTS
    assert decode([stream[i : i + 1] for i in range(len(stream))]) == EVENTS
    for at in range(len(stream) + 1):
        assert decode([stream[:at], stream[at:]]) == EVENTS, at
    rng = random.Random(6)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(stream)), 5))
        parts = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        assert decode(parts) == EVENTS


def test_a_read_returns_only_the_events_it_completes() -> None:
    decoder = EventDecoder()
    assert decoder.feed(b"data: a\n\ndata: b\n\nda") == [b"a", b"b"]
    assert decoder.feed(b"ta: c\n") == []
    assert decoder.feed(b"\n") == [b"c"]


def test_batches_fall_back_to_one_chunk_each() -> None:
    async def chunks() -> AsyncIterator[dict]:
        for i in range(3):
            yield {"i": i}

    async def collect() -> list[list[dict]]:
        return [batch async for batch in batches(chunks())]

    assert asyncio.run(collect()) == [[{"i": 0}], [{"i": 1}], [{"i": 2}]]


class FakeClient:
    """ASGI ``receive``/``send`` of one client: records what is sent; ``leave()`` makes
    ``receive`` answer ``http.disconnect``."""

    def __init__(self) -> None:
        self.sent: list[dict] = []
        self._gone = asyncio.Event()

    def leave(self) -> None:
        self._gone.set()

    async def receive(self) -> dict:
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        self.sent.append(message)

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


async def pieces(log: list[str], delays: list[float]) -> AsyncIterator[bytes]:
    try:
        for i, delay in enumerate(delays):
            await asyncio.sleep(delay)
            yield f"data: {i}\n\n".encode()
    finally:
        log.append("closed")


def test_event_stream_sends_pieces_then_ends() -> None:
    client, log = FakeClient(), []

    async def go() -> None:
        await EventStreamResponse(pieces(log, [0, 0]), ping=5)({"type": "http"}, client.receive, client.send)

    asyncio.run(go())
    start = client.sent[0]
    assert start["status"] == 200
    assert dict(start["headers"])[b"content-type"] == b"text/event-stream; charset=utf-8"
    assert dict(start["headers"])[b"cache-control"] == b"no-store"
    assert client.body == b"data: 0\n\ndata: 1\n\n"
    assert client.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert log == ["closed"]


def test_event_stream_pings_while_quiet() -> None:
    client, log = FakeClient(), []

    async def go() -> None:
        await EventStreamResponse(pieces(log, [0, 0.35]), ping=0.1)({"type": "http"}, client.receive, client.send)

    asyncio.run(go())
    assert client.body.startswith(b"data: 0\n\n" + PING + PING)
    assert client.body.endswith(PING + b"data: 1\n\n")


def test_event_stream_stops_when_the_client_leaves() -> None:
    client, log = FakeClient(), []

    async def go() -> float:
        loop = asyncio.get_running_loop()
        loop.call_later(0.1, client.leave)
        began = loop.time()
        await EventStreamResponse(pieces(log, [0, 30]), ping=0)({"type": "http"}, client.receive, client.send)
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
        return loop.time() - began

    assert asyncio.run(go()) < 5  # not the 30 s the next piece would take
    assert log == ["closed"]  # the body iterator (and what it holds upstream) is closed
    assert client.body == b"data: 0\n\n"  # no end-of-body message to a client that is gone


def test_pings_never_overlap_a_send_in_progress() -> None:
    """ASGI allows one ``send`` at a time. A client that reads slowly keeps a send of the
    body waiting (uvicorn waits for its write buffer to drain), for longer than the ping
    interval; the ping task must not send meanwhile, and after it the stream goes on."""
    client, log = FakeClient(), []
    overlaps, in_send = [], 0
    released = asyncio.Event()

    async def slow_send(message: dict) -> None:
        nonlocal in_send
        in_send += 1
        overlaps.append(in_send > 1)
        try:
            if message.get("body") == b"data: 0\n\n":
                await released.wait()  # the client does not read for a while
            await client.send(message)
        finally:
            in_send -= 1

    async def go() -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(0.3, released.set)  # 30 ping intervals
        await EventStreamResponse(pieces(log, [0, 0.35]), ping=0.01)({"type": "http"}, client.receive, slow_send)

    asyncio.run(go())
    assert not any(overlaps)
    assert client.body.startswith(b"data: 0\n\n") and client.body.endswith(PING + b"data: 1\n\n")
    assert PING in client.body, "pings go on once the slow send is over"


def test_a_client_leaving_mid_stream_closes_the_upstream_request(live, make_settings, home) -> None:
    """Under uvicorn: the client drops a stream whose provider is still talking; the
    provider sees its request closed at once, not when its answer would have ended."""
    closed: list[float] = []

    async def chat(request: Request) -> StreamingResponse:
        async def events() -> AsyncIterator[bytes]:
            try:
                for i in range(200):
                    delta = {"index": 0, "delta": {"content": f"{i} "}, "finish_reason": None}
                    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "choices": [delta]}
                    yield b"data: " + orjson.dumps(chunk) + b"\n\n"
                    await asyncio.sleep(0.05)
                yield b"data: [DONE]\n\n"
            finally:
                closed.append(time.monotonic())

        return StreamingResponse(events(), media_type="text/event-stream")

    provider = live(Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])]))
    home.add("slow", model={"default": "m", "provider": "custom", "base_url": provider.url + "/v1"})
    server = live(create_app(make_settings(expose=["slow"], default_profile="slow"), environ={}))
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.Client(base_url=server.url, timeout=10) as client:
        with client.stream("POST", "/v1/chat/completions", json=body) as answer:
            first = next(line for line in answer.iter_lines() if line.startswith("data: "))
            left = time.monotonic()
    assert '"content":"0 "' in first
    deadline = time.monotonic() + 5
    while not closed and time.monotonic() < deadline:
        time.sleep(0.02)
    assert closed and closed[0] - left < 2  # the whole answer would take 10 s
