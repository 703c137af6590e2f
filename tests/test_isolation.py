"""Concurrency isolation: thousands of interleaved requests over many profiles and keys.

hermes-api runs under uvicorn with its real aiohttp pool; the upstream is a real
server on loopback that answers with what each call carried, after a random delay so
requests for different profiles overlap. Zero answers or upstream calls may carry
another profile's persona, memory, secret or model, or another conversation's stored
history (chat sessions, previous_response_id chains, function calls and their
outputs); the profile bound in the ContextVar must be the request's own, inside streamed bodies too; and no stored
response may be read with another key or through another profile.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx
import orjson
import pytest
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from hermes_api.app import create_app
from hermes_api.context import current_profile
from hermes_api.profiles import Profile
from hermes_api.turns.direct import DirectTurns

from .conftest import KEEP_ALIVE, FakeUpstream, HermesHome, digest
from .fakeupstream import fingerprint

PROFILES = [f"p{i}" for i in range(6)]
REQUESTS = 360
# The clients here drop an idle pooled connection after this many seconds (httpx's
# default; aiohttp's is 15 s), well before the servers close it (KEEP_ALIVE, as
# `hermes-api serve` does): a server closing first would race a request sent on it,
# which then fails with a reset before any answer (once 1 run in 4, with both at 5 s).
CLIENT_KEEPALIVE = 5.0
assert KEEP_ALIVE > 2 * CLIENT_KEEPALIVE


def recording_upstream(calls: list[dict]) -> Starlette:
    async def chat(request: Request):
        body = orjson.loads(await request.body())
        seen = {
            "auth": request.headers.get("authorization"),
            "model": body["model"],
            "system": body["messages"][0]["content"],
            "tag": body["messages"][-1]["content"],
        }
        calls.append(seen)
        await asyncio.sleep(random.uniform(0, 0.02))
        text = orjson.dumps(seen).decode()
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": "c",
                    "object": "chat.completion",
                    "created": 1,
                    "model": body["model"],
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                    ],
                }
            )

        async def events() -> AsyncIterator[bytes]:
            for part in (text[: len(text) // 2], text[len(text) // 2 :]):
                chunk = {
                    "id": "c",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": body["model"],
                    "choices": [{"index": 0, "delta": {"content": part}, "finish_reason": None}],
                }
                yield b"data: " + orjson.dumps(chunk) + b"\n\n"
                await asyncio.sleep(random.uniform(0, 0.01))
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


class CheckingTurns(DirectTurns):
    """The default runner, asserting the bound profile at every step of every turn."""

    mismatches: list[str] = []

    def _check(self, profile: Profile) -> None:
        if current_profile() is not profile:
            self.mismatches.append(profile.name)

    async def complete(self, turn):
        profile = turn.profile
        self._check(profile)
        answer = await super().complete(turn)
        self._check(profile)
        return answer

    def stream(self, turn):
        profile = turn.profile
        inner = super().stream(turn)
        check = self._check

        class Checked:
            async def __aenter__(self):
                chunks = await inner.__aenter__()

                async def iterate():
                    async for chunk in chunks:
                        check(profile)  # runs while the response body is being sent
                        yield chunk

                return iterate()

            async def __aexit__(self, *exc):
                return await inner.__aexit__(*exc)

        return Checked()


@pytest.mark.slow
def test_interleaved_requests_never_cross_profiles(tmp_path, live, make_settings, home: HermesHome) -> None:
    calls: list[dict] = []
    up = live(recording_upstream(calls))
    for name in PROFILES:
        home.add(
            name,
            model={"default": f"model-{name}", "provider": "custom", "base_url": up.url + "/v1", "key_env": "K"},
            env={"K": f"sk-secret-{name}"},
            soul=f"SOUL-OF-{name}",
            memory=[f"MEMORY-OF-{name}"],
            user=[f"USER-OF-{name}"],
        )
    settings = make_settings(
        expose=PROFILES, default_profile="p0", routes=[{"chat_id": f"room-{n}", "profile": n} for n in PROFILES]
    )
    CheckingTurns.mismatches = []
    server = live(create_app(settings, environ={}, turn_runner=CheckingTurns))

    async def one(client: httpx.AsyncClient, i: int) -> tuple[str, str, dict]:
        name = random.choice(PROFILES)
        how, responses = i % 4, i % 3 == 0  # every third one through the Responses API
        path = "/v1/responses" if responses else "/v1/chat/completions"
        url, headers = path, {}
        body: dict = {"input": f"tag-{i}"} if responses else {"messages": [{"role": "user", "content": f"tag-{i}"}]}
        if how == 0:
            body["model"] = name
        elif how == 1:
            headers["X-Hermes-Profile"] = name
        elif how == 2:
            url = f"/p/{name}{path}"
        else:
            headers["X-Hermes-Chat-Id"] = f"room-{name}"
        body["stream"] = i % 2 == 0
        r = await client.post(url, json=body, headers=headers)
        assert r.status_code == 200, r.text
        text, models, complete, _ = read_answer(r, responses, body["stream"])
        assert complete and models == {name} and r.headers["x-hermes-profile"] == name
        return name, f"tag-{i}", orjson.loads(text)

    async def run_all() -> list:
        limits = httpx.Limits(max_connections=64, keepalive_expiry=CLIENT_KEEPALIVE)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=30) as client:
            return await asyncio.gather(*(one(client, i) for i in range(REQUESTS)))

    results = asyncio.run(run_all())
    crossed = 0
    for name, tag, seen in results:
        others = [n for n in PROFILES if n != name]
        ok = (
            seen["tag"] == tag
            and seen["auth"] == f"Bearer sk-secret-{name}"
            and seen["model"] == f"model-{name}"
            and f"SOUL-OF-{name}" in seen["system"]
            and f"MEMORY-OF-{name}" in seen["system"]
            and f"USER-OF-{name}" in seen["system"]
            and not any(f"-OF-{o}" in seen["system"] for o in others)
        )
        crossed += not ok
    assert crossed == 0
    assert len(calls) == REQUESTS
    # Every upstream call carried one profile's secret, model and persona together.
    for call in calls:
        owner = call["model"].removeprefix("model-")
        assert call["auth"] == f"Bearer sk-secret-{owner}" and call["system"].startswith(f"SOUL-OF-{owner}")
    assert CheckingTurns.mismatches == []


def test_a_pipelined_request_starts_with_no_profile_bound(make_app, live) -> None:
    """HTTP/1.1 pipelining: uvicorn starts the second request from inside the first
    one's last ``send``, where the first one's profile is bound. The second request
    must still start unbound: a route that is not routed sees no profile at all."""

    async def bound(request: Request) -> JSONResponse:
        try:
            return JSONResponse({"profile": current_profile().name})
        except LookupError:
            return JSONResponse({"profile": None})

    app = make_app()
    app.router.routes.insert(0, Route("/test/bound", bound))
    server = live(app)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(
            b"GET /v1/models/alpha HTTP/1.1\r\nHost: x\r\n\r\n"  # runs bound to alpha
            b"GET /test/bound HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        answer = b""
        while data := s.recv(65536):
            answer += data
    first, second = answer.split(b"HTTP/1.1 200 OK")[1:]
    assert b'"id":"alpha"' in first
    assert orjson.loads(second.partition(b"\r\n\r\n")[2]) == {"profile": None}


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(1234)


LOAD_PROFILES = [f"q{i:02d}" for i in range(24)]
LOAD_KEYS = 6  # key k<i> may use profiles q<j> with j % 6 == i; key "all" may use every one
LOAD_REQUESTS = int(os.environ.get("HERMES_API_ISOLATION_REQUESTS", "3000"))
AT_ONCE = 64
# What a conversation is: one chat request, a chat session (X-Hermes-Session-Id) of
# several turns, one Responses request, a previous_response_id chain, a response with
# store: false, a request for a profile the key may not use, or a function-call loop
# (a call, then its output; stored or with the history resent). Weights per kind.
KINDS = {"chat": 2, "session": 4, "response": 2, "chain": 4, "unstored": 1, "forbidden": 2, "tools": 2}
SESSION_IDS = 12  # few, so the same session id is used under many keys and profiles


@dataclass
class Conversation:
    """One conversation of the load test, its turns sent one after the other."""

    index: int
    key: str
    profile: str
    kind: str
    turns: int
    how: int  # how the profile is chosen: 0 model, 1 X-Hermes-Profile, 2 /p/ prefix, 3 a route
    session: str | None = None
    said: list[tuple[str, str]] = field(default_factory=list)  # (tag, answer) of each turn so far
    last_id: str | None = None
    stored: bool = True  # a function-call loop: stored (previous_response_id), or store: false


@dataclass
class Load:
    """What the load test did and saw."""

    keys: dict[str, str]
    allowed: dict[str, set[str]]
    stored: dict[str, tuple[str, str]] = field(default_factory=dict)  # response id -> (key, profile)
    counts: Counter = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)


def plan(keys: dict[str, str], allowed: dict[str, set[str]], rng: random.Random) -> list[Conversation]:
    """Conversations adding up to about LOAD_REQUESTS requests."""
    out: list[Conversation] = []
    sessions: set[tuple[str, str, str]] = set()
    total = 0
    while total < LOAD_REQUESTS:
        key = rng.choice(sorted(keys))
        kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
        if kind == "forbidden" and key == "all":
            kind = "chat"
        pool = sorted(set(LOAD_PROFILES) - allowed[key]) if kind == "forbidden" else sorted(allowed[key])
        conv = Conversation(len(out), key, rng.choice(pool), kind, 1, how=len(out) % 4)
        if kind in ("session", "chain"):
            conv.turns = rng.randint(2, 5)
        if kind == "tools":
            conv.turns = 2
            conv.stored = rng.random() < 0.5
        if kind == "session":
            # Mostly an id this key uses with another profile, or another key with this
            # one: a store that mixed them up would replay the other session's turns.
            free = [f"s{n}" for n in range(SESSION_IDS) if (key, conv.profile, f"s{n}") not in sessions]
            shared = [s for s in free if any(k == key or p == conv.profile for k, p, o in sessions if o == s)]
            if not free:
                continue
            conv.session = rng.choice(shared if shared and rng.random() < 0.8 else free)
            sessions.add((key, conv.profile, conv.session))
        out.append(conv)
        total += conv.turns + (kind == "unstored") + (kind == "chain")  # a read-back; a hijack try
    return out


def routed(conv: Conversation, path: str, keys: dict[str, str], body: dict) -> tuple[str, dict[str, str]]:
    """The URL and headers that choose ``conv.profile`` its way; ``body`` gets ``model``."""
    headers = {"Authorization": f"Bearer {keys[conv.key]}"}
    if conv.how == 0:
        body["model"] = conv.profile
    elif conv.how == 1:
        headers["X-Hermes-Profile"] = conv.profile
    elif conv.how == 2:
        path = f"/p/{conv.profile}{path}"
    else:
        headers["X-Hermes-Chat-Id"] = f"room-{conv.profile}"
    return path, headers


def sse_data(text: str) -> list[dict]:
    return [orjson.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


def read_answer(r: httpx.Response, responses: bool, stream: bool) -> tuple[str, set[str], bool, str | None]:
    """(answer text, the models the answer names, whether it ended well, response id)."""
    if not responses:
        if stream:
            datas = sse_data(r.text)
            text = "".join(d["choices"][0]["delta"].get("content", "") for d in datas)
            return text, {d["model"] for d in datas}, r.text.rstrip().endswith("data: [DONE]"), None
        return r.json()["choices"][0]["message"]["content"], {r.json()["model"]}, True, None
    if stream:
        events = sse_data(r.text)
        final = events[-1]["response"]
        text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
        ok = (
            events[-1]["type"] == "response.completed"
            and final["output"][0]["content"][0]["text"] == text
            and events[0]["response"]["id"] == final["id"]
        )
        return text, {events[0]["response"]["model"], final["model"]}, ok, final["id"]
    final = r.json()
    return final["output"][0]["content"][0]["text"], {final["model"]}, final["status"] == "completed", final["id"]


def expected_history(conv: Conversation) -> list[list[str]]:
    """The turns the provider must be sent before this one: this conversation's own."""
    out = []
    for tag, answer in conv.said:
        out += [["user", fingerprint(tag)], ["assistant", fingerprint(answer)]]
    return out


