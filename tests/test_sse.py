"""``sse.EventDecoder``: SSE parsing (WHATWG) however the bytes are split across reads,
and ``turns.batches``: chunks grouped as they arrived."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest

from hermes_api.sse import EventDecoder
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
