"""A provider that misbehaves on purpose: a real HTTP/1.1 server in its own process.

Run as ``python tests/fakeupstream.py``; it prints one JSON line with its ports and
serves until killed or until its standard input closes (so it never outlives the
test that started it). Raw asyncio streams, not a framework, so every byte, stall and
cut is exactly what the test asked for. The first path segment picks the behaviour
(``http://127.0.0.1:<port>/<behaviour>/v1/chat/completions``):

    ok            a chat.completion, or a stream of chunks and [DONE]; given ``tools``
                  (and a ``tool_choice`` other than "none"), a call of the chosen or
                  first tool with arguments ``{}`` instead of text
    status-<n>    HTTP <n> with an OpenAI error body (429 adds Retry-After: 7)
    notjson       200 with an HTML body
    cut           the body ends cleanly too early (truncated JSON; a stream without [DONE])
    reset         the connection drops in the middle of the body
    stall         headers and part of the body, then silence until the client goes
    hang          the request is read and never answered (until the client goes)
    slow-<ms>     silence for <ms> before an ok answer (non-stream), or between the
                  first chunk and the rest (stream)
    forever       a chunk every 50 ms until the client goes
    deep          valid JSON nested 300 levels deep (more than orjson writes)
    leak          a 400 whose message repeats the Authorization it got; streamed, an
                  in-stream error event that does the same
    leak-<n>      HTTP <n> with such a message, streamed or not
    echo          after 0-20 ms, an answer whose text is what the call carried: its
                  Authorization, model, system message, last message and the messages
                  between them (``history``: role and ``fingerprint`` of each, and the
                  ids of its ``tool_calls`` or its ``tool_call_id``), as JSON; streamed
                  in two chunks 0-10 ms apart. Given ``tools`` and a last message that is
                  not a tool result, that JSON is instead the ``arguments`` of a call of
                  the first tool, id ``call-<last message>`` (streamed: two fragments)

Two more ports: ``refused`` (bound, never listening: connections are refused) and
``blackhole`` (listening with a full backlog: connections hang, so they time out).
``GET /stats`` reports open connections and, per tag (the last message's content), when
a stream (``streams``) or a non-streamed ``hang`` or ``stall`` request (``held``) started
and ended and whether the client went away.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import socket
import sys
import time
from typing import Any

STATS: dict[str, Any] = {"open": 0, "opened": 0, "requests": 0, "streams": {}, "held": {}}


def fingerprint(content: object) -> str:
    """A message's content as ``echo`` reports it: itself when short, else a digest."""
    text = content if isinstance(content, str) else json.dumps(content)
    return text if len(text) <= 64 else "#" + hashlib.sha256(text.encode()).hexdigest()[:16]


def history_entry(message: dict[str, Any]) -> list[Any]:
    """A message as ``echo`` reports it in ``history``."""
    entry = [message.get("role"), fingerprint(message.get("content"))]
    if message.get("tool_calls"):
        entry.append([call.get("id") for call in message["tool_calls"]])
    if message.get("role") == "tool":
        entry.append(message.get("tool_call_id"))
    return entry


def chunk(content: str, tag: str, model: str) -> bytes:
    event = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
    }
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def completion(tag: str, model: str, content: str | None = None) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 1700000000,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content or f"ok {tag}"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    ).encode()


