"""A profile's agent worker from outside: its concurrent turns share its one process up
to the profile's cap, a client that stops reading holds up no other turn of that
profile, and ``GET /metrics`` counts the worker's start, crash, restart and stop. One
test drives hermes-api's side of the worker protocol harder than Hermes can, with a
stand-in worker (``tests/fakeworker.py``).

Workers are found by PID through /proc (their ``HERMES_HOME``), signalled by PID only.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from hermes_api.app import create_app
from hermes_api.settings import Settings

from .conftest import HermesHome, LiveServer, ScriptedUpstream, add_agent_profile, worker_environ
from .test_agent import ALICE, TIMEOUT, events
from .test_agent_faults import in_background, spare_pids, wait_for, worker_pids
from .test_metrics import parse, value

KEY = {"Authorization": f"Bearer {ALICE}"}
CAP = 3  # per_profile.capped.max_concurrent
BULK = 7_000_000  # characters of the answer nobody reads: more than the sockets hold, less than MAX_BUFFERED
IDLE = 4  # agent.idle_timeout, seconds
HELD_UP = 60  # seconds after which a turn beside the stalled client counts as held up by it
PILED_UP = 30  # seconds for 7 MB in 25-character deltas to pile up (~5 s; ~100 s were it quadratic)


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory, scripted: ScriptedUpstream) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("workers")
    home = HermesHome(root / "hermes")
    add_agent_profile(home, "default", scripted)
    for name in ("capped", "shared", "metered"):
        add_agent_profile(home, name, scripted)
    config = {
        "hermes_home": str(home.root),
        "state_dir": str(root / "state"),
        "expose": ["default", "capped", "shared", "metered"],
        "keys": [{"name": "alice", "key_env": "K_ALICE"}],
        "per_profile": {"capped": {"max_concurrent": CAP}},
        "agent": {"profiles": ["capped", "shared", "metered"], "idle_timeout": IDLE},
    }
    path = root / "hermes-api.yaml"
    path.write_text(yaml.safe_dump(config))
    environ = worker_environ(root, K_ALICE=ALICE)
    settings = Settings.load(path, environ)
    server = LiveServer(create_app(settings, environ=environ)).__enter__()
    try:
        yield {"server": server, "home": home, "upstream": scripted}
    finally:
        server.__exit__()
    assert not any(worker_pids(home.dir(p)) for p in config["agent"]["profiles"]), "a worker outlived the server"
    assert not spare_pids(settings.state_dir), "the spare worker outlived the server"


def ask(stack: dict[str, Any], profile: str, text: str, timeout: float = TIMEOUT, **body: Any) -> httpx.Response:
    payload = {"model": profile, "messages": [{"role": "user", "content": text}], **body}
    return httpx.post(stack["server"].url + "/v1/chat/completions", json=payload, headers=KEY, timeout=timeout)


def arrived(stack: dict[str, Any], marker: str) -> int:
    """How many provider calls so far carried ``marker`` in their last message."""
    return sum(marker in json.dumps(r["body"]["messages"][-1]) for r in stack["upstream"].requests())


def test_concurrent_turns_of_a_profile_share_its_worker_up_to_its_cap(workers: dict[str, Any]) -> None:
    home: HermesHome = workers["home"]
    assert ask(workers, "capped", "warm up").status_code == 200
    (pid,) = worker_pids(home.dir("capped"))
    running = [in_background(lambda i=i: ask(workers, "capped", f"slow-{i} [[sleep:8]]")) for i in range(CAP)]
    # All of them are at the provider at once, from the profile's one worker.
    wait_for(lambda: arrived(workers, "[[sleep:8]]") == CAP, timeout=60, what=f"{CAP} turns at the provider")
    assert all(thread.is_alive() for thread, _ in running)
    assert worker_pids(home.dir("capped")) == [pid]
    # The next one is refused at once, not queued behind them.
    started = time.monotonic()
    refused = ask(workers, "capped", "one too many")
    assert refused.status_code == 429 and time.monotonic() - started < 5
    assert refused.json()["error"]["code"] == "concurrency_limit_exceeded" and refused.headers["retry-after"]
    assert arrived(workers, "one too many") == 0
    for thread, _ in running:
        thread.join(TIMEOUT)
    answers = [out[0] for _, out in running]
    assert [r.status_code for r in answers] == [200] * CAP
    assert sorted(r.json()["choices"][0]["message"]["content"] for r in answers) == [
        f"echo: slow-{i}" for i in range(CAP)
    ]
    assert worker_pids(home.dir("capped")) == [pid]
    assert ask(workers, "capped", "a slot is free again").status_code == 200


def stalled_stream(port: int, body: dict[str, Any]) -> socket.socket:
    """A streamed chat request from a client that reads the status line and then nothing
    more: its receive buffer is a few KiB, so the server's writes to it soon block."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    data = json.dumps(body).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ALICE}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    sock.sendall(head.encode() + data)
    sock.settimeout(TIMEOUT)
    assert sock.recv(12) == b"HTTP/1.1 200"
    return sock


