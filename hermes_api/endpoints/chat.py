"""``POST /v1/chat/completions``, stream and non-stream (DESIGN.md §4, openai-wire.md).

The handler validates only the fields the server reads (``messages``, ``stream``,
``stream_options``); every other field passes upstream untouched, ``tools`` included.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ..context import current_profile
from ..errors import HermesAPIError, InvalidValueError
from ..sse import EventStreamResponse
from ..turns import batches
from . import JSONResponse

logger = logging.getLogger("hermes_api")

DONE = b"data: [DONE]\n\n"


def validate_chat_request(body: dict[str, Any]) -> bool:
    """Check the fields the server reads; returns ``include_usage``. Raises
    ``InvalidValueError`` with ``param`` naming the field."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidValueError("'messages' must be a non-empty array of messages.", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidValueError(f"messages[{i}] must be an object with a string 'role'.", param=f"messages[{i}]")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise InvalidValueError(
                f"messages[{i}].content must be a string or an array of content parts.",
                param=f"messages[{i}].content",
            )
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidValueError("'stream' must be a boolean.", param="stream")
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise InvalidValueError("'stream_options' must be an object.", param="stream_options")
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise InvalidValueError(
            "'stream_options.include_usage' must be a boolean.", param="stream_options.include_usage"
        )
    return include_usage and stream is True


def sse(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


async def chat_events(batches: AsyncIterator[list[dict[str, Any]]], include_usage: bool) -> AsyncIterator[bytes]:
    """The client's SSE body: every chunk with one ``id`` and ``created``, the first
    delta with ``role: assistant``; chunks without choices dropped; with
    ``include_usage`` every chunk has ``usage: null`` and the provider's usage comes
    in one last ``choices: []`` chunk (when the provider sent one). A failure after the
    first byte becomes ``data: {"error": ...}``; ``[DONE]`` always ends the stream.
    Each batch of upstream chunks (``turns.batches``) becomes one piece of the body."""
    ident = f"chatcmpl-{uuid.uuid4().hex}"
    created, model, usage, first = int(time.time()), None, None, True
    try:
        async for batch in batches:
            out = []
            for chunk in batch:
                if first:
                    ident, created = chunk.get("id") or ident, chunk.get("created") or created
                model = chunk.get("model")
                usage = chunk.get("usage") or usage
                choices = chunk.get("choices")
                if not choices:
                    continue
                chunk.update(id=ident, created=created, object="chat.completion.chunk")
                if first:
                    for choice in choices:
                        if isinstance(choice, dict) and isinstance(choice.get("delta"), dict):
                            choice["delta"].setdefault("role", "assistant")
                    first = False
                if include_usage:
                    chunk["usage"] = None
                else:
                    chunk.pop("usage", None)
                out.append(sse(chunk))
            if out:
                yield b"".join(out)
        if include_usage and usage:
            yield sse(
                {
                    "id": ident,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
            )
    except HermesAPIError as exc:
        logger.warning("stream failed after the first byte: %s (%s)", exc.code, exc.message)
        yield sse(exc.to_dict())
    yield DONE


async def create_chat_completion(request: Request, body: dict[str, Any]) -> Response:
    """Run one chat turn under the bound profile; ``model`` in the answer is the
    profile's id. Errors before the first byte are JSON (§5)."""
    include_usage = validate_chat_request(body)
    profile, turns = current_profile(), request.state.turns
    if body.get("stream"):
        chunks = await request.state.resources.enter_async_context(turns.stream(profile, body))
        return EventStreamResponse(
            chat_events(batches(chunks), include_usage), ping=request.state.settings.sse_keepalive
        )
    return JSONResponse(await turns.complete(profile, body))
