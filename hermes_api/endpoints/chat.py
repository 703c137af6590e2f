"""``POST /v1/chat/completions``, stream and non-stream (docs/contract.md, "Chat completions").

The handler validates only the fields the server reads (``messages``, ``stream``,
``stream_options``); every other field passes upstream untouched, ``tools`` included,
for direct profiles (an agent profile's own tools answer instead, and client ``tools``
never reach it). It builds a ``turns.Turn`` and renders what the profile's runner gives
back. With ``X-Hermes-Session-Id`` the runner continues that session (same key, same
profile; the header is echoed back); ``X-Hermes-Tool-Display`` says how tools the
server ran are shown (``tool_activity``).
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

from .. import tool_activity
from ..context import current_profile
from ..errors import InvalidValueError, UpstreamBadResponseError, stream_failure
from ..headers import header_value
from ..shutdown import Drain
from ..sse import EventStreamResponse
from ..tool_activity import ToolDisplay
from ..turns import StreamItem, ToolEvent, Turn, batches
from . import JSONResponse

logger = logging.getLogger("hermes_api")

DONE = b"data: [DONE]\n\n"
SESSION_HEADER = "x-hermes-session-id"
TOO_DEEP = "The upstream provider's answer is nested too deeply to pass on."


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
    batches: AsyncIterator[list[StreamItem]], include_usage: bool, display: ToolDisplay = "none"
) -> AsyncIterator[bytes]:
    """The client's SSE body: every chunk with one ``id`` and ``created``, the first
    delta with ``role: assistant``; chunks without choices dropped; with
    ``include_usage`` every chunk has ``usage: null`` and the provider's usage comes
    in one last ``choices: []`` chunk (when the provider sent one). Tools the server
    ran (``ToolEvent``) are shown as ``display`` says (``tool_activity``). A failure
    after the first byte becomes ``data: {"error": ...}``; ``[DONE]`` always ends the
    stream. Each batch of items (``turns.batches``) becomes one piece of the body."""
    chunks = _Chunks(include_usage)
    try:
        async for batch in batches:
            out = []
            for item in batch:
                if isinstance(item, ToolEvent):
                    out.extend(chunks.tool(item, display))
                elif (chunk := chunks.relay(item)) is not None:
                    out.append(sse(chunk))
            if out:
                yield b"".join(out)
        if include_usage and chunks.usage:
            yield sse(chunks.usage_chunk())
    except Exception as exc:  # after the first byte: said in the stream, which then ends
        yield sse(stream_failure(exc, "chat stream").to_dict())
    yield DONE


class _Chunks:
    """The state of one chat stream: its ``id``, ``created`` and ``model`` (the first
    chunk's), whether the role was sent, the provider's usage."""

    def __init__(self, include_usage: bool) -> None:
        self.include_usage = include_usage
        self.ident, self.created, self.model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), None
        self.usage: Any = None
        self.first = True

    def relay(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        """``chunk`` as the client gets it, or None when it has no choices."""
        if self.first:
            self.ident, self.created = chunk.get("id") or self.ident, chunk.get("created") or self.created
        self.model = chunk.get("model")
        self.usage = chunk.get("usage") or self.usage
        choices = chunk.get("choices")
        if not choices:
            return None
        chunk.update(id=self.ident, created=self.created, object="chat.completion.chunk")
        if self.first:
            for choice in choices:
                if isinstance(choice, dict) and isinstance(choice.get("delta"), dict):
                    choice["delta"].setdefault("role", "assistant")
            self.first = False
        if self.include_usage:
            chunk["usage"] = None
        else:
            chunk.pop("usage", None)
        return chunk

    def tool(self, event: ToolEvent, display: ToolDisplay) -> list[bytes]:
        """The pieces that show ``event``: Hermes's progress event, or Open WebUI's block
        as answer text once the tool has finished, or nothing."""
        if display == "hermes":
            return [tool_activity.progress_event(event)]
        if display == "openwebui" and event.status == "completed":
            delta = {"content": tool_activity.details_block(event)}
            chunk = {
                "id": self.ident,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
            }
            relayed = self.relay(chunk)
            return [sse(relayed)] if relayed is not None else []
        return []

    def usage_chunk(self) -> dict[str, Any]:
        return {"id": self.ident, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [], "usage": self.usage}  # fmt: skip


async def create_chat_completion(request: Request, body: dict[str, Any]) -> Response:
    """Run one chat turn under the bound profile; ``model`` in the answer is the
    profile's id. Errors before the first byte are JSON (§5). ``X-Hermes-Session-Id``
    (sanitised like the routing headers, else 400) continues that session; an unknown
    ``X-Hermes-Tool-Display`` is a 400 too. A delegated request continues the session
    ``delegation.Delegation.session`` names, whatever it sends; an agent turn whose
    profile may delegate gets its ``delegation.Grant``."""
    include_usage = validate_chat_request(body)
    state = request.state
    drain: Drain = state.drain
    display = tool_activity.tool_display(header_value(request.headers, tool_activity.HEADER))
    sent_session = header_value(request.headers, SESSION_HEADER)
    # A delegated turn continues the session its credential names, never one it picks.
    session_id = state.delegation.session(request.user) or sent_session or None
    profile = current_profile()
    grant = state.delegation.grant(request, profile, body["messages"], session_id)
    turn = Turn(profile, body, request.user.owner, session_id, grant)
    headers = {SESSION_HEADER: request.headers[SESSION_HEADER]} if sent_session else {}  # the bytes as sent
    if body.get("stream"):
        chunks = await drain.run(state.resources.enter_async_context(state.turns.stream(turn)))
        return EventStreamResponse(
            chat_events(drain.iterate(batches(chunks)), include_usage, display),
            ping=state.settings.sse_keepalive,
            headers=headers,
        )
    completion = await drain.run(state.turns.complete(turn))
    answer = completion.body
    if display == "openwebui" and completion.tools:
        _show_tools(answer, completion.tools)
    try:
        return JSONResponse(answer, headers=headers)
    except orjson.JSONEncodeError:
        raise UpstreamBadResponseError(TOO_DEEP) from None


def _show_tools(answer: dict[str, Any], tools: tuple[ToolEvent, ...]) -> None:
    """Open WebUI's blocks for ``tools`` before the answer text of choice 0."""
    message = answer["choices"][0]["message"] if answer.get("choices") else None
    if isinstance(message, dict):
        blocks = "".join(tool_activity.details_block(t) for t in tools)
        message["content"] = blocks + (message.get("content") or "")