def answered(home: HermesHome, profile: str, text: str) -> bool:
    """True when the profile's ``state.db`` has an answer to a user message ``text``."""
    db = sqlite3.connect(home.dir(profile) / "state.db")
    try:
        query = (
            "SELECT 1 FROM messages a JOIN messages u ON a.session_id = u.session_id AND a.id > u.id "
            "WHERE u.role = 'user' AND u.content LIKE ? AND a.role = 'assistant'"
        )
        return db.execute(query, (text + "%",)).fetchone() is not None
    finally:
        db.close()


def socket_queues(client: socket.socket) -> tuple[int, int]:
    """``(unsent, unread)``: the bytes the server's end of ``client``'s connection has not
    sent yet (Linux ``/proc/net/tcp`` ``tx_queue``) and those ``client`` has not read
    (its ``rx_queue``)."""
    here, there = client.getsockname()[1], client.getpeername()[1]
    queues = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = (int(address.split(":")[1], 16) for address in fields[1:3])
        tx, rx = (int(n, 16) for n in fields[4].split(":"))
        queues[(local, remote)] = (tx, rx)
    return queues[(there, here)][0], queues[(here, there)][1]


@pytest.mark.slow  # its 7 MB answer takes Hermes ~30 s
def test_a_client_that_stops_reading_holds_up_no_other_turn_of_its_profile(workers: dict[str, Any]) -> None:
    home: HermesHome = workers["home"]
    assert ask(workers, "shared", "warm up").status_code == 200
    body = {"model": "shared", "stream": True, "messages": [{"role": "user", "content": f"big [[bulk:{BULK}]]"}]}
    stalled = stalled_stream(workers["server"].port, body)
    try:
        # The agent finishes that turn: the whole answer comes through hermes-api's reader,
        # while the client has read a few KiB of it.
        started = time.monotonic()
        wait_for(lambda: answered(home, "shared", "big"), timeout=180, what="the big turn to end in the worker")
        print(f"\nthe {BULK / 1e6:.0f} MB turn ended in its worker after {time.monotonic() - started:.1f} s")
        # Another client of the same profile, in the same worker, is answered meanwhile, both ways.
        started = time.monotonic()
        plain = ask(workers, "shared", "not held up", timeout=HELD_UP)
        streamed = ask(workers, "shared", "not held up either", stream=True, timeout=HELD_UP)
        print(f"two turns beside the stalled stream: {time.monotonic() - started:.1f} s")
        assert plain.status_code == 200 and plain.json()["choices"][0]["message"]["content"] == "echo: not held up"
        text = "".join(
            json.loads(d)["choices"][0]["delta"].get("content") or ""
            for _, d in events(streamed)
            if d != "[DONE]" and json.loads(d)["choices"]
        )
        assert text == "echo: not held up either"
        assert len(worker_pids(home.dir("shared"))) == 1
        # The stalled client's stream really is stuck: bytes wait on both ends of its connection.
        queued = socket_queues(stalled)
        print(f"bytes waiting: {queued[0]} to be sent by the server, {queued[1]} to be read by the client")
        assert queued[0] > 0 and queued[1] > 0, queued
    finally:
        stalled.close()
    assert ask(workers, "shared", "after the stalled client left").status_code == 200


def worker_events(stack: dict[str, Any], profile: str) -> dict[str, float]:
    r = httpx.get(stack["server"].url + "/metrics", timeout=10)
    assert r.status_code == 200, r.text
    samples = parse(r.text)
    name = "hermes_api_agent_worker_events_total"
    return {e: value(samples, name, profile=profile, event=e) for e in ("start", "restart", "crash", "stop")}