async def turn(client: httpx.AsyncClient, load: Load, conv: Conversation, n: int, rng: random.Random) -> None:
    """Send turn ``n`` of ``conv`` and check every part of its answer."""
    if conv.kind == "tools":
        return await tool_turn(client, load, conv, n, rng)
    tag, stream = f"t{conv.index}-{n}", rng.random() < 0.5
    responses = conv.kind in ("response", "chain", "unstored") or (conv.kind == "forbidden" and conv.index % 2 == 0)
    body: dict = {"stream": stream}
    instructions = None
    if responses:
        body["input"] = tag
        if conv.last_id:
            body["previous_response_id"] = conv.last_id
        if rng.random() < 0.5:
            instructions = body["instructions"] = f"INSTR-{tag}"
        if conv.kind == "unstored":
            body["store"] = False
    else:
        body["messages"] = [{"role": "user", "content": tag}]
    path, headers = routed(conv, "/v1/responses" if responses else "/v1/chat/completions", load.keys, body)
    if conv.session:
        headers["X-Hermes-Session-Id"] = conv.session
    r = await client.post(path, json=body, headers=headers)
    load.counts["responses" if responses else "chat", "stream" if stream else "plain"] += 1
    if conv.kind == "forbidden":
        if not (r.status_code == 403 and r.json()["error"]["code"] == "model_not_found"):
            load.wrong.append(f"forbidden {conv}: {r.status_code} {r.text[:200]}")
        load.counts["refused"] += 1
        return
    if r.status_code != 200:
        load.wrong.append(f"{conv} turn {n}: {r.status_code} {r.text[:200]}")
        return
    load.counts["answered"] += 1
    text, models, complete, response_id = read_answer(r, responses, stream)
    seen = orjson.loads(text)
    wrong = problems(load, conv, r, seen, tag, models, complete, expected_history(conv), instructions)
    if wrong:
        load.wrong.append(f"{conv} turn {n}: {wrong}; it saw {seen}")
    conv.said.append((tag, text))
    conv.last_id = response_id
    if responses and conv.kind != "unstored":
        load.stored[response_id] = (conv.key, conv.profile)


