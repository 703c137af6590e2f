"""SIGTERM to a real ``hermes-api serve`` while agent turns are in flight.

Turns that can finish within ``shutdown_grace`` finish; the others end with
``server_shutting_down``: a 503 before the first byte, the in-stream error (a Responses
stream: ``response.failed``) after it. Their agents are interrupted, every worker
process and every process its tools started is gone once the server has exited
(looked up by PID in /proc), and every response acknowledged before or during the
drain is in the store after a restart.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from .conftest import HermesHome, ScriptedUpstream, ServeProcess, add_agent_profile, integrity, worker_environ
from .test_agent import ALICE, sessions
from .test_agent_faults import processes_running, wait_for, worker_pids
from .test_shutdown import CLEAN_EXIT, Call, wait_exit

GRACE = 8.0  # shutdown_grace: a turn of 2 s started just before SIGTERM finishes well within it
AUTH = {"Authorization": f"Bearer {ALICE}"}
HANG = "sleep 301.25"  # a terminal command that outlives the grace period


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` exists and is not a zombie."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


@pytest.fixture
def agent_server(tmp_path: Path, scripted: ScriptedUpstream, serve_process: Any) -> dict[str, Any]:
    home = HermesHome(tmp_path / "hermes")
    add_agent_profile(home, "default", scripted)
    add_agent_profile(home, "brisk", scripted)
    add_agent_profile(home, "tooled", scripted, config={"security": {"tirith_enabled": False}})
    config = {
        "hermes_home": str(home.root),
        "expose": ["default", "brisk", "tooled"],
        "keys": [{"name": "alice", "key_env": "K_ALICE"}],
        "shutdown_grace": GRACE,
        "sse_keepalive": 30,  # a stream whose agent has sent nothing yet has sent no byte either
        "agent": {"profiles": ["brisk", "tooled"], "per_profile": {"tooled": {"toolsets": ["memory", "terminal"]}}},
    }
    path = tmp_path / "hermes-api.yaml"
    path.write_text(yaml.safe_dump(config))
    environ = {k: v for k, v in worker_environ(tmp_path, K_ALICE=ALICE).items() if k != "PATH"}
    server = serve_process(path, tmp_path / "serve.log", environ)
    return {"server": server, "home": home, "config": path, "root": tmp_path, "environ": environ}


def final_response(call: Call) -> dict[str, Any]:
    """A Responses call's last object: the response (streamed: of its last event)."""
    if not call.body["stream"]:
        return orjson.loads("".join(line for _, line in call.lines))
    return call.data()[-1]["response"]


