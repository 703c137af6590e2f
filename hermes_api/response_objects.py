"""Chat answer → Responses API ``response`` object (docs/contract.md §4).

The assistant's text becomes a ``message`` output item with one ``output_text`` part,
and each of its ``tool_calls`` a ``function_call`` item (``id`` "fc_…", ``call_id`` the
provider's call id, ``name``, ``arguments``, ``status``), text first, calls in the
provider's order; an answer with neither is one empty message. Usage is renamed
(``prompt_tokens`` → ``input_tokens`` …); ``finish_reason: length`` makes the response
``incomplete`` with ``incomplete_details.reason: max_output_tokens``. Shapes: OpenAI's
spec (``Response``, ``ResponseUsage``; openai-python ``types/responses/response.py``,
``response_function_tool_call.py``); the request side is ``translation``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .errors import HermesAPIError

if TYPE_CHECKING:
    from .translation import ResponseRequest
    from .turns import ToolEvent

Item = dict[str, Any]
Message = dict[str, Any]


def new_id(prefix: str) -> str:
    """``<prefix>_<32 hex>``: ``resp_…`` for responses, ``msg_…`` for items."""
    return f"{prefix}_{uuid.uuid4().hex}"


def new_response(request: ResponseRequest, *, model: str) -> dict[str, Any]:
    """The response object in progress: an id, no output yet."""
    return {
        "id": new_id("resp"),
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "background": False,
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "metadata": request.metadata,
        "model": model,
        "output": [],
        "parallel_tool_calls": request.tools.parallel_tool_calls,
        "previous_response_id": request.previous_response_id,
        "store": request.store,
        "temperature": request.temperature,
        "text": request.text,
        "tool_choice": request.tools.tool_choice,
        "tools": request.tools.tools,
        "top_p": request.top_p,
        "truncation": "disabled",
        "usage": None,
    }


def output_message(message_id: str, text: str, status: str) -> Item:
    """The assistant's ``message`` output item."""
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"id": message_id, "type": "message", "role": "assistant", "status": status, "content": [part]}


def function_call(item_id: str, call_id: str, name: str, arguments: str, status: str) -> Item:
    """A ``function_call`` output item: the model asks the client to run ``name``."""
    return {"id": item_id, "type": "function_call", "status": status, "arguments": arguments, "call_id": call_id,
            "name": name}  # fmt: skip


def final_status(finish_reason: Any) -> tuple[str, dict[str, str] | None]:
    """``(status, incomplete_details)``: ``incomplete`` when the provider stopped at the
    token limit (``length``) or its content filter."""
    reason = {"length": "max_output_tokens", "content_filter": "content_filter"}.get(finish_reason)
    return ("incomplete", {"reason": reason}) if reason else ("completed", None)


def finished(
    draft: dict[str, Any], *, output: list[Item], status: str, details: Any, chat_usage: Any
) -> dict[str, Any]:
    """The final response with its ``output`` items."""
    return {
        **draft,
        "status": status,
        "completed_at": int(time.time()) if status == "completed" else None,
        "incomplete_details": details,
        "output": output,
        "usage": usage(chat_usage),
    }


def failed(draft: dict[str, Any], error: HermesAPIError) -> dict[str, Any]:
    """The response after a failure mid-stream: ``failed``, ``error{code, message}``."""
    return {**draft, "status": "failed", "error": {"code": error.code or error.type, "message": error.message}}


def _calls(message: dict[str, Any], status: str) -> list[Item]:
    """The ``function_call`` items of a chat message's ``tool_calls`` (a call without a
    provider id gets one: the client answers it by ``call_id``)."""
    out = []
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        call_id = call.get("id") if isinstance(call.get("id"), str) and call.get("id") else new_id("call")
        name, arguments = function.get("name"), function.get("arguments")
        out.append(function_call(new_id("fc"), call_id, name if isinstance(name, str) else "",
                                 arguments if isinstance(arguments, str) else "", status))  # fmt: skip
    return out