def tool_call(body: dict[str, Any]) -> dict[str, Any] | None:
    """The call ``ok`` answers a request with tools by, or None (no tools, or "none")."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if not tools or not isinstance(tools, list) or choice == "none":
        return None
    spec = choice.get("function") if isinstance(choice, dict) else None
    if not isinstance(spec, dict):
        spec = tools[0].get("function") if isinstance(tools[0], dict) else None
    name = spec.get("name") if isinstance(spec, dict) else None
    return {"id": "call_fake", "type": "function", "function": {"name": str(name or "f"), "arguments": "{}"}}


def tool_completion(model: str, call: dict[str, Any]) -> bytes:
    answer = json.loads(completion("", model))
    answer["choices"][0]["message"] = {"role": "assistant", "content": None, "tool_calls": [call]}
    answer["choices"][0]["finish_reason"] = "tool_calls"
    return json.dumps(answer).encode()


def tool_chunk(call: dict[str, Any], model: str) -> bytes:
    event = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, **call}]}, "finish_reason": "tool_calls"}],
    }
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def head(status: int, content_type: str, length: int | None, extra: str = "") -> bytes:
    framing = f"content-length: {length}" if length is not None else "transfer-encoding: chunked"
    return f"HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\n{framing}\r\n{extra}\r\n".encode()


def frame(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class Connection:
    """One accepted connection: requests in a keep-alive loop."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.headers: dict[str, str] = {}

    async def serve(self) -> None:
        try:
            while True:
                try:
                    line = await self.reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                request_line, *header_lines = line.decode("latin-1").split("\r\n")
                method, path, _ = request_line.split(" ", 2)
                pairs = (h.split(": ", 1) for h in header_lines if ": " in h)
                headers = self.headers = {k.lower(): v for k, v in pairs}
                body = await self.reader.readexactly(int(headers.get("content-length", 0)))
                if not await self.answer(method, path, body):
                    return
        finally:
            self.writer.close()

    async def answer(self, method: str, path: str, raw: bytes) -> bool:
        """Send one answer; False when the connection must close afterwards."""
        w = self.writer
        if path == "/stats":
            data = json.dumps(STATS).encode()
            w.write(head(200, "application/json", len(data)) + data)
            await w.drain()
            return True
        STATS["requests"] += 1
        behaviour = path.strip("/").split("/", 1)[0]
        body = json.loads(raw or b"{}")
        tag = str((body.get("messages") or [{}])[-1].get("content"))
        model = str(body.get("model"))
        if behaviour == "echo":
            return await self.echo(body, tag, model)
        if behaviour.startswith("leak"):
            leaked = {"error": {"message": f"bad key {self.headers.get('authorization')}", "code": "leak"}}
            status = int(behaviour[5:] or 400)
            if body.get("stream") and behaviour == "leak":
                w.write(head(200, "text/event-stream", None) + frame(chunk("first ", tag, model)))
                w.write(frame(b"data: " + json.dumps(leaked).encode() + b"\n\n") + b"0\r\n\r\n")
            else:
                data = json.dumps(leaked).encode()
                w.write(head(status, "application/json", len(data)) + data)
            await w.drain()
            return True
        call = tool_call(body) if behaviour == "ok" else None
        if call is not None:
            data = tool_chunk(call, model) + b"data: [DONE]\n\n" if body.get("stream") else tool_completion(model, call)
            w.write(head(200, "text/event-stream" if body.get("stream") else "application/json", len(data)) + data)
            await w.drain()
            return True
        if body.get("stream"):
            return await self.stream(behaviour, tag, model)
        if behaviour.startswith("status-"):
            status = int(behaviour.split("-")[1])
            data = json.dumps({"error": {"message": f"fake {status}", "type": "fake", "code": "fake"}}).encode()
            w.write(head(status, "application/json", len(data), "retry-after: 7\r\n" if status == 429 else "") + data)
        elif behaviour == "notjson":
            w.write(head(200, "text/html", 13) + b"<html>oops</>")
        elif behaviour == "cut":
            data = completion(tag, model)
            w.write(head(200, "application/json", 20) + data[:20])
        elif behaviour == "reset":
            data = completion(tag, model)
            w.write(head(200, "application/json", len(data)) + data[:20])
            await w.drain()
            return False
        elif behaviour == "deep":
            data = completion(tag, model)[:-1] + b', "extra": ' + b"[" * 300 + b"]" * 300 + b"}"
            w.write(head(200, "application/json", len(data)) + data)
        elif behaviour in ("stall", "hang"):
            record = STATS["held"][tag] = {"started": time.monotonic(), "ended": None, "client_left": False}
            if behaviour == "stall":
                w.write(head(200, "application/json", 1000) + b'{"id": ')
            record["client_left"] = await self.until_eof(None)
            record["ended"] = time.monotonic()
            return False
        else:
            if behaviour.startswith("slow-"):
                await asyncio.sleep(int(behaviour.split("-")[1]) / 1000)
            data = completion(tag, model)
            w.write(head(200, "application/json", len(data)) + data)
        await w.drain()
        return True

    async def echo(self, body: dict[str, Any], tag: str, model: str) -> bool:
        messages = body.get("messages") or [{}]
        seen = {
            "auth": self.headers.get("authorization"),
            "model": model,
            "system": messages[0].get("content"),
            "tag": tag,
            "history": [history_entry(m) for m in messages[1:-1]],
        }
        text = json.dumps(seen)
        call = None
        if body.get("tools") and messages[-1].get("role") != "tool":
            call = {"id": f"call-{tag}", "type": "function", "function": {"name": body["tools"][0]["function"]["name"]}}
        await asyncio.sleep(random.uniform(0, 0.02))
        w = self.writer
        if not body.get("stream"):
            if call is not None:
                data = tool_completion(model, {**call, "function": {**call["function"], "arguments": text}})
            else:
                data = completion(tag, model, text)
            w.write(head(200, "application/json", len(data)) + data)
            await w.drain()
            return True
        w.write(head(200, "text/event-stream", None))
        for i, part in enumerate((text[: len(text) // 2], text[len(text) // 2 :])):
            if call is None:
                w.write(frame(chunk(part, tag, model)))
            else:
                fragment = {**call, "function": {**call["function"], "arguments": part}} if i == 0 else {
                    "function": {"arguments": part}}  # fmt: skip
                w.write(frame(tool_chunk(fragment, model)))
            await w.drain()
            await asyncio.sleep(random.uniform(0, 0.01))
        w.write(frame(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        await w.drain()
        return True

    async def until_eof(self, seconds: float | None) -> bool:
        """Wait ``seconds`` (None: for ever) unless the client closes; True if it did."""
        try:
            data = await asyncio.wait_for(self.reader.read(1), seconds)
        except TimeoutError:
            return False
        except ConnectionError:
            return True
        return data == b""

    async def stream(self, behaviour: str, tag: str, model: str) -> bool:
        w = self.writer
        record = STATS["streams"][tag] = {"started": time.monotonic(), "ended": None, "client_left": False}
        try:
            if behaviour.startswith("status-") or behaviour in ("hang", "notjson"):
                await self.answer("POST", f"/{behaviour}/v1", json.dumps({"messages": [{"content": tag}]}).encode())
                return behaviour != "hang"
            w.write(head(200, "text/event-stream", None) + frame(chunk("first ", tag, model)))
            await w.drain()
            if behaviour == "forever":
                while not await self.until_eof(0.05):
                    w.write(frame(chunk("more ", tag, model)))
                    await w.drain()
                record["client_left"] = True
                return False
            if behaviour == "stall":
                record["client_left"] = await self.until_eof(None)
                return False
            if behaviour == "deep":
                w.write(frame(chunk("x", tag, model)[:-3] + b', "extra": ' + b"[" * 300 + b"]" * 300 + b"}\n\n"))
            if behaviour == "reset":
                w.write(b"ff\r\ndata: {")
                await w.drain()
                return False
            if behaviour.startswith("slow-") and await self.until_eof(int(behaviour.split("-")[1]) / 1000):
                record["client_left"] = True
                return False
            w.write(frame(chunk(f"ok {tag}", tag, model)))
            if behaviour != "cut":
                w.write(frame(b"data: [DONE]\n\n"))
            w.write(b"0\r\n\r\n")
            await w.drain()
            return True
        except ConnectionError:
            record["client_left"] = True
            return False
        finally:
            record["ended"] = time.monotonic()


async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    STATS["open"] += 1
    STATS["opened"] += 1
    try:
        await Connection(reader, writer).serve()
    finally:
        STATS["open"] -= 1


def blackhole() -> tuple[socket.socket, list[socket.socket]]:
    """A listener whose accept queue is full: the kernel drops further SYNs, so a
    connect hangs until the client's own timeout (loopback only, nothing leaves)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(listener.getsockname())
        fillers.append(s)
    return listener, fillers


async def main() -> None:
    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))  # bound, never listening: the port stays ours and refuses
    hole, fillers = blackhole()
    ports = {
        "port": server.sockets[0].getsockname()[1],
        "refused": refused.getsockname()[1],
        "blackhole": hole.getsockname()[1],
    }
    print(json.dumps(ports), flush=True)
    loop = asyncio.get_running_loop()
    # Stop when the parent closes our stdin (or dies): never outlive the test.
    await loop.run_in_executor(None, sys.stdin.read)
    os._exit(0)  # connections still open are dropped without a word


if __name__ == "__main__":
    asyncio.run(main())