def problems(
    load: Load, conv: Conversation, r: httpx.Response, seen: dict, tag: str, models: set[str], complete: bool,
    history: list[list], instructions: str | None = None,
) -> list[str]:  # fmt: skip
    """What is wrong with an answer, given what the provider said it saw (``seen``)."""
    name, system = conv.profile, seen["system"]
    checks = {
        "incomplete": not complete,
        "model in the answer": models != {name} or r.headers["x-hermes-profile"] != name,
        "tag": seen["tag"] != tag,
        "provider key": seen["auth"] != f"Bearer sk-secret-{name}",
        "upstream model": seen["model"] != f"model-{name}",
        "persona or memory": not all(f"{kind}-OF-{name}" in system for kind in ("SOUL", "MEMORY", "USER")),
        "another profile's persona": any(f"-OF-{o}" in system for o in LOAD_PROFILES if o != name),
        "instructions": system.count("INSTR-") != (instructions is not None)
        or (instructions is not None and instructions not in system),
        "history": seen["history"] != history,
        "a client key": any(v in r.text for v in load.keys.values()),
        "session header": conv.session is not None and r.headers.get("x-hermes-session-id") != conv.session,
    }
    return [k for k, v in checks.items() if v]


TOOL = {"type": "function", "name": "lookup", "parameters": {"type": "object"}}


