"""Agent workers failing: killed mid-turn, a tool that hangs, a client that leaves, idle
workers. Each fault touches only its own profile's turns, and the next request works.

Workers are found by PID through /proc (their working directory, the profile's
``workspace``: a worker bound from a spare was not started with the profile's
``HERMES_HOME``), signalled by PID only.
"""

from __future__ import annotations

import json
import os
import signal
import threading
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

KEY = {"Authorization": f"Bearer {ALICE}"}


def worker_pids(profile_home: Path) -> list[int]:
    """The live agent workers of the profile whose home is ``profile_home`` (their
    working directory is its ``workspace``)."""
    return [pid for pid, cwd in agent_workers() if cwd == profile_home / "workspace"]


def spare_pids(state_dir: Path) -> list[int]:
    """The live spare workers of the server whose ``state_dir`` this is."""
    return [pid for pid, cwd in agent_workers() if cwd == state_dir / "agent-spare"]


def agent_workers() -> list[tuple[int, Path]]:
    """``(pid, working directory)`` of every live process running ``agent/worker.py``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            cwd = Path(os.readlink(entry / "cwd"))
            state = next(line for line in (entry / "status").read_text().splitlines() if line.startswith("State:"))
        except (OSError, StopIteration):
            continue
        if b"agent/worker.py" in cmdline and "Z" not in state:
            found.append((int(entry.name), cwd))
    return found


def processes_running(marker: str) -> list[int]:
    """PIDs of live processes whose command line holds ``marker``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def wait_for(condition: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout}s")


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory, scripted: ScriptedUpstream) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("faults")
    home = HermesHome(root / "hermes")
    no_download = {"security": {"tirith_enabled": False}}
    add_agent_profile(home, "default", scripted)
    for name in ("crashy", "steady", "hung", "leaver", "sleepy"):
        add_agent_profile(home, name, scripted, config=no_download)
    terminal = ["memory", "terminal"]
    config = {
        "hermes_home": str(home.root),
        "state_dir": str(root / "state"),
        "expose": ["default", "crashy", "steady", "hung", "leaver", "sleepy"],
        "keys": [{"name": "alice", "key_env": "K_ALICE"}],
        "sse_keepalive": 1,
        "per_profile": {"leaver": {"max_concurrent": 1}},
        "agent": {
            "profiles": ["crashy", "steady", "hung", "leaver", "sleepy"],
            "idle_timeout": 600,
            "per_profile": {
                "hung": {"toolsets": terminal, "turn_timeout": 4},
                "leaver": {"toolsets": terminal},
            },
        },
    }
    path = root / "hermes-api.yaml"
    path.write_text(yaml.safe_dump(config))
    environ = worker_environ(root, K_ALICE=ALICE)
    settings = Settings.load(path, environ)
    server = LiveServer(create_app(settings, environ=environ)).__enter__()
    try:
        yield {"server": server, "home": home, "root": root, "upstream": scripted}
    finally:
        server.__exit__()
    assert not any(worker_pids(home.dir(p)) for p in config["agent"]["profiles"]), "a worker outlived the server"
    assert not spare_pids(settings.state_dir), "the spare worker outlived the server"


def ask(
    stack: dict[str, Any], profile: str, text: str, started: threading.Event | None = None, **body: Any
) -> httpx.Response:
    """The answer, read whole; ``started`` is set once its head has arrived."""
    payload = {"model": profile, "messages": [{"role": "user", "content": text}], **body}
    url = stack["server"].url + "/v1/chat/completions"
    with httpx.stream("POST", url, json=payload, headers=KEY, timeout=TIMEOUT) as r:
        if started is not None:
            started.set()
        r.read()
    return r


def in_background(call: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(call()), daemon=True)
    thread.start()
    return thread, out


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_worker_killed_mid_turn_fails_only_its_turn_and_the_next_request_is_served(
    faults: dict[str, Any], stream: bool
) -> None:
    home: HermesHome = faults["home"]
    assert ask(faults, "crashy", "warm up").status_code == 200
    assert ask(faults, "steady", "warm up").status_code == 200
    (pid,) = worker_pids(home.dir("crashy"))
    (steady,) = worker_pids(home.dir("steady"))
    before = len(faults["upstream"].requests())
    started = threading.Event()  # the answer's head has arrived
    thread, out = in_background(lambda: ask(faults, "crashy", "take your time [[sleep:20]]", started, stream=stream))
    wait_for(lambda: len(faults["upstream"].requests()) > before, what="the turn reaching its provider")
    if stream:  # its head goes out with the first ping (sse_keepalive 1 s); a plain answer's, at its end
        assert started.wait(TIMEOUT)
    os.kill(pid, signal.SIGKILL)
    thread.join(TIMEOUT)
    (r,) = out
    if stream:
        assert r.status_code == 200
        found = events(r)
        assert found[-1] == (None, "[DONE]")
        error = json.loads(found[-2][1])["error"]
        assert error["code"] == "agent_worker_failed" and error["type"] == "server_error"
    else:
        assert r.status_code == 502
        assert r.json()["error"]["code"] == "agent_worker_failed"
    assert "Traceback" not in r.text and ALICE not in r.text
    again = ask(faults, "crashy", "are you back?")
    assert again.status_code == 200 and again.json()["choices"][0]["message"]["content"] == "echo: are you back?"
    (new,) = worker_pids(home.dir("crashy"))
    assert new != pid
    assert worker_pids(home.dir("steady")) == [steady]  # the other profile's worker never noticed


