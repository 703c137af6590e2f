"""How one turn runs: a profile and an OpenAI chat request in, an answer out (DESIGN.md §6).

``TurnRunner`` is the seam: routing, auth and the wire format only ever talk to it, so a
second way of running a turn (the real Hermes agent, with its tools and skills) can sit
beside ``UpstreamTurns`` without touching them. ``UpstreamTurns`` runs the turn as one
call to the profile's provider: the persona becomes the head system message, the
profile's model id replaces the client's ``model``, everything else passes through.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

from .persona import with_persona
from .profiles import Profile
from .upstream import ChatStream, Upstream

ChatRequest = dict[str, Any]
Chunk = dict[str, Any]


class TurnRunner(Protocol):
    """Runs chat turns for a profile. Both methods raise ``errors.UpstreamError``."""

    async def complete(self, profile: Profile, request: ChatRequest) -> dict[str, Any]:
        """A ``chat.completion`` object; its ``model`` is the profile's name."""
        ...

    def stream(self, profile: Profile, request: ChatRequest) -> AbstractAsyncContextManager[AsyncIterator[Chunk]]:
        """Entering fails before the first byte; the iterator yields
        ``chat.completion.chunk`` objects (``model`` = the profile's name) and raises
        after it. Leaving releases the upstream connection. The iterator may also
        have a ``batches()`` method (see ``batches``)."""
        ...


def batches(chunks: AsyncIterator[Chunk]) -> AsyncIterator[list[Chunk]]:
    """``chunks`` in the groups they arrived in together (one list per network read of
    the upstream), when the iterator offers ``batches()``; else one chunk per list.
    Senders use it to write a burst of chunks at once instead of one write each."""
    grouped = getattr(chunks, "batches", None)
    return grouped() if grouped is not None else _one_by_one(chunks)


async def _one_by_one(chunks: AsyncIterator[Chunk]) -> AsyncIterator[list[Chunk]]:
    async for chunk in chunks:
        yield [chunk]


def upstream_payload(profile: Profile, request: ChatRequest) -> ChatRequest:
    """The request as the profile's provider gets it: persona first, the profile's
    model, its ``max_tokens`` default when the client set no limit; the rest unchanged."""
    payload = {**request, "model": profile.model, "messages": with_persona(profile.persona, request["messages"])}
    if profile.max_tokens and "max_tokens" not in request and "max_completion_tokens" not in request:
        payload["max_tokens"] = profile.max_tokens
    return payload


class UpstreamTurns:
    """A turn is one chat-completions call to the profile's provider."""

    def __init__(self, upstream: Upstream) -> None:
        self._upstream = upstream

    async def complete(self, profile: Profile, request: ChatRequest) -> dict[str, Any]:
        answer = await self._upstream.create_chat_completion(profile, upstream_payload(profile, request))
        answer["model"] = profile.name
        return answer

    @asynccontextmanager
    async def stream(self, profile: Profile, request: ChatRequest) -> AsyncIterator[AsyncIterator[Chunk]]:
        payload = upstream_payload(profile, request)
        async with self._upstream.stream_chat_completion(profile, payload) as chunks:
            yield _Relabelled(chunks, profile.name)


class _Relabelled:
    """An upstream stream's chunks with ``model`` set to the profile's name, one by one
    or in ``batches()``."""

    def __init__(self, chunks: ChatStream, name: str) -> None:
        self._chunks = chunks
        self._name = name
        self._each: AsyncIterator[Chunk] | None = None

    async def batches(self) -> AsyncIterator[list[Chunk]]:
        async for batch in self._chunks.batches():
            for chunk in batch:
                chunk["model"] = self._name
            yield batch

    def __aiter__(self) -> _Relabelled:
        return self

    async def __anext__(self) -> Chunk:
        if self._each is None:
            self._each = self._one_by_one()
        return await anext(self._each)

    async def _one_by_one(self) -> AsyncIterator[Chunk]:
        async for batch in self.batches():
            for chunk in batch:
                yield chunk
