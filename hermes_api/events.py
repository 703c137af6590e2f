"""The Responses API stream: chat-completion chunks in, the nine Responses events out.

Order and framing as openai-wire.md lists them (and the SDK's ``responses.stream()``
helper needs): ``event: <type>`` plus a JSON ``data:`` with the same ``type`` and an
increasing ``sequence_number``; no ``[DONE]``.

    1 response.created         2 response.in_progress       3 response.output_item.added
    4 response.content_part.added                           5 response.output_text.delta × N
    6 response.output_text.done                             7 response.content_part.done
    8 response.output_item.done                             9 response.completed

A response cut at the token limit also ends with ``response.completed``, its response
``status: "incomplete"`` with ``incomplete_details`` (OpenAI sends ``response.incomplete``
there, which the SDK's ``get_final_response()`` rejects; small local models hit
``max_output_tokens`` often, and the contract lists nine events). A failure after the
first byte ends the stream with ``response.failed`` carrying ``error{code, message}``
(STYLE.md 7). ``finish`` (the store write) runs before the last event, so a client that
saw the final event can retrieve the response.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from . import response_objects
from .errors import HermesAPIError, ServerError, stream_failure

logger = logging.getLogger("hermes_api")

Finish = Callable[[dict[str, Any]], Awaitable[None]]


class EventWriter:
    """Frames events with one increasing ``sequence_number``, from 0."""

    def __init__(self) -> None:
        self._sequence = itertools.count()

    def __call__(self, type_: str, **data: Any) -> bytes:
        payload = {"type": type_, "sequence_number": next(self._sequence), **data}
        return b"event: " + type_.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def _text_deltas(chunk: dict[str, Any], state: dict[str, Any]) -> list[str]:
    """The content deltas of choice 0 in ``chunk``; notes finish_reason and usage."""
    if isinstance(chunk.get("usage"), dict):
        state["usage"] = chunk["usage"]
    deltas = []
    for choice in chunk.get("choices") or ():
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            continue
        state["finish_reason"] = choice.get("finish_reason") or state.get("finish_reason")
        delta = choice.get("delta")
        content = delta.get("content") if isinstance(delta, dict) else None
        if isinstance(content, str) and content:
            deltas.append(content)
    return deltas


async def response_events(
    batches: AsyncIterator[list[dict[str, Any]]], draft: dict[str, Any], finish: Finish
) -> AsyncIterator[bytes]:
    """The SSE body for one streamed response, from batches of chat chunks
    (``turns.batches``: each batch's deltas go out in one write). ``draft`` is the
    in-progress response object; ``finish`` receives the final (or failed) response
    before it is sent."""
    event = EventWriter()
    message_id = response_objects.new_id("msg")
    where = {"item_id": message_id, "output_index": 0, "content_index": 0}
    yield event("response.created", response=draft)
    yield event("response.in_progress", response=draft)
    item = {"id": message_id, "type": "message", "role": "assistant", "status": "in_progress", "content": []}
    yield event("response.output_item.added", output_index=0, item=item)
    empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    yield event("response.content_part.added", **where, part=empty)
    parts: list[str] = []
    state: dict[str, Any] = {}
    try:
        async for batch in batches:
            out = []
            for chunk in batch:
                if not isinstance(chunk, dict):
                    continue  # a ToolEvent: tool items come with function calling's output list
                for delta in _text_deltas(chunk, state):
                    parts.append(delta)
                    out.append(event("response.output_text.delta", **where, delta=delta, logprobs=[]))
            if out:
                yield b"".join(out)
    except Exception as exc:  # after the first byte: a response.failed, which ends it
        yield await _failed(event, draft, stream_failure(exc, "responses stream"), finish)
        return
    text, reason, usage = "".join(parts), state.get("finish_reason"), state.get("usage")
    final = response_objects.finished(draft, message_id=message_id, text=text, finish_reason=reason, chat_usage=usage)
    message = final["output"][0]
    yield event("response.output_text.done", **where, text=message["content"][0]["text"], logprobs=[])
    yield event("response.content_part.done", **where, part=message["content"][0])
    yield event("response.output_item.done", output_index=0, item=message)
    try:
        await finish(final)
    except Exception:
        logger.exception("could not store response %s", final["id"])
        error = ServerError("The response could not be stored; see the server log.")
        yield event("response.failed", response=response_objects.failed(draft, error))
        return
    yield event("response.completed", response=final)


async def _failed(event: EventWriter, draft: dict[str, Any], exc: HermesAPIError, finish: Finish) -> bytes:
    response = response_objects.failed(draft, exc)
    try:
        await finish(response)
    except Exception:
        logger.exception("could not store failed response %s", response["id"])
    return event("response.failed", response=response)