def test_worker_start_crash_restart_and_stop_reach_metrics(workers: dict[str, Any]) -> None:
    home: HermesHome = workers["home"]
    assert worker_events(workers, "metered") == {"start": 0, "restart": 0, "crash": 0, "stop": 0}
    assert ask(workers, "metered", "first").status_code == 200
    (pid,) = worker_pids(home.dir("metered"))
    assert worker_events(workers, "metered") == {"start": 1, "restart": 0, "crash": 0, "stop": 0}
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: worker_events(workers, "metered")["crash"] == 1, what="the crash to be counted")
    assert ask(workers, "metered", "second").status_code == 200
    (new,) = worker_pids(home.dir("metered"))
    assert new != pid
    assert worker_events(workers, "metered") == {"start": 1, "restart": 1, "crash": 1, "stop": 0}
    # Idle for agent.idle_timeout: stopped, and counted as a stop, not a crash.
    wait_for(lambda: not worker_pids(home.dir("metered")), timeout=IDLE + 30, what="the idle worker to stop")
    wait_for(lambda: worker_events(workers, "metered")["stop"] == 1, what="the stop to be counted")
    assert worker_events(workers, "metered") == {"start": 1, "restart": 1, "crash": 1, "stop": 1}
    assert ask(workers, "metered", "third").status_code == 200
    assert worker_events(workers, "metered") == {"start": 2, "restart": 1, "crash": 1, "stop": 1}


FAKE_WORKER = Path(__file__).resolve().parent / "fakeworker.py"


def fake_python(directory: Path) -> Path:
    """An ``agent.python`` whose workers are ``tests/fakeworker.py``."""
    python = directory / "fake-python"
    python.write_text(f'#!/bin/sh\nexec {sys.executable} {FAKE_WORKER} "$@"\n')
    python.chmod(0o755)
    return python


@pytest.fixture
def fake_workers(tmp_path: Path, scripted: ScriptedUpstream) -> Iterator[dict[str, Any]]:
    """A server whose agent workers are ``tests/fakeworker.py`` (through ``agent.python``)."""
    home = HermesHome(tmp_path / "hermes")
    add_agent_profile(home, "default", scripted)
    add_agent_profile(home, "quick", scripted)
    python = fake_python(tmp_path)
    config = {
        "hermes_home": str(home.root),
        "state_dir": str(tmp_path / "state"),
        "expose": ["default", "quick"],
        "keys": [{"name": "alice", "key_env": "K_ALICE"}],
        "agent": {"profiles": ["quick"], "python": str(python)},
    }
    path = tmp_path / "hermes-api.yaml"
    path.write_text(yaml.safe_dump(config))
    environ = worker_environ(tmp_path, K_ALICE=ALICE)
    with LiveServer(create_app(Settings.load(path, environ), environ=environ)) as server:
        yield {"server": server, "home": home}
    assert not worker_pids(home.dir("quick")), "a worker outlived the server"


def test_a_stalled_client_of_many_small_deltas_costs_the_server_no_more_than_their_size(
    fake_workers: dict[str, Any],
) -> None:
    """A worker streams 7 MB in 25-character deltas to a client that stops reading: the
    answer piles up in hermes-api (the client's sockets take a few MB), and piling it up
    costs time in proportion to its size (it took minutes when consecutive deltas were
    joined with ``+=``, the event loop busy all along), so the worker's next turns are
    answered."""
    assert ask(fake_workers, "quick", "warm up").status_code == 200
    body = {"model": "quick", "stream": True, "messages": [{"role": "user", "content": "[[deltas:280000:25]]"}]}
    stalled = stalled_stream(fake_workers["server"].port, body)
    try:
        # The worker writes its deltas as fast as hermes-api reads them, a few MB more than the
        # client's sockets take: they pile up in hermes-api, in proportion to their size.
        sent = fake_workers["home"].dir("quick") / "workspace" / "deltas-sent"
        started = time.monotonic()
        wait_for(sent.exists, timeout=PILED_UP, what="hermes-api to read every delta")
        print(f"\n280000 deltas read from the worker in {time.monotonic() - started:.1f} s")
        started = time.monotonic()
        r = ask(fake_workers, "quick", "not held up", timeout=HELD_UP)
        print(f"a turn beside a stalled stream of 280000 deltas: {time.monotonic() - started:.1f} s")
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "echo: not held up"
        queued = socket_queues(stalled)
        assert queued[0] > 0 and queued[1] > 0, queued
    finally:
        stalled.close()
