"""Chat answer → Responses API ``response`` object (DESIGN.md §4).

The assistant message becomes one ``message`` output item with one ``output_text``
part; usage is renamed (``prompt_tokens`` → ``input_tokens`` …); ``finish_reason:
length`` makes the response ``incomplete`` with ``incomplete_details.reason:
max_output_tokens``. Shapes: OpenAI's spec (``Response``, ``ResponseUsage``) as
summarised in openai-wire.md; the request side is ``translation``.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

from .errors import HermesAPIError

if TYPE_CHECKING:
    from .translation import ResponseRequest

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
        "parallel_tool_calls": True,
        "previous_response_id": request.previous_response_id,
        "store": request.store,
        "temperature": request.temperature,
        "text": request.text,
        "tool_choice": "auto",
        "tools": [],
        "top_p": request.top_p,
        "truncation": "disabled",
        "usage": None,
    }


def output_message(message_id: str, text: str, status: str) -> Item:
    """The assistant's ``message`` output item."""
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"id": message_id, "type": "message", "role": "assistant", "status": status, "content": [part]}


def finished(
    draft: dict[str, Any], *, message_id: str, text: str, finish_reason: Any, chat_usage: Any
) -> dict[str, Any]:
    """The final response: ``completed``, or ``incomplete`` when the provider stopped at
    the token limit (``length``) or its content filter."""
    reason = {"length": "max_output_tokens", "content_filter": "content_filter"}.get(finish_reason)
    status = "incomplete" if reason else "completed"
    return {
        **draft,
        "status": status,
        "completed_at": int(time.time()) if status == "completed" else None,
        "incomplete_details": {"reason": reason} if reason else None,
        "output": [output_message(message_id, text, status)],
        "usage": usage(chat_usage),
    }


def failed(draft: dict[str, Any], error: HermesAPIError) -> dict[str, Any]:
    """The response after a failure mid-stream: ``failed``, ``error{code, message}``."""
    return {**draft, "status": "failed", "error": {"code": error.code or error.type, "message": error.message}}


def from_completion(draft: dict[str, Any], completion: dict[str, Any]) -> dict[str, Any]:
    """The final response for a non-streamed ``chat.completion``."""
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    content = message.get("content")
    return finished(
        draft,
        message_id=new_id("msg"),
        text=content if isinstance(content, str) else "",
        finish_reason=choice.get("finish_reason"),
        chat_usage=completion.get("usage"),
    )


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
    """The assistant message a finished response adds to its conversation ([] when it
    failed before any output)."""
    return [
        {"role": "assistant", "content": "\n".join(part["text"] for part in item["content"])}
        for item in response["output"]
    ]
