"""Graceful shutdown of a real ``hermes-api serve`` process on SIGTERM, chat and Responses API.

It stops accepting at once, lets turns in flight go on for ``shutdown_grace`` seconds,
then ends the ones still running: a stream with the in-stream error and ``[DONE]``, a
request not yet answered with a 503 JSON error (a Responses stream with
``response.failed``). The lifespan's shutdown (where the pool, and later the store,
close) runs only after that, and the process exits; a restart on the same state_dir
finds every response acknowledged before or during the drain.
"""

from __future__ import annotations

import signal
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from .conftest import FakeUpstream, HermesHome, ServeProcess, integrity, wait_until

GRACE = 3.0


@pytest.fixture(params=["serve", "uvicorn-factory"])
def server(request, fake_upstream: FakeUpstream, home: HermesHome, tmp_path: Path, serve_process) -> ServeProcess:
    """``hermes-api serve``, and ``uvicorn --factory`` (where the Drain notices uvicorn's
    server exiting, as there is no DrainingServer)."""
    for name, behaviour in (("slowish", "slow-1500"), ("endless", "forever"), ("stuck", "hang"), ("quick", "ok")):
        home.add(name, model={"default": "m", "provider": "custom", "base_url": fake_upstream.base_url(behaviour)})
    config = tmp_path / "hermes-api.yaml"
    config.write_text(yaml.safe_dump({"hermes_home": str(home.root), "expose": "*", "shutdown_grace": GRACE}))
    return serve_process(config, tmp_path / "serve.log", uvicorn_factory=request.param == "uvicorn-factory")


