"""The scripted provider of the agent benchmark (``bench/agents.py``): standard library
only, run as ``python bench/agent_upstream.py PORT``, pinned to the load CPU.

Chat completions, streamed or not, answered at once and always over keep-alive
connections (``Content-Length`` on every answer, streams included: their body is known
before the first byte) with ``TCP_NODELAY``, so that a turn's time is the agent's:

- the last message a ``tool`` result: the text ``NOTED`` (the memory turn's second call);
- the last user message holding ``[[memory:ENTRY]]``: a call of Hermes's ``memory``
  tool, ``{"action": "add", "target": "memory", "content": ENTRY}``, arguments streamed
  in two fragments as OpenAI sends them (id and name first);
- otherwise: the text ``ANSWER``, streamed as one chunk per word.

Streams end as OpenAI's do: a finish chunk, a usage chunk (``choices: []``) when
``stream_options.include_usage`` is set (Hermes sets it), ``[DONE]``. ``GET /v1/models``
lists the model; every other path is a 404, so Hermes's probes for a local model server
(``/api/tags``, ``/props``, ...) find nothing, as against a hosted provider.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL = "bench-agent-model"
ANSWER = "Check the error rate on the checkout dashboard first, then the p99 latency of its database calls."
NOTED = "Noted: I will remember that."
MEMORY_MARK = re.compile(r"\[\[memory:(.*?)\]\]")


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def plan(messages: list[dict[str, Any]]) -> tuple[str, str]:
    """``("text", answer)`` or ``("memory", entry)`` for a request's messages."""
    if messages and messages[-1].get("role") == "tool":
        return "text", NOTED
    found = MEMORY_MARK.search(last_user_text(messages))
    return ("memory", found.group(1)) if found else ("text", ANSWER)


def tool_call(entry: str, ident: str) -> tuple[str, str, str]:
    """(call id, name, arguments JSON) of the memory call for ``entry``."""
    arguments = json.dumps({"action": "add", "target": "memory", "content": entry})
    return f"call_{ident[-12:]}", "memory", arguments


def usage(messages: list[dict[str, Any]]) -> dict[str, int]:
    prompt = 50 + len(json.dumps(messages)) // 4
    return {"prompt_tokens": prompt, "completion_tokens": 20, "total_tokens": prompt + 20}


def completion_body(kind: str, value: str, messages: list[dict[str, Any]]) -> bytes:
    ident = f"chatcmpl-{time.monotonic_ns()}"
    if kind == "memory":
        call_id, name, arguments = tool_call(value, ident)
        calls = [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]
        message, finish = {"role": "assistant", "content": None, "tool_calls": calls}, "tool_calls"
    else:
        message, finish = {"role": "assistant", "content": value}, "stop"
    choice = {"index": 0, "message": message, "finish_reason": finish}
    body = {"id": ident, "object": "chat.completion", "created": int(time.time()), "model": MODEL,
            "choices": [choice], "usage": usage(messages)}  # fmt: skip
    return json.dumps(body).encode()


def stream_body(kind: str, value: str, messages: list[dict[str, Any]], include_usage: bool) -> bytes:
    ident = f"chatcmpl-{time.monotonic_ns()}"
    base = {"id": ident, "object": "chat.completion.chunk", "created": int(time.time()), "model": MODEL}
    events: list[dict[str, Any]] = []

    def chunk(delta: dict[str, Any], finish: str | None = None) -> None:
        events.append({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    chunk({"role": "assistant", "content": ""})
    if kind == "memory":
        call_id, name, arguments = tool_call(value, ident)
        head = {"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
        chunk({"tool_calls": [head]})
        half = len(arguments) // 2
        for part in (arguments[:half], arguments[half:]):
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
        finish = "tool_calls"
    else:
        for word in re.findall(r"\S+\s*", value):
            chunk({"content": word})
        finish = "stop"
    chunk({}, finish)
    if include_usage:
        events.append({**base, "choices": [], "usage": usage(messages)})
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args: Any) -> None:
        pass

    def send(self, status: int, data: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.split("?")[0].rstrip("/") == "/v1/models":
            model = {"id": MODEL, "object": "model", "owned_by": "bench", "context_length": 65536}
            self.send(200, json.dumps({"object": "list", "data": [model]}).encode())
        else:
            self.send(404, b'{"error": {"message": "not found", "type": "invalid_request_error"}}')

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if not self.path.endswith("/chat/completions"):
            self.send(404, b'{"error": {"message": "no such route", "type": "invalid_request_error"}}')
            return
        messages = body.get("messages") or []
        kind, value = plan(messages)
        if body.get("stream"):
            include = bool((body.get("stream_options") or {}).get("include_usage"))
            self.send(200, stream_body(kind, value, messages, include), "text/event-stream")
        else:
            self.send(200, completion_body(kind, value, messages))


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