def test_sigterm_finishes_what_fits_in_the_grace_period_and_stops_every_worker(
    agent_server: dict[str, Any], scripted: ScriptedUpstream, serve_process: Any
) -> None:
    server: ServeProcess = agent_server["server"]
    home: HermesHome = agent_server["home"]
    acked: dict[str, dict[str, Any]] = {}
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as client:
        for profile in ("brisk", "tooled"):  # both workers warm: the turns below start at once
            r = client.post("/v1/responses", json={"model": profile, "input": f"warm {profile}"})
            assert r.status_code == 200, r.text
            acked[r.json()["id"]] = r.json()
    pids = {p: worker_pids(home.dir(p)) for p in ("brisk", "tooled")}
    assert all(len(found) == 1 for found in pids.values()), pids
    tool = f"[[tool:terminal {json.dumps({'command': HANG})}]]"
    calls = {
        # finish within the grace period
        "chat": Call(server, "brisk", False, "fits-chat [[sleep:2]]", headers=AUTH),
        "chat-stream": Call(server, "brisk", True, "fits-chat-stream [[sleep:2]]", headers=AUTH),
        "responses": Call(server, "brisk", False, "fits-responses [[sleep:2]]", responses=True, headers=AUTH),
        "responses-stream": Call(server, "brisk", True, "fits-rstream [[sleep:2]]", responses=True, headers=AUTH),
        # cannot: waiting on the provider (no byte sent yet), or running a tool (streams have begun)
        "waiting": Call(server, "brisk", False, "waits [[sleep:120]]", headers=AUTH),
        "waiting-stream": Call(server, "brisk", True, "waits-stream [[sleep:120]]", headers=AUTH),
        "tool-stream": Call(server, "tooled", True, f"tool-stream {tool}", headers=AUTH),
        "tool-rstream": Call(server, "tooled", True, f"tool-rstream {tool}", responses=True, headers=AUTH),
    }
    wait_for(lambda: len(processes_running(HANG)) >= 2, timeout=60, what="both tools to run")
    marks = ("fits-chat ", "fits-chat-stream", "fits-responses", "fits-rstream", "waits ", "waits-stream")
    wait_for(
        lambda: all(any(m in json.dumps(r["body"]["messages"][-1]) for r in scripted.requests()) for m in marks),
        timeout=60,
        what="every turn to be at the provider",
    )
    assert calls["tool-stream"].first.wait(30) and calls["tool-rstream"].first.wait(30)
    assert not calls["waiting-stream"].lines, "no byte before the agent has sent something"

    server.terminate()
    sigterm_at = time.monotonic()
    for call in calls.values():
        call.join(GRACE + 30)
        assert call.ended_at is not None
    assert wait_exit(server, 30) in CLEAN_EXIT
    exited = time.monotonic() - sigterm_at

    # What fitted in the grace period was answered in full.
    assert calls["chat"].status == 200
    chat = orjson.loads("".join(line for _, line in calls["chat"].lines))
    assert chat["choices"][0]["message"]["content"] == "echo: fits-chat"
    streamed = calls["chat-stream"].data()
    assert streamed[-1] == "[DONE]" and not any("error" in e for e in streamed[:-1])
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in streamed[:-1] if e["choices"]) == (
        "echo: fits-chat-stream"
    )
    for name in ("responses", "responses-stream"):
        response = final_response(calls[name])
        assert calls[name].status == 200 and response["status"] == "completed", response
        acked[response["id"]] = response
    # The others were ended with server_shutting_down, at the end of the grace period.
    for name in ("waiting", "waiting-stream"):
        assert calls[name].status == 503, (name, calls[name].lines)
        error = orjson.loads("".join(line for _, line in calls[name].lines))["error"]
        assert (error["type"], error["code"]) == ("server_error", "server_shutting_down")
    got = calls["tool-stream"].data()
    assert calls["tool-stream"].status == 200 and got[-1] == "[DONE]"
    assert got[-2]["error"]["code"] == "server_shutting_down"
    failed = final_response(calls["tool-rstream"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_shutting_down"
    acked[failed["id"]] = failed
    cut = [calls[n].ended_at - sigterm_at for n in ("waiting", "waiting-stream", "tool-stream", "tool-rstream")]
    print(f"\nagent turns at SIGTERM: cut after {min(cut):.1f}-{max(cut):.1f} s (shutdown_grace {GRACE:g} s), "
          f"the server exited after {exited:.1f} s")  # fmt: skip
    assert GRACE * 0.8 < min(cut) and max(cut) < GRACE + 20

    # Every worker, and every process their tools started, is gone.
    for pid in (pid for found in pids.values() for pid in found):
        assert not pid_alive(pid), f"worker {pid} outlived the server"
    assert not any(worker_pids(home.dir(p)) for p in ("brisk", "tooled"))
    assert processes_running(HANG) == []
    assert "shutting down: " in server.log() and "stopped" in server.log()

    # Nothing acknowledged was lost: the store after a restart, Hermes's state.db as it is.
    db = home.root / "hermes-api" / "responses.db"
    assert integrity(db) == "ok"
    again = serve_process(agent_server["config"], agent_server["root"] / "restart.log", agent_server["environ"])
    with httpx.Client(base_url=again.url, headers=AUTH, timeout=30) as client:
        for rid, seen in acked.items():
            r = client.get(f"/v1/responses/{rid}")
            assert r.status_code == 200 and r.json() == seen, (rid, r.text)
    again.terminate()
    assert wait_exit(again, 30) in CLEAN_EXIT
    with sqlite3.connect(db) as conn:
        assert {rid for (rid,) in conn.execute("SELECT id FROM responses")} == set(acked)
    answered = {m["content"] for s in sessions(home, "brisk") for m in s["messages"] if m["role"] == "assistant"}
    assert {"echo: fits-chat", "echo: fits-chat-stream"} <= answered


def test_a_worker_still_starting_at_sigterm_is_stopped_too(
    tmp_path: Path, scripted: ScriptedUpstream, serve_process: Any
) -> None:
    """The first turn of a profile is waiting for its worker to start when SIGTERM
    comes, and the start takes longer than the grace period (an interpreter that takes
    its time: ``agent.python``): the turn gets its 503, and the starting worker does not
    outlive the server."""
    home = HermesHome(tmp_path / "hermes")
    add_agent_profile(home, "default", scripted)
    add_agent_profile(home, "late", scripted)
    slow = tmp_path / "slow-python"
    slow.write_text(f'#!/bin/sh\nsleep 45.75\nexec {sys.executable} "$@"\n')
    slow.chmod(0o755)
    config = {
        "hermes_home": str(home.root),
        "expose": ["default", "late"],
        "keys": [{"name": "alice", "key_env": "K_ALICE"}],
        "shutdown_grace": 2,
        "agent": {"profiles": ["late"], "python": str(slow), "startup_timeout": 120},
    }
    path = tmp_path / "hermes-api.yaml"
    path.write_text(yaml.safe_dump(config))
    server = serve_process(path, tmp_path / "serve.log", {"K_ALICE": ALICE})
    call = Call(server, "late", False, "hello", headers=AUTH)
    (starting,) = wait_for(lambda: worker_pids(home.dir("late")), what="the worker to be starting")
    server.terminate()
    call.join(30)
    assert call.status == 503
    assert orjson.loads("".join(line for _, line in call.lines))["error"]["code"] == "server_shutting_down"
    assert wait_exit(server, 30) in CLEAN_EXIT
    assert not pid_alive(starting), "the starting worker outlived the server"
    assert processes_running("sleep 45.75") == []