class Call(threading.Thread):
    """One chat (or Responses API) request in a thread: ``first`` is set at the first
    data line (or at the answer, when not streamed); ``lines`` and ``ended_at`` are
    filled as it reads."""

    def __init__(
        self,
        server: ServeProcess,
        profile: str,
        stream: bool,
        tag: str,
        *,
        responses: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.headers = headers or {}
        self.url = server.url + ("/v1/responses" if responses else "/v1/chat/completions")
        self.body: dict[str, Any] = {"model": profile, "stream": stream}
        if responses:
            self.body["input"] = tag
        else:
            self.body["messages"] = [{"role": "user", "content": tag}]
        self.first = threading.Event()
        self.lines: list[tuple[float, str]] = []
        self.status: int | None = None
        self.ended_at: float | None = None
        self.start()

    def run(self) -> None:
        try:
            with httpx.stream("POST", self.url, json=self.body, headers=self.headers, timeout=30) as r:
                self.status = r.status_code
                for line in r.iter_lines():
                    self.lines.append((time.monotonic(), line))
                    if line.startswith("data: ") or not self.body["stream"]:
                        self.first.set()
        finally:
            self.ended_at = time.monotonic()
            self.first.set()

    def data(self) -> list[Any]:
        out = []
        for _, line in self.lines:
            if line.startswith("data: "):
                out.append(line[6:] if line == "data: [DONE]" else orjson.loads(line[6:]))
        return out


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def wait_exit(server: ServeProcess, seconds: float) -> int:
    try:
        return server.process.wait(timeout=seconds)
    except Exception:
        pytest.fail(f"hermes-api serve did not exit within {seconds} s:\n{server.log()}")


# uvicorn re-raises the signal once it has shut down, so the exit status says SIGTERM.
CLEAN_EXIT = (0, -signal.SIGTERM)


def test_in_flight_stream_finishes_within_the_grace_period(server: ServeProcess) -> None:
    call = Call(server, "slowish", True, "late")  # 1.5 s of silence mid-stream
    assert call.first.wait(10) and call.status == 200
    server.terminate()
    sigterm_at = time.monotonic()
    deadline = sigterm_at + 5
    while not refuses_connections(server.port):
        assert time.monotonic() < deadline, "still accepting connections 5 s after SIGTERM"
        time.sleep(0.05)
    call.join(15)
    got = call.data()
    assert got[-1] == "[DONE]" and all("error" not in e for e in got[:-1]), got
    assert "".join(e["choices"][0]["delta"]["content"] for e in got[:-1]) == "first ok late"
    assert wait_exit(server, 10) in CLEAN_EXIT
    log = server.log()
    if server.logs_hermes_api:
        assert log.index("shutting down: ") < log.index("stopped"), log


def test_turns_outliving_the_grace_period_are_closed_with_an_error(
    server: ServeProcess, fake_upstream: FakeUpstream
) -> None:
    tag = f"shutdown-endless-{server.port}"
    stream = Call(server, "endless", True, tag)
    waiting = Call(server, "stuck", False, "shutdown-stuck")
    assert stream.first.wait(10) and stream.status == 200
    wait_until(lambda: "shutdown-stuck" in fake_upstream.stats()["held"], "the provider has the non-streamed request")
    server.terminate()
    sigterm_at = time.monotonic()
    stream.join(GRACE + 15)
    waiting.join(5)
    assert stream.ended_at is not None and waiting.ended_at is not None

    # The stream kept flowing during the grace period, then got the error and [DONE].
    got = stream.data()
    assert got[-1] == "[DONE]"
    error = got[-2]["error"]
    assert (error["type"], error["code"]) == ("server_error", "server_shutting_down")
    assert set(error) == {"message", "type", "param", "code"}
    during_grace = [t for t, line in stream.lines if line.startswith('data: {"id"') and t > sigterm_at + 1]
    assert during_grace, "the stream must go on after SIGTERM, not be cut at once"
    took = stream.ended_at - sigterm_at
    print(f"\nstream closed {took:.2f} s after SIGTERM (shutdown_grace {GRACE} s)")
    assert GRACE * 0.8 < took < GRACE + 5

    # The request without an answer yet gets a 503 in the envelope.
    assert waiting.status == 503
    body = orjson.loads("".join(line for _, line in waiting.lines))
    assert (body["error"]["code"], body["error"]["type"]) == ("server_shutting_down", "server_error")

    assert wait_exit(server, 10) in CLEAN_EXIT
    log = server.log()
    if server.logs_hermes_api:
        assert "turn(s) in flight get 3s to finish" in log
        # The lifespan's shutdown ran after the last turn ended, then the process exited.
        assert log.index("shutting down: ") < log.index("stopped")
    streams = fake_upstream.stats()["streams"]
    assert streams[tag]["client_left"], "the upstream stream was closed too"


def test_responses_in_flight_at_sigterm_and_nothing_stored_is_lost(
    server: ServeProcess, fake_upstream: FakeUpstream, tmp_path: Path, serve_process
) -> None:
    """Responses API turns at SIGTERM: a stream that can finish within the grace period
    completes (and is stored); one that cannot ends with ``response.failed``
    ``server_shutting_down``; a non-streamed request still waiting on its provider gets
    a 503, one answered during the grace period a 200. After a restart on the same
    state_dir every response acknowledged before or during the drain is there, as the
    client saw it, chains intact, and so is every chat-session turn; the database
    passes ``PRAGMA integrity_check``."""
    acked: dict[str, dict[str, Any]] = {}  # id -> the response object the client got
    with httpx.Client(base_url=server.url, timeout=10) as client:
        previous = None
        for i in range(4):
            body = {"model": "quick", "input": f"before-{i}", "stream": i % 2 == 1, "previous_response_id": previous}
            r = client.post("/v1/responses", json=body)
            assert r.status_code == 200
            final = r.json() if i % 2 == 0 else orjson.loads(r.text.split("\ndata: ")[-1])["response"]
            acked[final["id"]] = final
            previous = final["id"]
        session = {"model": "quick", "messages": [{"role": "user", "content": "session-before"}]}
        assert (
            client.post("/v1/chat/completions", json=session, headers={"X-Hermes-Session-Id": "s"}).status_code == 200
        )
    chain_end = previous
    requests_before = fake_upstream.stats()["requests"]
    in_session = Call(server, "slowish", True, "session-late", headers={"X-Hermes-Session-Id": "s"})
    finishing = Call(server, "slowish", True, "finishes", responses=True)  # 1.5 s of silence mid-stream
    cut = Call(server, "endless", True, "is-cut", responses=True)
    waiting = Call(server, "stuck", False, "waits", responses=True)
    answered = Call(server, "slowish", False, "answered-late", responses=True)  # answered 1.5 s after sending
    assert finishing.first.wait(10) and cut.first.wait(10) and finishing.status == cut.status == 200
    assert in_session.first.wait(10)
    # The two non-streamed requests are waiting on their providers: all five arrived.
    wait_until(lambda: fake_upstream.stats()["requests"] - requests_before >= 5, "the providers have all 5 requests")
    server.terminate()
    sigterm_at = time.monotonic()
    for call in (finishing, cut, waiting, answered, in_session):
        call.join(GRACE + 15)
        assert call.ended_at is not None

    events = finishing.data()
    assert [e["type"] for e in events][-1] == "response.completed", events[-2:]
    completed = events[-1]["response"]
    assert completed["output"][0]["content"][0]["text"] == "first ok finishes"
    acked[completed["id"]] = completed
    events = cut.data()
    assert [e["type"] for e in events][-1] == "response.failed"
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_shutting_down"
    assert "response.output_text.delta" in [e["type"] for e in events], "it streamed before it was cut"
    acked[failed["id"]] = failed
    took = cut.ended_at - sigterm_at
    assert GRACE * 0.8 < took < GRACE + 5, took
    assert waiting.status == 503
    error = orjson.loads("".join(line for _, line in waiting.lines))["error"]
    assert (error["type"], error["code"]) == ("server_error", "server_shutting_down")
    assert answered.status == 200
    late = orjson.loads("".join(line for _, line in answered.lines))
    assert late["output"][0]["content"][0]["text"] == "ok answered-late"
    acked[late["id"]] = late
    print(
        f"\nResponses at SIGTERM: stream finished {finishing.ended_at - sigterm_at:.2f} s after it, "
        f"non-stream answered {answered.ended_at - sigterm_at:.2f} s after it, stream cut after {took:.2f} s "
        f"(shutdown_grace {GRACE} s), waiting request 503 after {waiting.ended_at - sigterm_at:.2f} s"
    )
    assert wait_exit(server, 10) in CLEAN_EXIT

    db = tmp_path / "hermes" / "hermes-api" / "responses.db"
    assert integrity(db) == "ok"
    again = serve_process(tmp_path / "hermes-api.yaml", tmp_path / "restart.log")
    with httpx.Client(base_url=again.url, timeout=10) as client:
        for rid, seen in acked.items():
            r = client.get(f"/v1/responses/{rid}")
            assert r.status_code == 200, (rid, r.text)
            assert r.json() == seen
        r = client.post("/v1/responses", json={"model": "quick", "input": "after", "previous_response_id": chain_end})
        assert r.status_code == 200, "the chain made before SIGTERM goes on after the restart"
    again.terminate()
    assert wait_exit(again, 15) in CLEAN_EXIT
    conn = sqlite3.connect(db)
    try:
        stored = {rid for (rid,) in conn.execute("SELECT id FROM responses")}
        turns = {
            (p, orjson.loads(m)[-1]["content"]) for p, m in conn.execute("SELECT profile, messages FROM session_turns")
        }
    finally:
        conn.close()
    assert stored == {*acked, r.json()["id"]}, "exactly what was acknowledged, nothing else"
    assert in_session.data()[-1] == "[DONE]" and "error" not in in_session.data()[-2]
    assert turns == {("quick", "ok session-before"), ("slowish", "first ok session-late")}
    assert integrity(db) == "ok"
    print(f"{len(acked)} responses acknowledged before or during the drain: all retrievable after the restart")
