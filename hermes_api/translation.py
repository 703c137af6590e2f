"""Responses API request → chat-completions request (docs/contract.md §4).

Every Responses turn runs through ``turns.TurnRunner`` as a chat completion, so it works
with any chat-only provider (llama.cpp, Ollama…): ``instructions`` become a system
message that ``persona.with_persona`` merges right after the persona; then the turns
rebuilt from ``previous_response_id``; then this ``input`` (its items: ``items``); the
function tools and the tool choice as chat ``tools`` (``tools``). The way back (chat
answer → ``response`` object) is ``response_objects``. Shapes: OpenAI's spec
(``CreateResponse``; openai-python ``types/responses/response_create_params.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from .errors import InvalidJSONError, InvalidValueError
from .items import input_items
from .tools import NO_TOOLS, ToolSettings, tool_settings

Item = dict[str, Any]
Message = dict[str, Any]

FORMATS = ("text", "json_object", "json_schema")
# Fields of the Responses request with no chat-completions twin: read here or dropped,
# never forwarded (a chat provider would reject them). Other fields pass through.
RESPONSES_FIELDS = frozenset(
    {
        "input", "instructions", "model", "previous_response_id", "store", "stream", "stream_options",
        "max_output_tokens", "temperature", "top_p", "metadata", "text", "tools", "tool_choice",
        "parallel_tool_calls", "include", "truncation", "reasoning", "max_tool_calls", "top_logprobs",
        "background", "conversation", "prompt", "context_management",
    }
)  # fmt: skip
UNSUPPORTED = {
    "background": "Background responses are not supported by hermes-api; omit 'background'.",
    "conversation": "The Conversations API is not supported by hermes-api; use 'previous_response_id'.",
    "prompt": "Stored prompt templates are not supported by hermes-api; send 'instructions' and 'input'.",
}
METADATA_LIMITS = (16, 64, 512)  # pairs, key characters, value characters (OpenAI's)


@dataclass(frozen=True, slots=True)
class ResponseRequest:
    """A validated ``POST /v1/responses`` body. ``items``: the input as items with ids
    (``items.input_items``); ``tools``: the tool fields, echoed and sent upstream;
    ``forwarded``: fields passed to the provider unchanged."""

    items: list[Item]
    instructions: str | None = None
    previous_response_id: str | None = None
    store: bool = True
    stream: bool = False
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    text: dict[str, Any] = field(default_factory=lambda: {"format": {"type": "text"}})
    tools: ToolSettings = NO_TOOLS
    forwarded: dict[str, Any] = field(default_factory=dict)


def _check(ok: bool, message: str, param: str) -> None:
    if not ok:
        raise InvalidValueError(message, param=param)


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high
    _check(ok, f"'{name}' must be a number from {low:g} to {high:g}.", name)
    return value


def _optional(body: dict[str, Any], name: str, kind: type, what: str) -> Any:
    value = body.get(name)
    _check(value is None or (isinstance(value, kind) and not (kind is int and isinstance(value, bool))), what, name)
    return value


def parse_request(body: dict[str, Any]) -> ResponseRequest:
    """Validate every field the server reads. Raises ``InvalidValueError`` with ``param``
    naming the field (``input[2]``, ``input[0].content[1]`` for items, ``tools[1]``), and
    ``InvalidJSONError`` for a ``text`` nested too deeply to echo back."""
    for name, message in UNSUPPORTED.items():
        _check(body.get(name) in (None, False), message, name)
    max_tokens = _optional(body, "max_output_tokens", int, "'max_output_tokens' must be an integer.")
    _check(max_tokens is None or max_tokens > 0, "'max_output_tokens' must be at least 1.", "max_output_tokens")
    previous = _optional(body, "previous_response_id", str, "'previous_response_id' must be a string.")
    return ResponseRequest(
        items=input_items(body.get("input")),
        instructions=_optional(body, "instructions", str, "'instructions' must be a string."),
        previous_response_id=previous or None,
        store=_optional(body, "store", bool, "'store' must be a boolean.") is not False,
        stream=_optional(body, "stream", bool, "'stream' must be a boolean.") is True,
        max_output_tokens=max_tokens,
        temperature=_number(body, "temperature", 0, 2),
        top_p=_number(body, "top_p", 0, 1),
        metadata=_metadata(body.get("metadata")),
        text=_text(body.get("text")),
        tools=tool_settings(body),
        forwarded={k: v for k, v in body.items() if k not in RESPONSES_FIELDS},
    )


def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    pairs, key_chars, value_chars = METADATA_LIMITS
    _check(
        isinstance(value, dict)
        and len(value) <= pairs
        and all(isinstance(k, str) and len(k) <= key_chars for k in value)
        and all(isinstance(v, str) and len(v) <= value_chars for v in value.values()),
        f"'metadata' must be an object of at most {pairs} string values "
        f"(keys up to {key_chars} characters, values up to {value_chars}).",
        "metadata",
    )
    return value


def _text(value: Any) -> dict[str, Any]:
    if value is None:
        return {"format": {"type": "text"}}
    _check(isinstance(value, dict), "'text' must be an object.", "text")
    fmt = value.get("format", {"type": "text"})
    _check(
        isinstance(fmt, dict) and fmt.get("type") in FORMATS,
        f"'text.format.type' must be one of {', '.join(FORMATS)}.",
        "text.format",
    )
    if fmt["type"] == "json_schema":
        ok = isinstance(fmt.get("name"), str) and isinstance(fmt.get("schema"), dict)
        _check(ok, "'text.format' of type json_schema needs a string 'name' and an object 'schema'.", "text.format")
    text = {**value, "format": fmt}
    try:  # echoed in the response object: orjson reads 1024 levels but writes 254
        orjson.dumps(text)
    except orjson.JSONEncodeError:
        raise InvalidJSONError("The JSON body is nested too deeply.", param="text") from None
    return text


def chat_request(request: ResponseRequest, history: list[Message], turn: list[Message]) -> dict[str, Any]:
    """The chat-completions request for a Responses turn: ``instructions`` (as a system
    message, merged after the persona), the earlier turns, this input's messages
    (``turn``: ``items.turn_messages``); the tools; the sampling fields renamed; usage
    asked for when streaming."""
    messages = [{"role": "system", "content": request.instructions}] if request.instructions else []
    chat: dict[str, Any] = {
        **request.forwarded,
        "messages": [*messages, *history, *turn],
        "stream": request.stream,
        **request.tools.upstream,
    }
    if request.stream:
        chat["stream_options"] = {"include_usage": True}
    for name, value in (
        ("max_tokens", request.max_output_tokens),
        ("temperature", request.temperature),
        ("top_p", request.top_p),
    ):
        if value is not None:
            chat[name] = value
    fmt = request.text["format"]
    if fmt["type"] == "json_object":
        chat["response_format"] = {"type": "json_object"}
    elif fmt["type"] == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        chat["response_format"] = {"type": "json_schema", "json_schema": schema}
    return chat