def test_a_hung_tool_ends_at_the_turn_timeout_and_its_process_is_stopped(faults: dict[str, Any]) -> None:
    command = {"command": "sleep 97.25"}
    started = time.monotonic()
    r = ask(faults, "hung", f"wait [[tool:terminal {json.dumps(command)}]]")
    assert r.status_code == 504 and r.json()["error"]["code"] == "agent_turn_timeout"
    assert r.headers["x-should-retry"] == "false"
    assert 3.5 < time.monotonic() - started < 60
    wait_for(lambda: not processes_running("sleep 97.25"), what="the hung command to be stopped")
    assert ask(faults, "hung", "still there?").status_code == 200


def test_a_long_tool_run_keeps_the_stream_alive_with_pings(faults: dict[str, Any]) -> None:
    command = {"command": "sleep 2.5"}
    r = ask(faults, "leaver", f"wait a little [[tool:terminal {json.dumps(command)}]]", stream=True)
    assert r.status_code == 200
    assert ": ping" in r.text.splitlines()  # sse_keepalive is 1 s here: the tool ran quiet for 2.5 s
    found = events(r)
    chunks = [json.loads(d) for _, d in found[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert found[-1] == (None, "[DONE]") and "done: " in text


def test_a_client_that_leaves_interrupts_the_agent_and_frees_the_slot(faults: dict[str, Any]) -> None:
    command = {"command": "sleep 86.5"}
    body = {"model": "leaver", "stream": True, "messages": [{"role": "user", "content":
            f"go [[tool:terminal {json.dumps(command)}]]"}]}  # fmt: skip
    with httpx.Client(timeout=TIMEOUT) as client:
        with client.stream("POST", faults["server"].url + "/v1/chat/completions", json=body, headers=KEY) as r:
            assert r.status_code == 200
            wait_for(lambda: processes_running("sleep 86.5"), what="the tool to start")
        # Leaving the block closed the connection mid-stream.
    wait_for(lambda: not processes_running("sleep 86.5"), timeout=15, what="the agent to be interrupted")
    r = ask(faults, "leaver", "next")  # the profile's one slot is free again
    assert r.status_code == 200, r.text


def test_a_non_streamed_client_that_leaves_interrupts_the_agent_too(faults: dict[str, Any]) -> None:
    command = {"command": "sleep 75.125"}
    body = {"model": "leaver", "messages": [{"role": "user", "content": f"go [[tool:terminal {json.dumps(command)}]]"}]}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(faults["server"].url + "/v1/chat/completions", json=body, headers=KEY, timeout=httpx.Timeout(
            TIMEOUT, read=8))  # fmt: skip
    wait_for(lambda: not processes_running("sleep 75.125"), timeout=15, what="the agent to be interrupted")
    assert ask(faults, "leaver", "next").status_code == 200


def test_idle_workers_are_stopped_and_started_again_on_demand(tmp_path: Path, scripted: ScriptedUpstream) -> None:
    home = HermesHome(tmp_path / "hermes")
    add_agent_profile(home, "default", scripted)
    add_agent_profile(home, "sleepy", scripted)
    config = {
        "hermes_home": str(home.root), "state_dir": str(tmp_path / "state"), "expose": ["default", "sleepy"],
        "keys": [{"name": "alice", "key_env": "K_ALICE"}], "agent": {"profiles": ["sleepy"], "idle_timeout": 2},
    }  # fmt: skip
    path = tmp_path / "hermes-api.yaml"
    path.write_text(yaml.safe_dump(config))
    environ = worker_environ(tmp_path, K_ALICE=ALICE)
    with LiveServer(create_app(Settings.load(path, environ), environ=environ)) as server:
        stack = {"server": server}
        assert ask(stack, "sleepy", "one").status_code == 200
        (first,) = worker_pids(home.dir("sleepy"))
        wait_for(lambda: not worker_pids(home.dir("sleepy")), timeout=20, what="the idle worker to stop")
        r = ask(stack, "sleepy", "two")
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "echo: two"
        (second,) = worker_pids(home.dir("sleepy"))
        assert second != first
    assert not worker_pids(home.dir("sleepy"))
