"""Clients that walk away mid-stream: the upstream request ends with them.

200 streams are opened against a provider that would stream for ever (a chunk every
50 ms); each client reads the first chunk and closes its connection. The provider
process records when each of its streams saw its client (hermes-api's pool) go. Every
upstream stream must end, each soon after its client left, and no upstream connection
may stay open: counted by the provider and, independently, in ``/proc/net/tcp``.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import httpx
import pytest

from hermes_api.app import create_app

from .conftest import FakeUpstream, HermesHome

STREAMS = 200
AT_ONCE = 20
ESTABLISHED = "01"


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


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux's /proc/net/tcp")
def test_abandoned_streams_cancel_their_upstream_requests(
    fake_upstream: FakeUpstream, home: HermesHome, make_settings, live
) -> None:
    home.add("endless", model={"default": "m", "provider": "custom", "base_url": fake_upstream.base_url("forever")})
    server = live(create_app(make_settings(expose=["default", "endless"]), environ={}))
    left_at: dict[str, float] = {}

    async def abandon(client: httpx.AsyncClient, tag: str) -> None:
        body = {"model": "endless", "stream": True, "messages": [{"role": "user", "content": tag}]}
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            lines = r.aiter_lines()
            async for line in lines:
                if line.startswith("data: "):
                    break
            left_at[tag] = time.monotonic()
            await lines.aclose()
        # Leaving the block mid-body closes this connection: the client is gone.

    async def run() -> None:
        # A fresh connection per stream, as a browser tab or an SDK that gives up would.
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=server.url, timeout=20, limits=limits) as client:
            for start in range(0, STREAMS, AT_ONCE):
                await asyncio.gather(*(abandon(client, f"abandon-{i}") for i in range(start, start + AT_ONCE)))

    asyncio.run(run())
    assert len(left_at) == STREAMS

    deadline = time.monotonic() + 10
    while True:
        stats = fake_upstream.stats()
        streams = {tag: s for tag, s in stats["streams"].items() if tag in left_at}
        if all(s["ended"] is not None for s in streams.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(streams) == STREAMS
    assert all(s["client_left"] for s in streams.values()), "every upstream stream ended because its client left"
    latencies = sorted(s["ended"] - left_at[tag] for tag, s in streams.items())
    print(
        f"\nupstream cancel latency over {STREAMS} abandoned streams: median "
        f"{statistics.median(latencies) * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms"
    )
    # "Within a second", with a margin for a loaded 2-core machine.
    assert latencies[-1] < 5, f"slowest upstream cancel took {latencies[-1]:.2f} s"
    assert statistics.median(latencies) < 1

    # Nothing left open: the provider's count (less the /stats request itself) and the kernel's.
    assert stats["open"] - 1 == 0, stats["open"]
    assert established(fake_upstream.port) == (0, 0)
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": "default", "messages": []})
    assert r.status_code == 400, "the server goes on serving"
