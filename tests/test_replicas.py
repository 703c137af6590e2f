"""Replicas on one PostgreSQL database: two ``hermes-api serve`` processes share stored
responses, chains, chat sessions and usage; a replica killed with SIGKILL loses nothing
it acknowledged; PostgreSQL restarted under load gives clear 503s while it is down,
loses nothing acknowledged, and the service comes back by itself.

Real processes on loopback: the servers, the echoing provider (``tests/fakeupstream.py``,
whose answers say what each call carried, earlier turns included) and a PostgreSQL
cluster of the test's own (``conftest.PostgresCluster``). Everything is stopped by PID.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import psycopg
import pytest
import yaml

from .conftest import FakeUpstream, HermesHome, PostgresCluster, ServeProcess, digest

KEY = "replica-test-key-" + "k" * 16
AUTH = {"Authorization": f"Bearer {KEY}"}


def replica_config(tmp_path: Path, home: HermesHome, fake_upstream: FakeUpstream) -> Path:
    home.add("alpha", model={"default": "m-alpha", "provider": "custom", "base_url": fake_upstream.base_url("echo")})
    config = tmp_path / "hermes-api.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "hermes_home": str(home.root),
                "expose": ["alpha"],
                "default_profile": "alpha",
                "keys": [{"name": "team", "key_sha256": digest(KEY)}],
                "store": {"url_env": "HERMES_API_STORE_URL", "timeout": 5},
                "log_level": "info",
            }
        )
    )
    return config


@pytest.fixture
def replicas(
    tmp_path: Path, home: HermesHome, fake_upstream: FakeUpstream, serve_process
) -> Callable[[str, int], list[ServeProcess]]:
    """``start(url, n)``: n replicas on the database at ``url``, each with its own log."""
    config = replica_config(tmp_path, home, fake_upstream)

    def start(url: str, n: int = 2) -> list[ServeProcess]:
        return [serve_process(config, tmp_path / f"replica-{i}.log", {"HERMES_API_STORE_URL": url}) for i in range(n)]

    return start


def said(response: httpx.Response) -> dict:
    """What the echoing provider saw, from a Responses answer."""
    return orjson.loads(response.json()["output"][0]["content"][0]["text"])


def test_a_response_made_on_one_replica_is_read_chained_and_deleted_on_the_other(replicas, postgres_url) -> None:
    a, b = replicas(postgres_url)
    with httpx.Client(timeout=20, headers=AUTH) as client:
        first = client.post(f"{a.url}/v1/responses", json={"input": "remember: teal"})
        assert first.status_code == 200, first.text
        rid = first.json()["id"]
        got = client.get(f"{b.url}/v1/responses/{rid}")
        assert got.status_code == 200 and got.json() == first.json()
        items = client.get(f"{b.url}/v1/responses/{rid}/input_items").json()["data"]
        assert items[0]["content"][0]["text"] == "remember: teal"
        second = client.post(f"{b.url}/v1/responses", json={"input": "which colour?", "previous_response_id": rid})
        assert second.status_code == 200
        assert [m[0] for m in said(second)["history"]] == ["user", "assistant"]
        assert said(second)["history"][0][1] == "remember: teal"
        assert client.delete(f"{b.url}/v1/responses/{rid}").json()["deleted"] is True
        assert client.get(f"{a.url}/v1/responses/{rid}").status_code == 404
        # The chat session goes on from one replica to the other.
        session = {"X-Hermes-Session-Id": "across-replicas"}
        for i, server in enumerate((a, b, a)):
            body = {"messages": [{"role": "user", "content": f"turn {i}"}]}
            r = client.post(f"{server.url}/v1/chat/completions", json=body, headers=session)
            history = orjson.loads(r.json()["choices"][0]["message"]["content"])["history"]
            assert [m[1] for m in history if m[0] == "user"] == [f"turn {n}" for n in range(i)]
    # Usage rows are written just after each answer: wait for the five, briefly.
    for _ in range(50):
        with psycopg.connect(postgres_url) as conn:
            rows = conn.execute("SELECT key_name, operation, status FROM usage ORDER BY seq").fetchall()
        if len(rows) >= 5:
            break
        time.sleep(0.1)
    assert sorted(rows) == [("team", "create_chat_completion", 200)] * 3 + [("team", "create_response", 200)] * 2
    for server in (a, b):
        assert PostgresCluster.PASSWORD not in server.log()


N = 60  # acknowledged responses that must survive
SENT = 120
CONCURRENCY = 8


async def store_until_killed(server: ServeProcess) -> dict[str, str]:
    """Send SENT requests, CONCURRENCY at a time, to ``server``; SIGKILL it the moment
    the N-th answer is in (others are in flight then). Returns the acknowledged ids and
    their texts."""
    acked: dict[str, str] = {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(SENT):
        queue.put_nowait(i)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty() and len(acked) < N:
            i = queue.get_nowait()
            try:
                r = await client.post("/v1/responses", json={"input": f"note {i}"})
            except httpx.HTTPError:
                return  # the server is gone
            if r.status_code == 200 and len(acked) < N:
                acked[r.json()["id"]] = r.json()["output"][0]["content"][0]["text"]
                if len(acked) == N:
                    server.process.kill()

    async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=30) as client:
        await asyncio.wait_for(asyncio.gather(*(worker(client) for _ in range(CONCURRENCY))), timeout=120)
    return acked


def test_a_replica_killed_under_load_loses_nothing_it_acknowledged(replicas, postgres_url) -> None:
    a, b = replicas(postgres_url)
    acked = asyncio.run(store_until_killed(a))
    assert a.process.wait(timeout=15) < 0 and len(acked) == N
    with httpx.Client(base_url=b.url, headers=AUTH, timeout=20) as client:
        for rid, text in acked.items():
            r = client.get(f"/v1/responses/{rid}")
            assert r.status_code == 200, (rid, r.text)
            assert r.json()["output"][0]["content"][0]["text"] == text
    print(f"\n{N} acknowledged by replica A of {SENT} sent, SIGKILL: all {N} read from replica B")


@pytest.fixture
def own_cluster() -> Iterator[PostgresCluster]:
    """A cluster this test may stop and start."""
    cluster = PostgresCluster()
    try:
        yield cluster
    finally:
        cluster.remove()


def test_postgresql_restarted_under_load(replicas, own_cluster: PostgresCluster) -> None:
    """Both replicas under a steady load while PostgreSQL stops for a few seconds and
    starts again: every answer is a 200 or a 503 ``store_unavailable`` (nothing else,
    no hang), every acknowledged response is readable afterwards, and both replicas
    answer 200 again without being touched."""
    url = own_cluster.create_database("replicas")
    servers = replicas(url)
    acked: dict[str, str] = {}
    seen: Counter = Counter()
    phase = {"now": "before"}

    async def load(client: httpx.AsyncClient, worker: int) -> None:
        i = 0
        while phase["now"] != "done":
            server = servers[(worker + i) % 2]
            i += 1
            r = await client.post(f"{server.url}/v1/responses", json={"input": f"w{worker}-{i}"})
            code = r.json()["error"]["code"] if r.status_code != 200 else "ok"
            seen[phase["now"], r.status_code, code] += 1
            if r.status_code == 200:
                acked[r.json()["id"]] = server.url
            else:
                await asyncio.sleep(0.05)

    async def outage() -> float:
        await asyncio.sleep(2)
        phase["now"] = "down"
        await asyncio.to_thread(own_cluster.stop)
        await asyncio.sleep(3)
        await asyncio.to_thread(own_cluster.start)
        phase["now"] = "restarted"
        started = time.monotonic()
        async with httpx.AsyncClient(headers=AUTH, timeout=10) as probe:
            while time.monotonic() - started < 60:  # both replicas must come back by themselves
                answers = [await probe.post(f"{s.url}/v1/responses", json={"input": "probe"}) for s in servers]
                if all(r.status_code == 200 for r in answers):
                    break
                await asyncio.sleep(0.2)
        back = time.monotonic() - started
        await asyncio.sleep(1)
        phase["now"] = "done"
        return back

    async def run() -> float:
        async with httpx.AsyncClient(headers=AUTH, timeout=30) as client:
            results = await asyncio.wait_for(
                asyncio.gather(outage(), *(load(client, w) for w in range(6))), timeout=150
            )
        return results[0]

    back = asyncio.run(run())
    print(f"\nrestart under load: {dict(sorted(seen.items()))}; both replicas answering again {back:.1f} s after")
    assert back < 60, "the replicas did not come back by themselves"
    assert {(status, code) for (_, status, code) in seen} <= {(200, "ok"), (503, "store_unavailable")}
    assert seen["down", 503, "store_unavailable"] > 0 and seen["restarted", 200, "ok"] > 0
    with httpx.Client(headers=AUTH, timeout=20) as client:
        for rid, made_on in acked.items():
            other = next(s.url for s in servers if s.url != made_on)
            assert client.get(f"{other}/v1/responses/{rid}").status_code == 200, rid
    for server in servers:
        log = server.log()
        assert "the response store (PostgreSQL) is unreachable" in log
        assert "the response store (PostgreSQL) is reachable again" in log
        assert PostgresCluster.PASSWORD not in log
    print(f"{len(acked)} acknowledged, all read back from the other replica")
