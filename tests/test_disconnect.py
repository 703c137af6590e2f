"""Clients that walk away, mid-stream or waiting for a non-streamed answer: the upstream
request ends with them, and their concurrency slot is free at once.

200 streams are opened against a provider that would stream for ever (a chunk every
50 ms); each client reads the first chunk and closes its connection. The provider
process records when each of its streams saw its client (hermes-api's pool) go. Every
upstream stream must end, each soon after its client left, and no upstream connection
may stay open: counted by the provider and, independently, in ``/proc/net/tcp``. The
same for 200 Responses API streams, none of which may be stored.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from hermes_api.app import create_app

from .conftest import FakeUpstream, HermesHome, LiveServer

STREAMS = 200
AT_ONCE = 20
ESTABLISHED = "01"

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux's /proc/net/tcp")


def established(port: int) -> tuple[int, int]:
    """(client side, server side) ESTABLISHED loopback TCP connections to ``port``."""
    clients = servers = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if state != ESTABLISHED:
                continue
            clients += int(remote.rsplit(":", 1)[1], 16) == port
            servers += int(local.rsplit(":", 1)[1], 16) == port
    return clients, servers


@pytest.fixture
def endless(fake_upstream: FakeUpstream, home: HermesHome, make_settings, live) -> LiveServer:
    """hermes-api under uvicorn; profile "endless" streams for ever, "quick" answers."""
    home.add("endless", model={"default": "m", "provider": "custom", "base_url": fake_upstream.base_url("forever")})
    home.add("quick", model={"default": "m", "provider": "custom", "base_url": fake_upstream.base_url("ok")})
    return live(create_app(make_settings(expose=["default", "endless", "quick"]), environ={}))


# Reads one streamed answer up to a point past the provider's first chunk; returns what
# the test keeps of it (the response id, for the Responses API).
Reader = Callable[[httpx.Response], Any]


def abandon_streams(server: LiveServer, path: str, body: Callable[[str], dict], read: Reader) -> dict[str, Any]:
    """Open STREAMS streams, AT_ONCE at a time, each on a fresh connection (as a browser
    tab or an SDK that gives up would), and leave each after ``read``. Returns, per tag,
    when it was left and what ``read`` returned."""
    left: dict[str, Any] = {}

    async def abandon(client: httpx.AsyncClient, tag: str) -> None:
        async with client.stream("POST", path, json=body(tag)) as r:
            assert r.status_code == 200
            kept = await read(r)
            left[tag] = (time.monotonic(), kept)
        # Leaving the block mid-body closes this connection: the client is gone.

    async def run() -> None:
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=server.url, timeout=20, limits=limits) as client:
            for start in range(0, STREAMS, AT_ONCE):
                await asyncio.gather(*(abandon(client, f"abandon-{i}") for i in range(start, start + AT_ONCE)))

    asyncio.run(run())
    assert len(left) == STREAMS
    return left


def assert_upstream_released(fake_upstream: FakeUpstream, left: dict[str, Any], what: str) -> None:
    """Every upstream stream ended because its client left, soon after; none is open."""
    deadline = time.monotonic() + 10
    while True:
        stats = fake_upstream.stats()
        streams = {tag: s for tag, s in stats["streams"].items() if tag in left}
        if all(s["ended"] is not None for s in streams.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(streams) == STREAMS
    assert all(s["client_left"] for s in streams.values()), "every upstream stream ended because its client left"
    latencies = sorted(s["ended"] - left[tag][0] for tag, s in streams.items())
    print(
        f"\nupstream cancel latency over {STREAMS} abandoned {what}: median "
        f"{statistics.median(latencies) * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms; "
        f"upstream connections open after: {stats['open'] - 1}, in /proc/net/tcp: {established(fake_upstream.port)}"
    )
    # "Within a second", with a margin for a loaded 2-core machine.
    assert latencies[-1] < 5, f"slowest upstream cancel took {latencies[-1]:.2f} s"
    assert statistics.median(latencies) < 1
    # Nothing left open: the provider's count (less the /stats request itself) and the kernel's.
    assert stats["open"] - 1 == 0, stats["open"]
    assert established(fake_upstream.port) == (0, 0)


def test_abandoned_streams_cancel_their_upstream_requests(fake_upstream: FakeUpstream, endless: LiveServer) -> None:
    async def first_chunk(r: httpx.Response) -> None:
        lines = r.aiter_lines()
        async for line in lines:
            if line.startswith("data: "):
                break
        await lines.aclose()

    def body(tag: str) -> dict:
        return {"model": "endless", "stream": True, "messages": [{"role": "user", "content": tag}]}

    left = abandon_streams(endless, "/v1/chat/completions", body, first_chunk)
    assert_upstream_released(fake_upstream, left, "chat streams")
    r = httpx.post(endless.url + "/v1/chat/completions", json={"model": "default", "messages": []})
    assert r.status_code == 400, "the server goes on serving"


def test_abandoned_responses_streams_end_upstream_and_are_not_stored(
    fake_upstream: FakeUpstream, endless: LiveServer, tmp_path: Path
) -> None:
    """The Responses API stream: each client reads ``response.created`` (its id) and
    the first ``response.output_text.delta`` (the provider is streaming), then leaves.
    Its upstream request ends as for chat, and the response is not stored: 404 for its
    id, no row in the database."""

    async def first_delta(r: httpx.Response) -> str:
        response_id = None
        lines = r.aiter_lines()
        async for line in lines:
            if line.startswith("data: "):
                event = orjson.loads(line[6:])
                if event["type"] == "response.created":
                    response_id = event["response"]["id"]
                elif event["type"] == "response.output_text.delta":
                    break
        await lines.aclose()
        assert response_id is not None
        return response_id

    def body(tag: str) -> dict:
        return {"model": "endless", "stream": True, "input": tag}

    left = abandon_streams(endless, "/v1/responses", body, first_delta)
    assert_upstream_released(fake_upstream, left, "Responses streams")
    with httpx.Client(base_url=endless.url, timeout=10) as client:
        readable = [rid for _, rid in left.values() if client.get(f"/v1/responses/{rid}").status_code != 404]
        assert readable == []
        # The server goes on serving, and a stream read to its end is stored.
        with client.stream("POST", "/v1/responses", json={"model": "quick", "input": "after", "stream": True}) as r:
            done = [orjson.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")][-1]
    assert done["type"] == "response.completed"
    db = sqlite3.connect(tmp_path / "state" / "responses.db")
    try:
        rows = db.execute("SELECT id, json_extract(body, '$.status') FROM responses").fetchall()
    finally:
        db.close()
    assert rows == [(done["response"]["id"], "completed")], f"abandoned streams were stored: {rows[:3]}"


def wait_for(condition: Callable[[], Any], seconds: float = 10) -> Any:
    """``condition()``'s first truthy value, looked at every 50 ms for ``seconds``; None
    if it never came."""
    deadline = time.monotonic() + seconds
    while not (value := condition()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


@pytest.mark.parametrize("behaviour", ["hang", "stall"], ids=["before-headers", "mid-body"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"], ids=["chat", "responses"])
def test_a_client_leaving_a_non_streamed_request_ends_it_and_frees_its_slot(
    fake_upstream: FakeUpstream, home: HermesHome, make_settings, live, path: str, behaviour: str
) -> None:
    """One slot in all (``max_concurrent: 1``). A client sends a non-streamed request
    whose provider never finishes its answer (silent before its headers, or mid-body),
    and closes its connection once the provider has the request. The provider sees its
    request's connection closed, and the next request, to another profile, is admitted
    at once, not refused with 429 until the provider would have given up."""
    home.add("held", model={"default": "m", "provider": "custom", "base_url": fake_upstream.base_url(behaviour)})
    home.add("quick", model={"default": "m", "provider": "custom", "base_url": fake_upstream.base_url("ok")})
    settings = make_settings(expose=["held", "quick"], default_profile="quick", max_concurrent=1)
    server = live(create_app(settings, environ={}))
    tag = f"non-streamed {behaviour} {path}"

    def request(profile: str, text: str) -> dict[str, Any]:
        if path == "/v1/responses":
            return {"model": profile, "input": text}
        return {"model": profile, "messages": [{"role": "user", "content": text}]}

    body = orjson.dumps(request("held", tag))
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"

    def held() -> dict[str, Any]:
        return fake_upstream.stats()["held"].get(tag) or {}

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
        client.sendall(head.encode() + body)
        assert wait_for(held), "the provider got the request"
    # The client has closed its connection.
    ended = wait_for(lambda: (record := held())["ended"] is not None and record)
    assert ended and ended["client_left"], "the provider saw its request's connection closed"
    r = httpx.post(server.url + path, json=request("quick", "next"), timeout=10)
    assert r.status_code == 200, r.text