def read_call(r: httpx.Response, stream: bool) -> tuple[dict | None, set[str], bool, str]:
    """(the one function_call item, the models the answer names, whether it ended
    well and the streamed arguments add up to it, response id)."""
    if not stream:
        final = r.json()
        calls = [i for i in final["output"] if i["type"] == "function_call"]
        return (calls[0] if len(calls) == 1 else None), {final["model"]}, final["status"] == "completed", final["id"]
    events = sse_data(r.text)
    final = events[-1]["response"]
    calls = [i for i in final["output"] if i["type"] == "function_call"]
    streamed = "".join(e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta")
    ok = events[-1]["type"] == "response.completed" and len(calls) == 1 and calls[0]["arguments"] == streamed
    return (calls[0] if calls else None), {events[0]["response"]["model"], final["model"]}, ok, final["id"]


async def tool_turn(client: httpx.AsyncClient, load: Load, conv: Conversation, n: int, rng: random.Random) -> None:
    """The function-call loop, in two turns. Turn 0 asks with a function tool, stored or
    not: the provider calls it, the echo of what it saw as the call's arguments. Turn 1
    sends the call's output through ``previous_response_id``, or with the whole history
    resent (``store: false``): the provider must get this conversation's question and
    call before the output, and nothing of any other."""
    body: dict = {"stream": rng.random() < 0.5, "tools": [TOOL]}
    first = f"t{conv.index}-0"
    if n == 0:
        tag, body["input"], history = first, first, []
        if not conv.stored:
            body["store"] = False
    else:
        call = conv.said[0][1]
        output = {"type": "function_call_output", "call_id": call["call_id"], "output": f"out-{first}"}
        tag, history = output["output"], [["user", first], ["assistant", "null", [f"call-{first}"]]]
        if not conv.stored:
            body |= {"store": False, "input": [{"role": "user", "content": first}, call, output]}
        else:
            body |= {"previous_response_id": conv.last_id, "input": [output]}
    path, headers = routed(conv, "/v1/responses", load.keys, body)
    r = await client.post(path, json=body, headers=headers)
    load.counts["tools", "stream" if body["stream"] else "plain"] += 1
    if r.status_code != 200:
        load.wrong.append(f"{conv} turn {n}: {r.status_code} {r.text[:200]}")
        return
    load.counts["answered"] += 1
    if n == 0:
        call, models, complete, response_id = read_call(r, body["stream"])
        ok = call is not None and call["call_id"] == f"call-{first}" and call["name"] == "lookup"
        seen = orjson.loads(call["arguments"]) if ok else {}
        conv.said.append((tag, call))
    else:
        text, models, complete, response_id = read_answer(r, True, body["stream"])
        ok, seen = True, orjson.loads(text)
    wrong = problems(load, conv, r, seen, tag, models, complete, history) if ok else ["the call"]
    if wrong:
        load.wrong.append(f"{conv} turn {n}: {wrong}; it saw {seen}")
    conv.last_id = response_id
    if conv.stored:
        load.stored[response_id] = (conv.key, conv.profile)


async def hijack(client: httpx.AsyncClient, load: Load, conv: Conversation, rng: random.Random) -> None:
    """Continue another key's or profile's response: 404, and the provider is not called."""
    others = [rid for rid, owner in load.stored.items() if owner != (conv.key, conv.profile)]
    if not others:
        return
    body: dict = {"input": f"t{conv.index}-hijack", "previous_response_id": rng.choice(others)}
    path, headers = routed(conv, "/v1/responses", load.keys, body)
    r = await client.post(path, json=body, headers=headers)
    load.counts["hijacks"] += 1
    error = r.json().get("error") or {}
    if r.status_code != 404 or (error.get("code"), error.get("param")) != (
        "response_not_found",
        "previous_response_id",
    ):
        load.wrong.append(f"hijack by {conv}: {r.status_code} {r.text[:300]}")


async def converse(
    client: httpx.AsyncClient, gate: asyncio.Semaphore, load: Load, conv: Conversation, rng: random.Random
) -> None:
    for n in range(conv.turns):
        async with gate:
            if conv.kind == "chain" and n == 1:
                await hijack(client, load, conv, rng)
            await turn(client, load, conv, n, rng)
    if conv.kind == "unstored" and conv.last_id:
        async with gate:
            headers = {"Authorization": f"Bearer {load.keys[conv.key]}"}
            r = await client.get(f"/v1/responses/{conv.last_id}", headers=headers)
            load.counts["unstored read back"] += 1
            if r.status_code != 404:
                load.wrong.append(f"store: false was stored: {conv}")


async def cross_reads(url: str, load: Load) -> Counter:
    """Every stored response, asked for with every other key and, with its own key,
    through every other profile (X-Hermes-Profile and the /p/ prefix, alternately),
    plus its input items and a DELETE with another key; then read with its own key and
    profile, which must still work. Returns the statuses seen per kind of attempt."""
    seen: Counter = Counter()
    gate = asyncio.Semaphore(AT_ONCE)
    keys = load.keys

    async def attempt(session: aiohttp.ClientSession, kind: str, method: str, path: str, key: str, **kw) -> None:
        async with gate:
            headers = {"Authorization": f"Bearer {keys[key]}", **kw}
            async with session.request(method, url + path, headers=headers) as r:
                body = await r.read()
        code = orjson.loads(body)["error"]["code"] if r.status >= 400 else "ok"
        seen[kind, r.status, code] += 1

    async def one(session: aiohttp.ClientSession, i: int, rid: str, owner: str, profile: str) -> None:
        others = [k for k in sorted(keys) if k != owner]
        tries = [attempt(session, "other key", "GET", f"/v1/responses/{rid}", k) for k in others]
        for j, p in enumerate(o for o in LOAD_PROFILES if o != profile):
            kind = "other profile, allowed" if p in load.allowed[owner] else "other profile, not allowed"
            if j % 2:
                tries.append(attempt(session, kind, "GET", f"/p/{p}/v1/responses/{rid}", owner))
            else:
                tries.append(attempt(session, kind, "GET", f"/v1/responses/{rid}", owner, **{"X-Hermes-Profile": p}))
        tries.append(attempt(session, "other key", "GET", f"/v1/responses/{rid}/input_items", others[i % 6]))
        tries.append(attempt(session, "other key", "DELETE", f"/v1/responses/{rid}", others[(i + 1) % 6]))
        await asyncio.gather(*tries)
        await attempt(session, "own key and profile", "GET", f"/v1/responses/{rid}", owner)

    connector = aiohttp.TCPConnector(limit=AT_ONCE, keepalive_timeout=CLIENT_KEEPALIVE)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(one(session, i, rid, *owner) for i, (rid, owner) in enumerate(load.stored.items())))
    return seen


