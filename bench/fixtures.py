"""The fixed traffic of the benchmark: what clients post and what the fake upstream answers.

Shapes follow OpenAI's wire format as real providers send it today (ids, fingerprints,
``usage`` with token details). The upstream bodies are served by nginx ``return 200``
(``nginx_conf``, which escapes ``\\`` and ``'`` for nginx), so they must hold no ``$``
(nginx variables).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

MODEL_ID = "gpt-4.1-mini-2025-04-14"
CREATED = 1767225600
SYSTEM = (
    "You are a careful assistant for a small engineering team. Answer in plain English, "
    "keep answers short, and say so when you are not sure. Prefer concrete examples."
)
USER = (
    "We run a Python web service behind nginx on two cores. Requests spend most of their "
    "time waiting on an upstream API. Should we add more worker processes or tune the "
    "event loop first? Give me the two or three things to measure before deciding."
)
ANSWER = "Measure CPU time per request, p99 latency at real concurrency, and upstream connections."
STREAM_WORDS = (
    "Measure",
    " CPU",
    " time",
    " per",
    " request",
    " first",
    ",",
    " then",
    " p99",
    " latency",
    " at",
    " real",
    " concurrency",
    ",",
    " then",
    " open",
    " upstream",
    " connections",
    ".",
    " Done",
)
FINGERPRINT = "fp_6f2eabb9a5"
# The function-call scenario: an agent's first turn with two function tools, answered
# by a call of one of them.
TOOLS = [
    {
        "type": "function",
        "name": "get_service_status",
        "description": "The health of one of our services: error rate, p99 latency and open incidents.",
        "parameters": {
            "type": "object",
            "properties": {
                "service": {"type": "string", "description": "The service name, e.g. checkout-api."},
                "window": {"type": "string", "enum": ["5m", "1h", "24h"]},
            },
            "required": ["service", "window"],
            "additionalProperties": False,
        },
        "strict": True,
    },
    {
        "type": "function",
        "name": "page_on_call",
        "description": "Page the engineer on call for a service, with a short reason.",
        "parameters": {
            "type": "object",
            "properties": {"service": {"type": "string"}, "reason": {"type": "string"}},
            "required": ["service", "reason"],
            "additionalProperties": False,
        },
        "strict": True,
    },
]
TOOL_QUESTION = "Checkout feels slow since the last deploy. How is checkout-api doing over the last hour?"
TOOL_CALL_ID = "call_Xk2bV9mQ4rT7wY1zN8pL3sD6"
TOOL_NAME = "get_service_status"
TOOL_ARGUMENTS = '{"service":"checkout-api","window":"1h"}'


def chat_request(model: str, *, stream: bool = False) -> dict[str, Any]:
    """A realistic chat request: a system and a user message, sampling settings."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}],
        "temperature": 0.7,
        "max_tokens": 256,
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body


def responses_request(model: str, *, stream: bool = False) -> dict[str, Any]:
    """The same question as a Responses API request (``instructions`` + ``input``)."""
    body: dict[str, Any] = {"model": model, "instructions": SYSTEM, "input": USER, "max_output_tokens": 256}
    if stream:
        body["stream"] = True
    return body


def responses_tools_request(model: str, *, stream: bool = False) -> dict[str, Any]:
    """A Responses request with two function tools, as an agent framework sends it."""
    body: dict[str, Any] = {
        "model": model,
        "instructions": SYSTEM,
        "input": [{"role": "user", "content": TOOL_QUESTION}],
        "tools": TOOLS,
        "max_output_tokens": 256,
    }
    if stream:
        body["stream"] = True
    return body


def _usage() -> dict[str, Any]:
    return {
        "prompt_tokens": 87,
        "completion_tokens": 41,
        "total_tokens": 128,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def completion_body() -> bytes:
    """A ``chat.completion`` of about 650 bytes, with usage."""
    return orjson.dumps(
        {
            "id": "chatcmpl-CqbR7x2m9kDq4oVfJ1sT8uY3wZ5aN",
            "object": "chat.completion",
            "created": CREATED,
            "model": MODEL_ID,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": ANSWER, "refusal": None, "annotations": []},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": _usage(),
            "service_tier": "default",
            "system_fingerprint": FINGERPRINT,
        }
    )


def tool_completion_body() -> bytes:
    """A ``chat.completion`` whose answer is one call of ``TOOL_NAME``, with usage."""
    call = {"id": TOOL_CALL_ID, "type": "function", "function": {"name": TOOL_NAME, "arguments": TOOL_ARGUMENTS}}
    answer = orjson.loads(completion_body())
    answer["choices"][0]["message"] |= {"content": None, "tool_calls": [call]}
    answer["choices"][0]["finish_reason"] = "tool_calls"
    return orjson.dumps(answer)


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-CqbR7x2m9kDq4oVfJ1sT8uY3wZ5aN",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL_ID,
        "service_tier": "default",
        "system_fingerprint": FINGERPRINT,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        "usage": None,
    }


