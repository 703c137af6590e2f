"""A recording OpenAI-compatible upstream: answers (or forwards) and remembers every request.

``RecordingUpstream()`` answers ``/v1/models`` and ``/v1/chat/completions`` itself, stream
or not, with ``pong from <model>: <last user text>`` so a test can see which upstream
model a profile used and that the answer made it back. ``RecordingUpstream(forward_to=url)``
passes every request on to a real server (llama.cpp) and relays its answer byte for byte:
a recording proxy. Either way ``exchanges`` holds what arrived: method, path, headers
and the parsed JSON body. Loopback only; ``stop()`` closes it.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Exchange:
    """One request the upstream received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any

    @property
    def system(self) -> str:
        """The first system message's text ("" if none)."""
        for message in (self.body or {}).get("messages", []):
            if message.get("role") == "system" and isinstance(message.get("content"), str):
                return message["content"]
        return ""


def answer_text(body: dict[str, Any]) -> str:
    """What the built-in upstream answers: ``pong from <model>: <last user text>``."""
    last = ""
    for message in body.get("messages", []):
        if message.get("role") == "user":
            content = message.get("content")
            last = content if isinstance(content, str) else " ".join(p.get("text", "") for p in content or [])
    return f"pong from {body.get('model')}: {last.strip()[:80]}"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, recorder: RecordingUpstream) -> None:
        self.recorder = recorder
        super().__init__(("127.0.0.1", 0), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        # Without TCP_NODELAY every keep-alive request stalls ~40 ms (recipes README).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, address


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _record(self) -> tuple[bytes, Any]:
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        exchange = Exchange(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        with self.server.recorder.lock:
            self.server.recorder.exchanges.append(exchange)
        return raw, body

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        raw, body = self._record()
        recorder = self.server.recorder
        if recorder.forward_to:
            self._forward(recorder.forward_to, raw)
        elif self.command == "GET" and self.path.rstrip("/").endswith("/models"):
            self._json(200, {"object": "list", "data": [{"id": "recorder", "object": "model", "owned_by": "e2e"}]})
        elif self.command == "POST" and self.path.endswith("/chat/completions") and isinstance(body, dict):
            self._chat(body)
        else:
            self._json(404, {"error": {"message": "not here", "type": "invalid_request_error", "code": None}})

    def _json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chat(self, body: dict[str, Any]) -> None:
        text, model = answer_text(body), body.get("model")
        base = {"id": "chatcmpl-rec", "created": int(time.time()), "model": model}
        if not body.get("stream"):
            message = {"role": "assistant", "content": text}
            self._json(
                200,
                {
                    **base,
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
                },
            )
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        chunk = {**base, "object": "chat.completion.chunk"}
        deltas = [{"role": "assistant", "content": ""}, *({"content": w + " "} for w in text.split(" "))]
        events = [{**chunk, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
        events.append({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        for event in [*(json.dumps(e) for e in events), "[DONE]"]:
            self._chunk(f"data: {event}\n\n".encode())
        self._chunk(b"")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _forward(self, base: str, raw: bytes) -> None:
        # The recorder listens on /v1/...; base is the real server's URL ending in /v1.
        url = base.rstrip("/") + self.path.removeprefix("/v1")
        request = urllib.request.Request(url, data=raw or None, method=self.command)
        request.add_header("content-type", self.headers.get("content-type", "application/json"))
        try:
            upstream = urllib.request.urlopen(request, timeout=300)
        except urllib.error.HTTPError as exc:
            upstream = exc
        with upstream:
            with self.server.recorder.lock:
                self.server.recorder.statuses.append(upstream.status)
            self.send_response(upstream.status)
            self.send_header("content-type", upstream.headers.get("content-type", "application/json"))
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            while data := upstream.read1(65536):
                self._chunk(data)
            self._chunk(b"")


class RecordingUpstream:
    """The server; ``url`` ends in ``/v1``. A context manager, or ``start()``/``stop()``."""

    def __init__(self, forward_to: str | None = None) -> None:
        self.forward_to = forward_to
        self.exchanges: list[Exchange] = []
        self.statuses: list[int] = []  # what the real server answered, when forwarding
        self.lock = threading.Lock()
        self._server = _Server(self)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def chats(self) -> list[Exchange]:
        """The chat completion requests so far, oldest first."""
        with self.lock:
            return [e for e in self.exchanges if e.path.endswith("/chat/completions")]

    def start(self) -> RecordingUpstream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> RecordingUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