def load_setup(home: HermesHome, fake_upstream: FakeUpstream, tmp_path) -> tuple[Path, dict[str, str], dict]:
    """The load test's 24 profiles (each its own persona, memory, model and provider
    secret, all on the echoing provider) and 7 keys; returns the config file, the keys
    by name and the profiles each key may use."""
    for name in LOAD_PROFILES:
        home.add(
            name,
            model={
                "default": f"model-{name}",
                "provider": "custom",
                "base_url": fake_upstream.base_url("echo"),
                "key_env": "K",
            },
            env={"K": f"sk-secret-{name}"},
            soul=f"SOUL-OF-{name}",
            memory=[f"MEMORY-OF-{name}"],
            user=[f"USER-OF-{name}"],
        )
    keys = {f"k{i}": f"client-key-{i}-" + "x" * 20 for i in range(LOAD_KEYS)} | {"all": "client-key-all-" + "y" * 20}
    allowed = {f"k{i}": {p for j, p in enumerate(LOAD_PROFILES) if j % LOAD_KEYS == i} for i in range(LOAD_KEYS)}
    allowed["all"] = set(LOAD_PROFILES)
    config = tmp_path / "hermes-api.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "hermes_home": str(home.root),
                "expose": LOAD_PROFILES,
                "default_profile": None,
                "keys": [
                    {"name": k, "key_sha256": digest(v), "profiles": "*" if k == "all" else sorted(allowed[k])}
                    for k, v in keys.items()
                ],
                "routes": [{"chat_id": f"room-{n}", "profile": n} for n in LOAD_PROFILES],
                "log_level": "warning",
            }
        )
    )
    return config, keys, allowed


