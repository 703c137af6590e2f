"""No secret in any log line, answer or stored response, for agent profiles too: the
sentinel approach of ``test_secrets.py`` with the agent runtime. Sentinels are every
agent profile's provider key (``${PROVIDER_KEY}`` in its ``config.yaml``, the value in
its ``.env``) and another ``.env`` value, the server's API keys, and secrets of
hermes-api's own environment. Every failure an agent turn can have is driven through a
real ``hermes-api serve`` at log level debug (the provider refusing the key, failing
with the key in its error body, unreachable; the worker killed mid-turn; the turn
timeout; input Hermes refuses), streamed and not, chat and Responses; then the whole
log (text and JSON), every answer, the response store's files and every worker's
``/proc/<pid>/environ`` (and the spare worker's, which holds none at all) are searched
for each sentinel."""

from __future__ import annotations

import os
import secrets
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from .conftest import FakeUpstream, HermesHome, ScriptedUpstream, digest
from .test_agent_faults import in_background, spare_pids, wait_for, worker_pids
from .test_secrets import readable_log, transcript

FAILING = ("leak", "leak-500", "status-401", "refused")  # behaviours of tests/fakeupstream.py
SCRIPTED = ("answers", "crashy", "slowpoke")  # on tests/scriptedupstream.py
TURN_TIMEOUT = 3  # seconds, for slowpoke


def sentinel(kind: str) -> str:
    return f"SENTINEL{kind}{secrets.token_hex(12)}"


@pytest.fixture(params=["text", "json"])
def agent_secrets(
    request: pytest.FixtureRequest,
    fake_upstream: FakeUpstream,
    scripted: ScriptedUpstream,
    tmp_path: Path,
    serve_process: Any,
) -> dict[str, Any]:
    home = HermesHome(tmp_path / "hermes")
    home.add("default")
    dotenv: dict[str, list[str]] = {}
    for name in (*FAILING, *SCRIPTED):
        base_url = scripted.base_url if name in SCRIPTED else fake_upstream.base_url(name)
        values = {"PROVIDER_KEY": sentinel("UPSTREAM"), "OTHER_SECRET": sentinel("DOTENV")}
        dotenv[name] = list(values.values())
        model = {"default": "scripted-model", "provider": "custom", "base_url": base_url,
                 "api_key": "${PROVIDER_KEY}", "context_length": 65536}  # fmt: skip
        config = {"agent": {"environment_probe": False, "api_max_retries": 1}}
        home.add(name, model=model, config=config, env=values)
    api_keys = {"full": sentinel("APIKEY"), "narrow": sentinel("APIKEY")}
    own = {name: sentinel("OWNENV") for name in ("API_SERVER_KEY", "OPENROUTER_API_KEY", "HERMES_API_DB_PASSWORD")}
    agents = [*FAILING, *SCRIPTED]
    config = tmp_path / "hermes-api.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "hermes_home": str(home.root),
                "expose": ["default", *agents],
                "keys": [
                    {"name": "full", "key_env": "FULL_KEY"},
                    {"name": "narrow", "key_sha256": digest(api_keys["narrow"]), "profiles": ["answers"]},
                ],
                "log_level": "debug",
                "log_format": request.param,
                "agent": {"profiles": agents, "per_profile": {"slowpoke": {"turn_timeout": TURN_TIMEOUT}}},
            }
        )
    )
    environ = {"FULL_KEY": api_keys["full"], **own}
    server = serve_process(config, tmp_path / "serve.log", environ)
    return {
        "server": server,
        "home": home,
        "api_keys": api_keys,
        "dotenv": dotenv,
        "own": list(own.values()),
        "scripted": scripted,
    }


