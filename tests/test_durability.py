"""Acknowledged means committed: ``hermes-api serve`` killed with SIGKILL right after
acknowledging N stored responses keeps all N after a restart, and the database passes
``PRAGMA integrity_check``.

The server is a real subprocess on loopback with its real upstream client; the
provider is a small Starlette app under uvicorn in this process. Requests run
concurrently, so other writes are in flight when the kill lands. Every process
started here is stopped by its PID.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from hermes_api.demo import free_port

from .conftest import HermesHome, integrity

N = 50  # acknowledged responses that must survive
SENT = 80  # requests sent, 8 at a time: some are in flight at the kill
CONCURRENCY = 8


def echo_upstream() -> Starlette:
    """A chat-completions provider that answers "echo: <last user message>"."""

    async def chat(request: Request) -> JSONResponse:
        body = orjson.loads(await request.body())
        text = f"echo: {body['messages'][-1]['content']}"
        return JSONResponse(
            {
                "id": "c",
                "object": "chat.completion",
                "created": 1,
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            }
        )

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


class Server:
    """``hermes-api serve`` as a subprocess on a loopback port."""

    def __init__(self, config: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "hermes_api", "serve", "--config", str(config), "--port", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            assert self.process.poll() is None, f"hermes-api exited with {self.process.returncode}"
            assert time.monotonic() < deadline, "hermes-api did not start in 30 s"
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait(timeout=15)
        self._log.close()


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


async def store_until_killed(server: Server) -> dict[str, str]:
    """Send SENT requests, CONCURRENCY at a time; SIGKILL the server the moment the
    N-th answer is in. Returns the acknowledged response ids and their texts."""
    acked: dict[str, str] = {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(SENT):
        queue.put_nowait(i)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty() and len(acked) < N:
            i = queue.get_nowait()
            try:
                r = await client.post("/v1/responses", json={"model": "alpha", "input": f"note {i}"})
            except httpx.HTTPError:
                return  # the server is gone
            if r.status_code == 200 and len(acked) < N:
                acked[r.json()["id"]] = r.json()["output"][0]["content"][0]["text"]
                if len(acked) == N:
                    server.kill()

    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        await asyncio.wait_for(asyncio.gather(*(worker(client) for _ in range(CONCURRENCY))), timeout=120)
    return acked


@pytest.mark.slow
def test_acknowledged_responses_survive_sigkill(tmp_path: Path, live, servers: list[Server]) -> None:
    provider = live(echo_upstream())
    home = HermesHome(tmp_path / "hermes")
    home.add("alpha", model={"default": "m", "provider": "custom", "base_url": provider.url + "/v1"})
    state = tmp_path / "state"
    config = tmp_path / "hermes-api.yaml"
    config.write_text(
        yaml.safe_dump(
            {"hermes_home": str(home.root), "expose": ["alpha"], "default_profile": "alpha", "state_dir": str(state)}
        )
    )
    log = tmp_path / "serve.log"

    first = Server(config, log)
    servers.append(first)
    acked = asyncio.run(store_until_killed(first))
    assert first.process.wait(timeout=15) == -signal.SIGKILL
    assert len(acked) == N
    assert integrity(state / "responses.db") == "ok"

    second = Server(config, log)
    servers.append(second)
    with httpx.Client(base_url=second.url, timeout=10) as client:
        for rid, text in acked.items():
            r = client.get(f"/v1/responses/{rid}")
            assert r.status_code == 200, (rid, r.text)
            assert r.json()["output"][0]["content"][0]["text"] == text and text.startswith("echo: note ")
    second.stop()
    assert integrity(state / "responses.db") == "ok"
    print(f"\n{N} acknowledged of {SENT} sent, SIGKILL, restart: {N} retrievable; integrity_check ok")
