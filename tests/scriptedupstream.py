"""A provider that follows a script: what the Hermes agent needs to run real tool turns.

Run as ``python tests/scriptedupstream.py <record.jsonl>``; it prints one JSON line
with its port and serves until its standard input closes (it never outlives the test
that started it). Every request (method, path, Authorization, body) is appended to the
record file as one JSON line. Markers in the LAST user message decide the answer, so
a test needs no control channel (a 135M model cannot drive tools; this can):

    [[tool:NAME {json}]]   first answer: a call of tool NAME with those arguments (several
                           markers: parallel calls in one message); once the last message
                           is a tool result: "done: <its first 400 characters>"
    [[call:SCRIPT]]        the same, for the calls the test scripted under that name
                           (``ScriptedUpstream.script``: ``<record>.scripts.json``, read at
                           each request), whose arguments may hold markers themselves: a
                           delegated task that delegates again
    [[status:CODE]]        HTTP CODE with an OpenAI error body, every time
    [[sleep:SECONDS]]      wait that long before answering
    [[no-usage]]           no usage in the answer, even when asked (as llama.cpp's streams)
    otherwise              "echo: <the user text, markers removed>"

and two that add to a text answer:

    [[reveal:PREFIX]]      " [seen: W1 W2 ...]": the words of the request's system message
                           that start with PREFIX, each once, in order (what the agent
                           was told, in its answer, so a test can check whose it was)
    [[bulk:CHARS]]         about CHARS characters more, in words of 1000 (streamed: one
                           chunk each)

Chat completions only, streamed (``data:`` chunks, tool-call arguments in two pieces,
usage in a last chunk when asked) or not; ``GET /v1/models`` lists ``scripted-model``
with its context length; every other path is a 404 (so Hermes's local-server probes
find nothing).
"""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL = "scripted-model"
TOOL_ECHO = 1000  # characters of a tool's result repeated in the answer after it
LOCK = threading.Lock()
RECORD = ""


def user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def scripts() -> dict[str, list[list[Any]]]:
    """The scripted calls, ``{name: [[tool, {arguments}], ...]}``, as the test last wrote them."""
    try:
        with open(RECORD.removesuffix(".jsonl") + ".scripts.json", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def plan(body: dict[str, Any]) -> dict[str, Any]:
    """``{"status": n}``, ``{"tools": [(name, args), ...]}`` or ``{"text": ...}``, with ``sleep``."""
    messages = body.get("messages") or []
    text = user_text(messages)
    out: dict[str, Any] = {"sleep": 0.0}
    if found := re.search(r"\[\[sleep:([0-9.]+)\]\]", text):
        out["sleep"] = float(found.group(1))
    out["usage"] = "[[no-usage]]" not in text
    if found := re.search(r"\[\[status:(\d{3})\]\]", text):
        return {**out, "status": int(found.group(1))}
    last = messages[-1] if messages else {}
    calls = re.findall(r"\[\[tool:(\w+) (\{.*?\})\]\]", text, re.S)
    for name in re.findall(r"\[\[call:([\w.-]+)\]\]", text):
        calls += [(tool, json.dumps(args)) for tool, args in scripts().get(name, [])]
    if calls and last.get("role") != "tool":
        return {**out, "tools": calls}
    if last.get("role") == "tool":
        answer = "done: " + str(last.get("content"))[:TOOL_ECHO]
    else:
        answer = "echo: " + re.sub(r"\[\[.*?\]\]", "", text).strip()
    if found := re.search(r"\[\[reveal:([^\]\s]+)\]\]", text):
        system = next((str(m.get("content")) for m in messages if m.get("role") == "system"), "")
        words = re.findall(re.escape(found.group(1)) + r"[\w.-]*", system)
        answer += " [seen: " + " ".join(dict.fromkeys(w.rstrip(".-") for w in words)) + "]"
    if found := re.search(r"\[\[bulk:(\d+)\]\]", text):
        answer += "".join(" " + "x" * 999 for _ in range(int(found.group(1)) // 1000))
    return {**out, "text": answer}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args: Any) -> None:
        pass

    def record(self, body: Any) -> None:
        line = {"t": time.time(), "method": self.command, "path": self.path,
                "auth": self.headers.get("Authorization"), "body": body}  # fmt: skip
        with LOCK, open(RECORD, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")

    def answer(self, status: int, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.record(None)
        if self.path.split("?")[0].rstrip("/") == "/v1/models":
            self.answer(200, {"object": "list", "data": [{"id": MODEL, "object": "model", "context_length": 65536}]})
        else:
            self.answer(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        self.record(body)
        if not self.path.endswith("/chat/completions"):
            self.answer(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})
            return
        script = plan(body)
        time.sleep(script["sleep"])
        if "status" in script:
            error = {"message": f"scripted {script['status']}", "type": "scripted_error", "code": str(script["status"])}
            self.answer(script["status"], {"error": error})
            return
        prompt = 100 + len(json.dumps(body.get("messages"))) // 100
        usage = {"prompt_tokens": prompt, "completion_tokens": 7, "total_tokens": prompt + 7}
        ident = f"chatcmpl-{time.monotonic_ns()}"
        (self.stream if body.get("stream") else self.plain)(ident, script, usage, body)

    def plain(self, ident: str, script: dict[str, Any], usage: dict[str, int], body: dict[str, Any]) -> None:
        if "tools" in script:
            calls = [{"id": f"call_{ident[-8:]}_{i}", "type": "function", "function": {"name": n, "arguments": a}}
                     for i, (n, a) in enumerate(script["tools"])]  # fmt: skip
            message, finish = {"role": "assistant", "content": None, "tool_calls": calls}, "tool_calls"
        else:
            message, finish = {"role": "assistant", "content": script["text"]}, "stop"
        choice = {"index": 0, "message": message, "finish_reason": finish}
        answer = {"id": ident, "object": "chat.completion", "created": int(time.time()), "model": MODEL,
                  "choices": [choice]}  # fmt: skip
        self.answer(200, {**answer, "usage": usage} if script["usage"] else answer)

    def stream(self, ident: str, script: dict[str, Any], usage: dict[str, int], body: dict[str, Any]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        base = {"id": ident, "object": "chat.completion.chunk", "created": int(time.time()), "model": MODEL}

        def send(obj: dict[str, Any]) -> None:
            self.wfile.write(f"data: {json.dumps(obj)}\n\n".encode())
            self.wfile.flush()

        def chunk(delta: dict[str, Any], finish: str | None = None) -> None:
            send({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

        chunk({"role": "assistant", "content": ""})
        if "tools" in script:
            for i, (name, args) in enumerate(script["tools"]):
                call = {"index": i, "id": f"call_{ident[-8:]}_{i}", "type": "function"}
                chunk({"tool_calls": [{**call, "function": {"name": name, "arguments": ""}}]})
                for part in (args[: len(args) // 2], args[len(args) // 2 :]):
                    chunk({"tool_calls": [{"index": i, "function": {"arguments": part}}]})
            finish = "tool_calls"
        else:
            for word in re.split(r"(\s+)", script["text"]):
                if word:
                    chunk({"content": word})
            finish = "stop"
        chunk({}, finish)
        if (body.get("stream_options") or {}).get("include_usage") and script["usage"]:
            send({**base, "choices": [], "usage": usage})
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True


def main() -> None:
    global RECORD
    RECORD = sys.argv[1]
    ThreadingHTTPServer.request_queue_size = 512  # hundreds of agent turns connect at once
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    sys.stdin.read()  # until the test closes our stdin (or dies)
    server.shutdown()


if __name__ == "__main__":
    main()
