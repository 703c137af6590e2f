"""``POST /v1/chat/completions``, stream and non-stream (DESIGN.md §4, openai-wire.md).

The handler validates only the fields the server reads (``messages``, ``stream``,
``stream_options``); every other field passes upstream untouched, ``tools`` included.

Session continuity, as Hermes's own API server has it: with ``X-Hermes-Session-Id``
the earlier turns of that session (same key, same profile) are put before the
request's messages, and after a successful answer the request's non-system messages
and the answer are stored as the session's next turn. The header is echoed back.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ..context import current_profile
from ..errors import InvalidValueError, UpstreamBadResponseError, store_failure, stream_failure
from ..headers import header_value
from ..persona import SYSTEM_ROLES
from ..shutdown import Drain
from ..sse import EventStreamResponse
from ..turns import batches
from . import JSONResponse

logger = logging.getLogger("hermes_api")

DONE = b"data: [DONE]\n\n"
SESSION_HEADER = "x-hermes-session-id"
TOO_DEEP = "The upstream provider's answer is nested too deeply to pass on."
NOT_STORED = "The answer could not be stored in the session; see the server log."

AnswerHook = Callable[[dict[str, Any]], Awaitable[None]]


def validate_chat_request(body: dict[str, Any]) -> bool:
    """Check the fields the server reads (and ``tools``' shape); returns ``include_usage``. Raises
    ``InvalidValueError`` with ``param`` naming the field."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidValueError("'messages' must be a non-empty array of messages.", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidValueError(f"messages[{i}] must be an object with a string 'role'.", param=f"messages[{i}]")
        content = message.get("content")
        if content is not None and not isinstance(content, str) and not _is_parts(content):
            raise InvalidValueError(
                f"messages[{i}].content must be a string or an array of content parts (objects).",
                param=f"messages[{i}].content",
            )
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidValueError("'stream' must be a boolean.", param="stream")
    tools = body.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        # Passed on unchanged, but a provider would refuse this shape less clearly.
        raise InvalidValueError("'tools' must be an array of tool objects.", param="tools")
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


def _is_parts(content: object) -> bool:
    return isinstance(content, list) and all(isinstance(part, dict) for part in content)


def sse(data: dict[str, Any]) -> bytes:
    """One ``data:`` event. Raises ``UpstreamBadResponseError`` for a provider chunk
    nested too deeply to serialise (orjson reads 1024 levels but writes 254)."""
    try:
        return b"data: " + orjson.dumps(data) + b"\n\n"
    except orjson.JSONEncodeError:
        raise UpstreamBadResponseError(TOO_DEEP) from None


async def chat_events(
    batches: AsyncIterator[list[dict[str, Any]]], include_usage: bool, on_answer: AnswerHook | None = None
) -> AsyncIterator[bytes]:
    """The client's SSE body: every chunk with one ``id`` and ``created``, the first
    delta with ``role: assistant``; chunks without choices dropped; with
    ``include_usage`` every chunk has ``usage: null`` and the provider's usage comes
    in one last ``choices: []`` chunk (when the provider sent one). A failure after the
    first byte becomes ``data: {"error": ...}``; ``[DONE]`` always ends the stream.
    Each batch of upstream chunks (``turns.batches``) becomes one piece of the body.
    ``on_answer`` gets the assistant message (its text) after a stream that ended well,
    before ``[DONE]``."""
    ident = f"chatcmpl-{uuid.uuid4().hex}"
    created, model, usage, first = int(time.time()), None, None, True
    text: list[str] = []
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
                text.extend(_content(choices))
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
    except Exception as exc:  # after the first byte: said in the stream, which then ends
        yield sse(stream_failure(exc, "chat stream").to_dict())
        yield DONE
        return
    if on_answer is not None:
        try:
            await on_answer({"role": "assistant", "content": "".join(text)})
        except Exception as exc:
            yield sse(store_failure(exc, NOT_STORED, "could not store the session turn").to_dict())
    yield DONE


def _content(choices: list[Any]) -> list[str]:
    """The content deltas of choice 0."""
    return [
        choice["delta"]["content"]
        for choice in choices
        if isinstance(choice, dict)
        and choice.get("index", 0) == 0
        and isinstance(choice.get("delta"), dict)
        and isinstance(choice["delta"].get("content"), str)
    ]


async def create_chat_completion(request: Request, body: dict[str, Any]) -> Response:
    """Run one chat turn under the bound profile; ``model`` in the answer is the
    profile's id. Errors before the first byte are JSON (§5). With
    ``X-Hermes-Session-Id`` (sanitised like the routing headers, else 400) the
    session's earlier turns go first and this turn is stored after it succeeds."""
    include_usage = validate_chat_request(body)
    profile, state = current_profile(), request.state
    drain: Drain = state.drain
    session_id = header_value(request.headers, SESSION_HEADER)
    on_answer: AnswerHook | None = None
    headers = {}
    if session_id:
        store, owner = state.store, request.user.owner
        earlier = await store.session_messages(owner, profile.name, session_id)
        turn = [m for m in body["messages"] if m["role"] not in SYSTEM_ROLES]
        body = {**body, "messages": [*earlier, *body["messages"]]}
        headers[SESSION_HEADER] = request.headers[SESSION_HEADER]  # the bytes as sent (UTF-8 intact)

        async def on_answer(answer: dict[str, Any]) -> None:
            await store.append_session(owner, profile.name, session_id, [*turn, answer])

    if body.get("stream"):
        chunks = await drain.run(state.resources.enter_async_context(state.turns.stream(profile, body)))
        return EventStreamResponse(
            chat_events(drain.iterate(batches(chunks)), include_usage, on_answer),
            ping=state.settings.sse_keepalive,
            headers=headers,
        )
    completion = await drain.run(state.turns.complete(profile, body))
    try:
        response = JSONResponse(completion, headers=headers)
    except orjson.JSONEncodeError:
        raise UpstreamBadResponseError(TOO_DEEP) from None
    if on_answer is not None:  # only an answer the client can be given joins the session
        try:
            await on_answer(_answer(completion))
        except Exception as exc:
            # An error of ours, not an escaped exception: uvicorn would close the connection.
            raise store_failure(exc, NOT_STORED, "could not store the session turn") from None
    return response


def _answer(completion: dict[str, Any]) -> dict[str, Any]:
    """The assistant message of a ``chat.completion`` as it goes into a session."""
    choice = completion["choices"][0] if completion["choices"] else {}
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        return {"role": "assistant", "content": ""}
    return {k: v for k, v in message.items() if k in ("role", "content", "tool_calls", "refusal") and v is not None}
