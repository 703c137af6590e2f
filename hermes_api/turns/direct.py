"""DirectTurns: a turn is one chat-completions call to the profile's provider.

The persona becomes the head system message (``persona.with_persona``), the profile's
model id replaces the client's ``model``, its ``max_tokens`` applies when the client set
no limit; everything else passes through. With a session (``Turn.session_id``) the
session's earlier turns from the response store go first, and after an answer the
client can be given, the turn's non-system messages and the answer (with any
``tool_calls``) are stored as the session's next turn; for a stream, once it has ended
well, before ``[DONE]``. A turn that cannot be stored is never acknowledged: a 500.
A stream always asks the provider for its usage chunk.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson

from ..errors import UpstreamBadResponseError, store_failure
from ..persona import SYSTEM_ROLES, with_persona
from ..profiles import Profile
from ..store import ResponseStore
from ..upstream import ChatStream, Upstream
from . import ChatRequest, Chunk, Completion, Turn

logger = logging.getLogger("hermes_api")

Message = dict[str, Any]
NOT_STORED = "The answer could not be stored in the session; see the server log."
Store = Callable[[dict[str, Any]], Awaitable[None]]


def upstream_payload(profile: Profile, request: ChatRequest) -> ChatRequest:
    """The request as the profile's provider gets it: persona first, the profile's
    model, its ``max_tokens`` default when the client set no limit; the rest unchanged."""
    payload = {**request, "model": profile.model, "messages": with_persona(profile.persona, request["messages"])}
    if profile.max_tokens and "max_tokens" not in request and "max_completion_tokens" not in request:
        payload["max_tokens"] = profile.max_tokens
    return payload


class DirectTurns:
    """``TurnRunner`` over the pooled upstream client; sessions in ``store``."""

    def __init__(self, upstream: Upstream, store: ResponseStore) -> None:
        self._upstream = upstream
        self._store = store

    async def complete(self, turn: Turn) -> Completion:
        request, keep = await self._session(turn)
        answer = await self._upstream.create_chat_completion(turn.profile, upstream_payload(turn.profile, request))
        answer["model"] = turn.profile.name
        if keep is not None:
            try:  # only an answer the client can be given joins the session
                orjson.dumps(answer)
            except orjson.JSONEncodeError:
                raise UpstreamBadResponseError(
                    "The upstream provider's answer is nested too deeply to pass on."
                ) from None
            await keep(answer_message(answer))
        return Completion(answer)

    @asynccontextmanager
    async def stream(self, turn: Turn) -> AsyncIterator[AsyncIterator[Chunk]]:
        request, keep = await self._session(turn)
        payload = upstream_payload(turn.profile, request)
        # Always the provider's usage chunk (``stream_options.include_usage``, OpenAI's
        # chat-completions reference): usage rows and token metrics need it; the chat
        # endpoint gives it to the client only when the client asked for it.
        options = request.get("stream_options")
        payload["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        async with self._upstream.stream_chat_completion(turn.profile, payload) as chunks:
            yield _Relabelled(chunks, turn.profile.name, keep)

    async def _session(self, turn: Turn) -> tuple[ChatRequest, Store | None]:
        """The request with the session's earlier turns first, and what stores this turn
        (None without a session)."""
        if turn.session_id is None:
            return turn.request, None
        owner, name, session = turn.owner, turn.profile.name, turn.session_id
        earlier = await self._store.session_messages(owner, name, session)
        messages = turn.request["messages"]
        new = [m for m in messages if m["role"] not in SYSTEM_ROLES]

        async def keep(answer: Message) -> None:
            try:
                await self._store.append_session(owner, name, session, [*new, answer])
            except Exception as exc:
                # An error of ours, not an escaped exception: uvicorn would close the connection.
                raise store_failure(exc, NOT_STORED, "could not store the session turn") from None

        return {**turn.request, "messages": [*earlier, *messages]}, keep


def answer_message(completion: dict[str, Any]) -> Message:
    """The assistant message of a ``chat.completion`` as it goes into a session."""
    choices = completion.get("choices") or [{}]
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    if not isinstance(message, dict):
        return {"role": "assistant", "content": ""}
    return {k: v for k, v in message.items() if k in ("role", "content", "tool_calls", "refusal") and v is not None}


class _Relabelled:
    """An upstream stream's chunks with ``model`` set to the profile's name, one by one
    or in ``batches()``; with ``keep``, the answer is collected and stored after the
    last chunk (``StreamedAnswer``)."""

    def __init__(self, chunks: ChatStream, name: str, keep: Store | None) -> None:
        self._chunks = chunks
        self._name = name
        self._keep = keep
        self._each: AsyncIterator[Chunk] | None = None

    async def batches(self) -> AsyncIterator[list[Chunk]]:
        answer = StreamedAnswer() if self._keep is not None else None
        async for batch in self._chunks.batches():
            for chunk in batch:
                chunk["model"] = self._name
                if answer is not None and chunk.get("choices"):
                    answer.add(chunk["choices"])
            yield batch
        if answer is not None and self._keep is not None:
            await self._keep(answer.message())

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


class StreamedAnswer:
    """The assistant message of a streamed answer (choice 0), from its deltas: the text,
    and the ``tool_calls`` fragments merged by their ``index`` (the first non-empty
    ``id`` and ``name``, every ``arguments`` piece joined), so a session's next turn
    replays the calls its ``tool`` messages answer."""

    __slots__ = ("text", "calls")

    def __init__(self) -> None:
        self.text: list[str] = []
        self.calls: dict[Any, dict[str, Any]] = {}

    def add(self, choices: list[Any]) -> None:
        for choice in choices:
            delta = choice.get("delta") if isinstance(choice, dict) and choice.get("index", 0) == 0 else None
            if not isinstance(delta, dict):
                continue
            if isinstance(delta.get("content"), str):
                self.text.append(delta["content"])
            for position, fragment in enumerate(delta.get("tool_calls") or ()):
                if isinstance(fragment, dict):
                    self._merge(fragment.get("index", position), fragment)

    def _merge(self, key: Any, fragment: dict[str, Any]) -> None:
        call = self.calls.setdefault(key, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        function = fragment.get("function") if isinstance(fragment.get("function"), dict) else {}
        if not call["id"] and isinstance(fragment.get("id"), str):
            call["id"] = fragment["id"]
        if not call["function"]["name"] and isinstance(function.get("name"), str):
            call["function"]["name"] = function["name"]
        if isinstance(function.get("arguments"), str):
            call["function"]["arguments"] += function["arguments"]

    def message(self) -> dict[str, Any]:
        """``{"role": "assistant", "content"}``, plus ``tool_calls`` when there were any
        (then ``content`` is left out when empty, as in a non-streamed answer)."""
        text = "".join(self.text)
        if not self.calls:
            return {"role": "assistant", "content": text}
        message: dict[str, Any] = {"role": "assistant", "tool_calls": list(self.calls.values())}
        if text:
            message["content"] = text
        return message
