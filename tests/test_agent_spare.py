"""The spare agent worker (``agent.spare_worker``, ``hermes_api/agent/spare.py``): started
ahead with nothing secret in its environment, bound to the next profile that needs a
worker. A profile's code (its terminal tool) sees exactly the environment it sees in a
worker started for it; a spare is bound once.

Spares are found by PID through /proc (their working directory, ``<state_dir>/agent-spare``);
one is waiting for its profile when it is blocked reading its stdin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from hermes_api.agent import wire
from hermes_api.agent.process import WORKER
from hermes_api.app import create_app
from hermes_api.settings import Settings

from .conftest import HermesHome, LiveServer, ScriptedUpstream, add_agent_profile, worker_environ
from .test_agent import ALICE, TIMEOUT
from .test_agent_faults import spare_pids, wait_for, worker_pids
from .test_agent_workers import fake_python

SERVER_SECRET = "sk-server-only-SPARE0123456789"
SHARED = "shared-for-every-worker-0123456789"  # agent.env: every worker gets it, a spare does not
DOTENV = {"gamma": "gamma-dotenv-secret-0123456789", "delta": "delta-dotenv-secret-0123456789"}
COLOUR = {"gamma": "green", "delta": "violet"}
COMMAND = "env | sort"


def waiting_for_its_profile(pid: int) -> bool:
    """True when ``pid`` is blocked reading its stdin (a spare waiting for ``bind``):
    ``/proc/<pid>/syscall`` is ``read`` (0 on x86-64, 63 on arm64) on fd 0."""
    try:
        fields = Path(f"/proc/{pid}/syscall").read_text().split()
    except OSError:
        return False
    return len(fields) > 1 and fields[0] in ("0", "63") and fields[1] == "0x0"


def ready_spare(state_dir: Path) -> int:
    def found() -> int | None:
        pids = [pid for pid in spare_pids(state_dir) if waiting_for_its_profile(pid)]
        return pids[0] if pids else None

    return wait_for(found, timeout=TIMEOUT, what="a spare worker waiting for its profile")


@pytest.fixture
def homes(tmp_path: Path, scripted: ScriptedUpstream) -> HermesHome:
    home = HermesHome(tmp_path / "hermes")
    no_download = {"security": {"tirith_enabled": False}}
    add_agent_profile(home, "default", scripted)
    for name, secret in DOTENV.items():
        add_agent_profile(
            home, name, scripted, env={"PROFILE_SECRET": secret, "PROFILE_COLOUR": COLOUR[name]}, config=no_download
        )
    return home


def serve(tmp: Path, home: HermesHome, spare: bool) -> tuple[LiveServer, Settings]:
    terminal = {"toolsets": ["memory", "terminal"]}
    config = {
        "hermes_home": str(home.root),
        "state_dir": str(tmp / "state"),
        "expose": ["default", "gamma", "delta"],
        "keys": [{"name": "alice", "key_env": "K_ALICE"}],
        "agent": {
            "profiles": ["gamma", "delta"],
            "per_profile": {"gamma": terminal, "delta": terminal},
            "env": ["SHARED_FOR_WORKERS"],
            "spare_worker": spare,
        },
    }
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "hermes-api.yaml"
    path.write_text(yaml.safe_dump(config))
    environ = worker_environ(tmp, K_ALICE=ALICE, SECRET_OF_THE_SERVER=SERVER_SECRET, SHARED_FOR_WORKERS=SHARED)
    settings = Settings.load(path, environ)
    return LiveServer(create_app(settings, environ=environ)).__enter__(), settings


@pytest.fixture
def with_spare(tmp_path: Path, homes: HermesHome, scripted: ScriptedUpstream) -> Iterator[dict[str, Any]]:
    server, settings = serve(tmp_path / "spare", homes, spare=True)
    try:
        yield {"server": server, "home": homes, "state_dir": settings.state_dir, "upstream": scripted}
    finally:
        server.__exit__()
    assert not spare_pids(settings.state_dir), "the spare worker outlived the server"


def terminal_env(server: LiveServer, upstream: ScriptedUpstream, profile: str) -> dict[str, str]:
    """The environment the profile's terminal tool sees: ``env`` run by the agent, its
    output as the agent sent it back to the provider (the tool message)."""
    before = len(upstream.requests())
    text = f"run it [[tool:terminal {json.dumps({'command': COMMAND})}]]"
    body = {"model": profile, "messages": [{"role": "user", "content": text}]}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {ALICE}"},
                   timeout=TIMEOUT)  # fmt: skip
    assert r.status_code == 200, r.text
    (tool,) = [m for call in upstream.requests()[before:] for m in call["body"]["messages"] if m["role"] == "tool"]
    output = json.loads(tool["content"])["output"]
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line and line.split("=", 1)[0].isupper())


def test_a_spare_holds_no_secret_and_once_bound_sees_only_its_own_profile(with_spare: dict[str, Any]) -> None:
    home: HermesHome = with_spare["home"]
    for profile, other in (("gamma", "delta"), ("delta", "gamma")):
        spare = ready_spare(with_spare["state_dir"])
        environ = Path(f"/proc/{spare}/environ").read_bytes()
        for secret in (ALICE, SERVER_SECRET, SHARED, *DOTENV.values(), str(home.root)):
            assert secret.encode() not in environ, secret
        assert not any(item.startswith(b"HERMES_HOME=") for item in environ.split(b"\0"))
        seen = terminal_env(with_spare["server"], with_spare["upstream"], profile)
        assert worker_pids(home.dir(profile)) == [spare], "the profile's worker is the spare, bound"
        assert seen["HERMES_HOME"] == str(home.dir(profile))
        assert seen["HOME"] == str(home.dir(profile) / "workspace")
        # Its .env, loaded by Hermes, and agent.env (Hermes masks secret-looking output: "gamma-...6789").
        assert seen["PROFILE_SECRET"].startswith(f"{profile}-") and seen["PROFILE_COLOUR"] == COLOUR[profile]
        assert seen["SHARED_FOR_WORKERS"].startswith("shared-")
        assert "SECRET_OF_THE_SERVER" not in seen and "K_ALICE" not in seen
        assert str(home.dir(other)) not in json.dumps(seen) and DOTENV[other] not in json.dumps(seen)


def test_a_profile_sees_the_same_environment_from_a_spare_as_from_a_worker_started_for_it(
    tmp_path: Path, homes: HermesHome, scripted: ScriptedUpstream
) -> None:
    seen = {}
    for spare in (True, False):
        server, settings = serve(tmp_path / f"spare-{spare}", homes, spare=spare)
        try:
            if spare:
                pid = ready_spare(settings.state_dir)
            seen[spare] = terminal_env(server, scripted, "gamma")
            if spare:
                assert worker_pids(homes.dir("gamma")) == [pid]
            else:
                assert not spare_pids(settings.state_dir), "agent.spare_worker: false starts no spare"
        finally:
            server.__exit__()
    assert seen[True] == seen[False]


def start_spare(tmp_path: Path) -> subprocess.Popen[bytes]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    process = subprocess.Popen([sys.executable, "-I", str(WORKER), "--spare"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=tmp_path)  # fmt: skip
    assert process.stdout is not None
    assert wire.decode(process.stdout.readline(), wire.FROM_SPARE)["type"] == "spare"
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    process.kill()
    process.wait()
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            pipe.close()


def say(process: subprocess.Popen[bytes], message: dict[str, Any]) -> None:
    assert process.stdin is not None
    process.stdin.write(wire.encode(message))
    process.stdin.flush()


def test_a_spare_is_bound_once_and_takes_nothing_but_its_binding(tmp_path: Path, homes: HermesHome) -> None:
    turn = {"type": "turn", "id": "t1", "messages": [{"role": "user", "content": "hi"}],
            "session": {"namespace": "n", "id": None}, "toolsets": [], "stream": False}  # fmt: skip
    spare = start_spare(tmp_path)
    try:
        say(spare, turn)  # a turn before its profile: it ends without running anything
        assert spare.wait(timeout=TIMEOUT) != 0
        assert spare.stdout is not None and spare.stdout.read() == b""
    finally:
        stop(spare)
    spare = start_spare(tmp_path)
    workspace = homes.dir("gamma") / "workspace"
    workspace.mkdir(exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HERMES_HOME": str(homes.dir("gamma")),
           "HOME": str(workspace)}  # fmt: skip
    bind = {"type": "bind", "env": env, "cwd": str(workspace), "log": str(tmp_path / "gamma.log")}
    try:
        say(spare, bind)
        assert spare.stdout is not None
        assert wire.decode(spare.stdout.readline(), wire.TO_PARENT)["type"] == "ready"
        say(spare, {**bind, "env": {**env, "HERMES_HOME": str(homes.dir("delta"))}})  # bound again: it ends
        assert spare.wait(timeout=TIMEOUT) != 0
        assert spare.stdout.read() == b""
    finally:
        stop(spare)


def test_a_spare_that_cannot_be_bound_is_killed_and_the_worker_started_as_usual(
    tmp_path: Path, scripted: ScriptedUpstream
) -> None:
    """Workers are ``tests/fakeworker.py``, whose spares exit when bound to a profile
    whose environment has ``FAKE_BIND_FAILS`` (here through ``agent.env``)."""
    home = HermesHome(tmp_path / "hermes")
    add_agent_profile(home, "default", scripted)
    add_agent_profile(home, "quick", scripted)
    python = fake_python(tmp_path)
    config = {
        "hermes_home": str(home.root),
        "state_dir": str(tmp_path / "state"),
        "expose": ["default", "quick"],
        "keys": [{"name": "alice", "key_env": "K_ALICE"}],
        "agent": {"profiles": ["quick"], "python": str(python), "env": ["FAKE_BIND_FAILS"]},
    }
    path = tmp_path / "hermes-api.yaml"
    path.write_text(yaml.safe_dump(config))
    environ = worker_environ(tmp_path, K_ALICE=ALICE, FAKE_BIND_FAILS="1")
    with LiveServer(create_app(Settings.load(path, environ), environ=environ)) as server:
        spare = ready_spare(tmp_path / "state")
        body = {"model": "quick", "messages": [{"role": "user", "content": "still answered"}]}
        r = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {ALICE}"},
                       timeout=TIMEOUT)  # fmt: skip
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "echo: still answered"
        (worker,) = worker_pids(home.dir("quick"))
        assert worker != spare and not Path(f"/proc/{spare}").exists()
        assert ready_spare(tmp_path / "state") != spare  # and another spare is started
    assert not worker_pids(home.dir("quick")) and not spare_pids(tmp_path / "state")
