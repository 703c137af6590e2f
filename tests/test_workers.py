"""``hermes-api serve --workers 2``: two processes on one port, one SQLite store.

The isolation load of ``test_isolation`` (chat and Responses, sessions and chains, hijack
tries and refused profiles over 24 profiles and 7 keys) against two workers: nothing
crosses between profiles, keys or conversations, every stored response is readable
with its own key through either worker and with no other, the usage table has one
row per turn, so no write of either process was lost, and ``/metrics`` counts exactly
the requests sent, whichever worker answered them. ``HERMES_API_WORKERS_REQUESTS``
(default 1000) sets the size of the load.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from . import test_isolation as isolation
from .conftest import FakeUpstream, HermesHome, ServeProcess, integrity

REQUESTS = int(os.environ.get("HERMES_API_WORKERS_REQUESTS", "1000"))
PROBES = ("get_health", "get_ready", "get_metrics")  # operationIds the load never sends


def workers_of(server: ServeProcess) -> list[int]:
    """The PIDs of the server's worker processes: its children spawned by
    multiprocessing (not its resource tracker)."""
    pid = server.process.pid
    children = [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return [child for child in children if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]


def requests_counted(url: str) -> dict[tuple[str, str], float]:
    """``hermes_api_requests_total`` from ``GET /metrics`` as a scraper parses it, summed
    by (endpoint, status), the scrape's own and the readiness probes' left out."""
    text = httpx.get(url + "/metrics", timeout=10).text
    counted: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "hermes_api_requests_total" and sample.labels["endpoint"] not in PROBES:
                key = (sample.labels["endpoint"], sample.labels["status"])
                counted[key] = counted.get(key, 0) + sample.value
    return counted


def test_two_workers_under_the_isolation_load(
    fake_upstream: FakeUpstream, home: HermesHome, tmp_path: Path, serve_process, monkeypatch
) -> None:
    monkeypatch.setattr(isolation, "LOAD_REQUESTS", REQUESTS)
    config, keys, allowed = isolation.load_setup(home, fake_upstream, tmp_path)
    config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "metrics": True}))
    server = serve_process(config, tmp_path / "serve.log", args=("--workers", "2"))
    deadline = time.monotonic() + 20
    while len(workers_of(server)) < 2 and time.monotonic() < deadline:  # /health answered: one is up
        time.sleep(0.1)
    workers = workers_of(server)
    assert len(workers) == 2
    rng = random.Random(11)
    load = isolation.Load(keys, allowed)
    conversations = isolation.plan(keys, allowed, rng)

    async def run_all() -> None:
        gate = asyncio.Semaphore(isolation.AT_ONCE)
        # Idle connections are dropped well before uvicorn's keep-alive timeout (5 s), so
        # no request is sent on a connection the server is closing.
        limits = httpx.Limits(max_connections=isolation.AT_ONCE, keepalive_expiry=2)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=60) as client:
            await asyncio.gather(*(isolation.converse(client, gate, load, conv, rng) for conv in conversations))

    started = time.monotonic()
    asyncio.run(run_all())
    took = time.monotonic() - started
    assert load.wrong[:3] == []
    sent = sum(v for k, v in load.counts.items() if isinstance(k, tuple)) + load.counts["hijacks"]
    sent += load.counts["unstored read back"]
    # The two workers' counters, summed by the scrape: the worker that answers it sees the
    # other's as of that one's last flush (every second, metrics.FLUSH_INTERVAL).
    deadline = time.monotonic() + 15
    while sum((counted := requests_counted(server.url)).values()) < sent and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sum(counted.values()) == sent, counted
    seen = asyncio.run(isolation.cross_reads(server.url, load))
    assert set(seen) <= {
        ("other key", 404, "response_not_found"),
        ("other profile, allowed", 404, "response_not_found"),
        ("other profile, not allowed", 403, "model_not_found"),
        ("own key and profile", 200, "ok"),
    }
    assert seen["own key and profile", 200, "ok"] == len(load.stored), "a stored response was lost"
    assert workers_of(server) == workers, "no worker died"

    server.terminate()
    assert server.process.wait(timeout=30) == 0
    db = tmp_path / "hermes" / "hermes-api" / "responses.db"
    assert integrity(db) == "ok"
    with closing(sqlite3.connect(db)) as conn:
        rows = dict(conn.execute("SELECT status, count(*) FROM usage GROUP BY status").fetchall())
        stored = conn.execute("SELECT count(*) FROM responses").fetchone()[0]
    turns = load.counts["answered"] + load.counts["hijacks"]
    assert rows == {200: load.counts["answered"], 404: load.counts["hijacks"]}, "a usage row was lost"
    assert stored == len(load.stored)
    print(
        f"\n--workers 2 (PIDs {workers}): {turns} turns and {load.counts['refused']} refusals in {took:.1f} s; "
        f"{len(load.stored)} stored responses, each read back through the one port; "
        f"{sum(seen.values())} reads by other keys or profiles refused; {turns} usage rows; integrity_check ok"
    )


def test_workers_must_be_a_positive_number(tmp_path: Path, capsys) -> None:
    from hermes_api import cli

    for bad in ("0", "-1", "two", "²"):
        with pytest.raises(SystemExit):
            cli.main(["serve", "--workers", bad], {})
        assert "--workers" in capsys.readouterr().err