def stream_events() -> list[bytes]:
    """The SSE events of a streamed answer: 20 content chunks (the first with the
    role), a finish chunk, a usage chunk with ``choices: []``, then ``[DONE]``."""
    chunks = [_chunk({"role": "assistant", "content": "", "refusal": None})]
    chunks += [_chunk({"content": word}) for word in STREAM_WORDS]
    chunks.append(_chunk({}, "stop"))
    usage = {**_chunk({}), "choices": [], "usage": _usage()}
    chunks.append(usage)
    return [b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks] + [b"data: [DONE]\n\n"]


def stream_body() -> bytes:
    return b"".join(stream_events())


def tool_stream_events() -> list[bytes]:
    """The SSE events of a streamed call, as OpenAI sends one: the role chunk, the
    call's id and name, its arguments in fragments of 2 characters (21, about as many
    as the text stream's words), a finish chunk (``tool_calls``), a usage chunk, then
    ``[DONE]``."""
    pieces = [TOOL_ARGUMENTS[i : i + 2] for i in range(0, len(TOOL_ARGUMENTS), 2)]
    first = {"index": 0, "id": TOOL_CALL_ID, "type": "function", "function": {"name": TOOL_NAME, "arguments": ""}}
    chunks = [_chunk({"role": "assistant", "content": None, "refusal": None}), _chunk({"tool_calls": [first]})]
    chunks += [_chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}) for piece in pieces]
    chunks.append(_chunk({}, "tool_calls"))
    chunks.append({**_chunk({}), "choices": [], "usage": _usage()})
    return [b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks] + [b"data: [DONE]\n\n"]


def tool_stream_body() -> bytes:
    return b"".join(tool_stream_events())


def _nginx_string(body: bytes) -> str:
    text = body.decode()
    assert "$" not in text, "nginx return strings cannot hold $ (a variable)"
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def _nginx_return(body: bytes, limit: int = 3000) -> str:
    """``return 200 ...`` for ``body``; nginx caps one parameter at 4 KiB, so a longer
    body is split at event boundaries into variables joined by ``return``."""
    if len(body) <= limit:
        return f"return 200 {_nginx_string(body)};"
    parts, current = [], b""
    for event in body.split(b"\n\n")[:-1]:
        event += b"\n\n"
        if current and len(current) + len(event) > limit:
            parts.append(current)
            current = b""
        current += event
    parts.append(current)
    sets = "".join(f"set $part{i} {_nginx_string(p)};\n            " for i, p in enumerate(parts))
    return sets + 'return 200 "' + "".join(f"${{part{i}}}" for i in range(len(parts))) + '";'


def nginx_conf(prefix: Path, port: int) -> str:
    """An nginx config serving the fixed answers on 127.0.0.1:``port``:
    ``/v1/chat/completions`` the JSON completion, ``/stream/v1/chat/completions`` the
    SSE body, ``/tools/v1/…`` and ``/tools-stream/v1/…`` the same with a function call
    instead of text. One worker, no logs, keep-alive connections that are never recycled."""
    return f"""
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log stderr error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_buffer_size 64k;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /v1/chat/completions {{
            default_type application/json;
            {_nginx_return(completion_body())}
        }}
        location = /stream/v1/chat/completions {{
            default_type text/event-stream;
            {_nginx_return(stream_body())}
        }}
        location = /tools/v1/chat/completions {{
            default_type application/json;
            {_nginx_return(tool_completion_body())}
        }}
        location = /tools-stream/v1/chat/completions {{
            default_type text/event-stream;
            {_nginx_return(tool_stream_body())}
        }}
        location / {{ return 404; }}
    }}
}}
"""