def from_completion(
    draft: dict[str, Any], completion: dict[str, Any], tools: Sequence[ToolEvent] = (), display: str = "none"
) -> dict[str, Any]:
    """The final response for a non-streamed ``chat.completion``; ``tools`` the server
    ran for it come first, as ``tool_items`` for ``display``."""
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    content = message.get("content")
    text = content if isinstance(content, str) else ""
    status, details = final_status(choice.get("finish_reason"))
    calls = _calls(message, status)
    output = [output_message(new_id("msg"), text, status)] if text or not calls else []
    ran = [item for tool in tools for item in tool_items(tool, display)]
    return finished(
        draft, output=[*ran, *output, *calls], status=status, details=details, chat_usage=completion.get("usage")
    )


def mcp_call(item_id: str, tool: ToolEvent, status: str) -> Item:
    """A tool the server ran, as an ``mcp_call`` item: OpenAI's item for a tool run on
    the server's side (openai-python ``types/responses/response_output_item.py``
    ``McpCall``), which SDKs parse and agent loops never run themselves."""
    return {"id": item_id, "type": "mcp_call", "server_label": "hermes", "name": tool.name,
            "arguments": tool.arguments, "output": tool.output, "error": None, "status": status}  # fmt: skip


def tool_items(tool: ToolEvent, display: str) -> list[Item]:
    """A finished tool the server ran, as output items: an ``mcp_call``, or with the
    ``openwebui`` display a ``function_call`` and its ``function_call_output`` (the output
    as ``input_text`` parts: Open WebUI 0.12 shows the pair as a tool row and, the call
    being answered, never runs it; a string output breaks its renderer)."""
    if display != "openwebui":
        return [mcp_call(new_id("mcp"), tool, "completed")]
    output = {"id": new_id("fco"), "type": "function_call_output", "call_id": tool.call_id, "status": "completed",
              "output": [{"type": "input_text", "text": tool.output or ""}]}  # fmt: skip
    return [function_call(new_id("fc"), tool.call_id, tool.name, tool.arguments, "completed"), output]


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def usage(chat_usage: Any) -> dict[str, Any] | None:
    """Chat usage renamed (``prompt_tokens`` → ``input_tokens`` …, cached and reasoning
    token details kept, 0 when absent); None when the provider sent no usage (llama.cpp
    streams never do), as "unknown" is not "zero"."""
    if not isinstance(chat_usage, dict):
        return None
    prompt, completion = _count(chat_usage.get("prompt_tokens")), _count(chat_usage.get("completion_tokens"))
    prompt_details = chat_usage.get("prompt_tokens_details")
    completion_details = chat_usage.get("completion_tokens_details")
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": _count(prompt_details.get("cached_tokens")) if isinstance(prompt_details, dict) else 0
        },
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": _count(completion_details.get("reasoning_tokens"))
            if isinstance(completion_details, dict)
            else 0
        },
        "total_tokens": _count(chat_usage.get("total_tokens")) or prompt + completion,
    }


def answer_message(response: dict[str, Any]) -> list[Message]:
    """The assistant message a finished response adds to its conversation: its text,
    and the function calls it asks the client to run as ``tool_calls`` ([] when it failed
    before any output). Tools the server ran (``mcp_call`` items, or a ``function_call``
    answered in the same output) are not part of it: the agent keeps their history."""
    output = response["output"]
    if len(output) == 1 and output[0]["type"] == "message":  # a text answer
        return [{"role": "assistant", "content": "".join(part["text"] for part in output[0]["content"])}]
    if not output:
        return []
    texts, calls = [], []
    ran = {item["call_id"] for item in output if item["type"] == "function_call_output"}
    for item in output:
        if item["type"] == "message":
            texts.append("".join(part["text"] for part in item["content"]))
        elif item["type"] == "function_call" and item["call_id"] not in ran:
            calls.append({"id": item["call_id"], "type": "function",
                          "function": {"name": item["name"], "arguments": item["arguments"]}})  # fmt: skip
    if not calls:
        return [{"role": "assistant", "content": "\n".join(texts)}]
    return [{"role": "assistant", "content": "\n".join(texts) or None, "tool_calls": calls}]