@pytest.mark.slow
def test_thousands_of_requests_across_profiles_and_keys(
    fake_upstream: FakeUpstream, home: HermesHome, tmp_path, serve_process
) -> None:
    """``hermes-api serve`` in its own process, the echoing provider in another: about
    3000 interleaved requests over 24 profiles and 7 keys, chat and Responses, streamed
    and not, the profile chosen by model, header, prefix and route; chat sessions
    (whose ids collide across keys and profiles) and previous_response_id chains of up
    to 5 turns, tries to continue another key's or profile's response, ``store: false``
    answers, function-call loops (the provider calls a tool; its output goes back through
    the chain or with the history resent), and requests for a profile the key may not
    use. Every answer and every
    upstream call carries its own profile's secret, model and persona and exactly its
    own conversation's earlier turns; the refused requests never reach the provider.
    Then every stored response is asked for with every other key and through every
    other profile: none is readable."""
    config, keys, allowed = load_setup(home, fake_upstream, tmp_path)
    server = serve_process(config, tmp_path / "serve.log")
    rng = random.Random(5)
    load = Load(keys, allowed)
    conversations = plan(keys, allowed, rng)
    before = fake_upstream.stats()["requests"]

    async def run_all() -> None:
        # AT_ONCE requests in flight: httpx's own pool queue grows costly with thousands waiting.
        gate = asyncio.Semaphore(AT_ONCE)
        limits = httpx.Limits(max_connections=AT_ONCE, keepalive_expiry=CLIENT_KEEPALIVE)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=60) as client:
            await asyncio.gather(*(converse(client, gate, load, conv, rng) for conv in conversations))

    started = time.monotonic()
    asyncio.run(run_all())
    took = time.monotonic() - started
    sent = sum(v for k, v in load.counts.items() if isinstance(k, tuple)) + load.counts["hijacks"]
    sent += load.counts["unstored read back"]
    print(
        f"\n{sent} requests in {took:.1f} s over {len(LOAD_PROFILES)} profiles and {len(keys)} keys: "
        f"{dict(sorted((' '.join(k) if isinstance(k, tuple) else k, v) for k, v in load.counts.items()))}; "
        f"{len(conversations)} conversations ({dict(Counter(c.kind for c in conversations))}); "
        f"{len(load.wrong)} wrong"
    )
    assert load.wrong[:3] == []
    assert sent >= LOAD_REQUESTS * 0.9
    assert fake_upstream.stats()["requests"] - before == load.counts["answered"], "refused requests never go upstream"

    started = time.monotonic()
    seen = asyncio.run(cross_reads(server.url, load))
    took = time.monotonic() - started
    tries = sum(seen.values())
    print(
        f"{len(load.stored)} stored responses, {tries} reads by other keys or through other profiles in "
        f"{took:.1f} s: {dict(sorted((f'{k[0]} {k[1]} {k[2]}', v) for k, v in seen.items()))}"
    )
    expected = {
        ("other key", 404, "response_not_found"),
        ("other profile, allowed", 404, "response_not_found"),
        ("other profile, not allowed", 403, "model_not_found"),
        ("own key and profile", 200, "ok"),
    }
    assert set(seen) == expected
    assert seen["own key and profile", 200, "ok"] == len(load.stored)
