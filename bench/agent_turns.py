"""One agent turn as a client sees it: the request, the answer read to its last byte,
checked; and the same turn sent straight to the scripted upstream (the baseline whose
time is subtracted from a turn's).

A text turn is one user message the upstream answers with ``ANSWER``; a memory turn
asks for ``[[memory:ENTRY]]``, which the upstream answers with a call of Hermes's
``memory`` tool, then (once the tool result is sent back) with ``NOTED``. Each turn's
message is new (``n`` in it), so every turn is a new conversation, as a new chat of a
chat client is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from .agent_upstream import ANSWER, NOTED


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # "text" | "memory"
    stream: bool


SCENARIOS = (
    Scenario("text", "text", False),
    Scenario("text stream", "text", True),
    Scenario("memory tool", "memory", False),
    Scenario("memory tool stream", "memory", True),
)
QUESTION = "Checkout feels slow since the last deploy. What should I look at first?"


def user_text(kind: str, n: int) -> str:
    if kind == "memory":
        return f"Please remember this for later (note {n}). [[memory:bench note {n}]]"
    return f"{QUESTION} (turn {n})"


def turn_body(profile: str, kind: str, stream: bool, n: int) -> dict[str, Any]:
    body: dict[str, Any] = {"model": profile, "messages": [{"role": "user", "content": user_text(kind, n)}]}
    if stream:
        body["stream"] = True
    return body


def expected(kind: str) -> str:
    return NOTED if kind == "memory" else ANSWER


def content_of(raw: bytes, stream: bool) -> str:
    """The answer text of a chat completion, or of a chat stream (its ``data:`` chunks'
    ``delta.content``; events without ``choices``, such as Hermes's
    ``hermes.tool.progress``, are skipped)."""
    if not stream:
        body = orjson.loads(raw)
        return body["choices"][0]["message"]["content"] or ""
    parts = []
    for line in raw.split(b"\n"):
        if line.startswith(b"data: {"):
            choices = orjson.loads(line[6:]).get("choices") or []
            if choices:
                parts.append((choices[0].get("delta") or {}).get("content") or "")
    if not raw.rstrip().endswith(b"data: [DONE]"):
        parts.append("<no [DONE]>")
    return "".join(parts)


def post(client: httpx.Client, url: str, key: str, body: dict[str, Any]) -> tuple[float, bytes, int]:
    """(seconds to the last byte, body, status) of one POST."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    began = time.perf_counter()
    with client.stream("POST", url, content=orjson.dumps(body), headers=headers) as answer:
        raw = answer.read()
    return time.perf_counter() - began, raw, answer.status_code


def agent_turn(
    client: httpx.Client, url: str, key: str, profile: str, kind: str, stream: bool, n: int
) -> tuple[float, str]:
    """(seconds, problem or "") of one turn through a system under test."""
    seconds, raw, status = post(client, url, key, turn_body(profile, kind, stream, n))
    if status != 200:
        return seconds, f"HTTP {status}: {raw[:200].decode(errors='replace')}"
    try:
        text = content_of(raw, stream)
    except (ValueError, KeyError, IndexError, TypeError):
        return seconds, f"not a chat answer: {raw[:200].decode(errors='replace')}"
    return seconds, "" if text.strip() == expected(kind) else f"unexpected answer {text[:120]!r}"


def direct_turn(client: httpx.Client, url: str, kind: str, stream: bool, n: int) -> tuple[float, str]:
    """The same turn straight to the upstream: one call for a text turn; for a memory
    turn the call answered by the tool call, then the call carrying the tool's result."""
    body = turn_body("bench-agent-model", kind, stream, n)
    if stream:
        body["stream_options"] = {"include_usage": True}
    seconds, raw, status = post(client, url, "", body)
    if kind == "memory":
        call = {"id": "call_1", "type": "function", "function": {"name": "memory", "arguments": "{}"}}
        body["messages"] += [
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"success": true}'},
        ]
        more, raw, status = post(client, url, "", body)
        seconds += more
    ok = status == 200 and content_of(raw, stream).strip() == expected(kind)
    return seconds, "" if ok else f"upstream answered {status}: {raw[:120]!r}"