def test_no_secret_of_an_agent_profile_in_logs_answers_the_store_or_a_worker(agent_secrets: dict[str, Any]) -> None:
    server, home = agent_secrets["server"], agent_secrets["home"]
    api_keys, dotenv, scripted = agent_secrets["api_keys"], agent_secrets["dotenv"], agent_secrets["scripted"]
    everything = [*api_keys.values(), *agent_secrets["own"], *(v for values in dotenv.values() for v in values)]
    seen: list[str] = []
    environs: dict[str, bytes] = {}
    auth = {"Authorization": f"Bearer {api_keys['full']}"}
    with httpx.Client(base_url=server.url, headers=auth, timeout=120) as client:

        def turn(profile: str, text: str, stream: bool, api: str = "chat", **headers: str) -> httpx.Response:
            if api == "chat":
                body: dict[str, Any] = {"model": profile, "messages": [{"role": "user", "content": text}]}
                r = client.post("/v1/chat/completions", json={**body, "stream": stream}, headers=headers)
            else:
                r = client.post("/v1/responses", json={"model": profile, "input": text, "stream": stream},
                                headers=headers)  # fmt: skip
            seen.append(transcript(r))
            return r

        for stream in (False, True):
            for api in ("chat", "responses"):
                assert turn("answers", "hello", stream, api).status_code == 200
                narrow = {"Authorization": f"Bearer {api_keys['narrow']}"}
                assert turn("answers", "hi", stream, api, **narrow).status_code == 200
                for name in FAILING:  # the agent's provider fails: an error of the error table
                    r = turn(name, "hi", stream, api)
                    assert r.status_code >= 400 or "error" in r.text, (name, r.text)
            assert turn("slowpoke", "wait [[sleep:60]]", stream).status_code in (200, 504)
            assert turn("answers", "", stream).status_code == 400  # no user message: Hermes refuses
        assert turn("answers", "x", False, Authorization=f"Bearer {api_keys['narrow']}x").status_code == 401
        assert turn("crashy", "hi", False, Authorization=f"Bearer {api_keys['narrow']}").status_code == 403
        # The worker killed mid-turn, streamed and not.
        for stream in (False, True):
            assert turn("crashy", "warm", False).status_code == 200
            (pid,) = worker_pids(home.dir("crashy"))
            environs["crashy"] = Path(f"/proc/{pid}/environ").read_bytes()
            before = len(scripted.requests())
            thread, out = in_background(lambda stream=stream: turn("crashy", "slow [[sleep:30]]", stream))
            wait_for(lambda before=before: len(scripted.requests()) > before, what="the turn reaching its provider")
            os.kill(pid, signal.SIGKILL)
            thread.join(60)
            assert "agent_worker_failed" in out[0].text
        # What every worker started with.
        for name in (*FAILING, "answers", "slowpoke"):
            for pid in worker_pids(home.dir(name)):
                environs[name] = Path(f"/proc/{pid}/environ").read_bytes()
        assert set(environs) == {*FAILING, *SCRIPTED}
        spares = [Path(f"/proc/{pid}/environ").read_bytes() for pid in spare_pids(home.root / "hermes-api")]
    server.terminate()
    server.process.wait(timeout=60)

    log, raw = readable_log(server), server.log()
    for line in ("the agent's provider call failed", "exited with code -9", "agent worker of profile crashy started"):
        assert line in log, line
    assert any('"code":"agent_turn_timeout"' in text for text in seen)
    assert any('"code":"upstream_auth_failed"' in text for text in seen)
    stored = b"".join(p.read_bytes() for p in (home.root / "hermes-api").iterdir() if p.is_file())
    assert b"hello" in stored, "the store's files are read"
    found = {s for s in everything for text in (raw, *seen) if s in text}
    found |= {s for s in everything if s.encode() in stored}
    assert found == set(), f"secrets found: {found}"
    # A worker starts with its own environment, never hermes-api's or another profile's
    # (or, bound from a spare, with the spare's: none of them; test_agent_spare.py).
    for name, environ in environs.items():
        foreign = [s for s in everything if s.encode() in environ and s not in dotenv[name]]
        assert foreign == [], (name, foreign)
    for environ in spares:
        assert [s for s in everything if s.encode() in environ] == []
    assert len(seen) > 30
