"""Profiles that delegate to profiles: an agent's ``delegate_to_profile`` tool calls this
server back on loopback with a credential of its turn, against a scripted provider.

One server for the module. Agent profiles ``alpha`` (may delegate to beta and offline),
``beta`` (may delegate to gamma and alpha) and ``gamma``; direct profiles ``writer``
(no one's target) and ``offline`` (its provider refuses connections). Keys ``alice``
(every profile), ``bob`` (alpha only) and ``carol`` (every profile, with a generous
``rpm``: delegated turns count against the caller's limits). ``max_depth`` is the
default, 2: a client's turn may delegate, a delegated turn may not.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from hermes_api.app import create_app
from hermes_api.credentials import Credential, Credentials
from hermes_api.settings import Settings

from .conftest import HermesHome, LiveServer, ScriptedUpstream, add_agent_profile, free_port, worker_environ

if importlib.util.find_spec("run_agent") is None:
    if os.environ.get("HERMES_API_AGENT") == "required":
        raise RuntimeError("hermes-agent is not installed: pip install -e '.[agent]'")
    pytest.skip("delegation needs the agent runtime: pip install -e '.[agent]'", allow_module_level=True)

ALICE, BOB, CAROL = "sk-alice-0123456789abcdef", "sk-bob-0123456789abcdef", "sk-carol-0123456789abcdef"
TIMEOUT = 120.0  # a worker's first turn starts Hermes (seconds on a busy machine)
TOOL = "delegate_to_profile"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, scripted: ScriptedUpstream) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("delegation")
    home = HermesHome(root / "hermes")
    for name in ("default", "alpha", "beta", "gamma", "writer"):
        add_agent_profile(home, name, scripted, soul=f"You are {name.upper()}-PERSONA.")
    refused = {"default": "m", "provider": "custom", "base_url": f"http://127.0.0.1:{free_port()}/v1",
               "api_key": "sk-offline-upstream-key"}  # fmt: skip
    home.add("offline", model=refused)
    config = {
        "hermes_home": str(home.root),
        "state_dir": str(root / "state"),
        "expose": ["default", "alpha", "beta", "gamma", "writer", "offline"],
        "keys": [
            {"name": "alice", "key_env": "K_ALICE"},
            {"name": "bob", "key_env": "K_BOB", "profiles": ["alpha"]},
            {"name": "carol", "key_env": "K_CAROL", "rpm": 10000},
        ],
        "agent": {"profiles": ["alpha", "beta", "gamma"], "turn_timeout": 90},
        "delegation": {"allow": {"alpha": ["beta", "offline"], "beta": ["gamma", "alpha"]}},
    }
    path = root / "hermes-api.yaml"
    path.write_text(yaml.safe_dump(config))
    environ = worker_environ(root, K_ALICE=ALICE, K_BOB=BOB, K_CAROL=CAROL)
    server = LiveServer(create_app(Settings.load(path, environ), environ=environ)).__enter__()
    try:
        yield {"server": server, "home": home, "upstream": scripted, "root": root}
    finally:
        server.__exit__()


def delegate(profile: str, task: str, context: str | None = None) -> tuple[str, dict[str, Any]]:
    """A scripted call of the delegation tool."""
    return TOOL, {"profile": profile, "task": task, **({"context": context} if context else {})}


def chat(stack: dict[str, Any], profile: str, content: str, key: str = ALICE, **extra: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", **extra.pop("headers", {})}
    body = {"model": profile, "messages": extra.pop("messages", [{"role": "user", "content": content}]), **extra}
    return httpx.post(stack["server"].url + "/v1/chat/completions", json=body, headers=headers, timeout=TIMEOUT)


def calls_since(stack: dict[str, Any], count: int, profile: str | None = None) -> list[dict[str, Any]]:
    """The provider requests since ``count``, of ``profile`` only when given (by its key)."""
    found = stack["upstream"].requests()[count:]
    return [r for r in found if profile is None or r["auth"] == f"Bearer sk-{profile}-upstream-key"]


def mark(stack: dict[str, Any]) -> int:
    return len(stack["upstream"].requests())


def tool_results(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The results of the tools a provider request carries back, parsed."""
    return [json.loads(m["content"]) for m in request["body"]["messages"] if m["role"] == "tool"]


def answer(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def metrics(stack: dict[str, Any]) -> str:
    return httpx.get(stack["server"].url + "/metrics", timeout=10).text


# -- A delegates to B -------------------------------------------------------------------


def test_a_delegates_to_b_and_answers_with_what_b_said(stack: dict[str, Any]) -> None:
    marker = stack["upstream"].script("capital", delegate("beta", "what is the capital of Peru?", "a geography quiz"))
    before = mark(stack)
    text = answer(chat(stack, "alpha", f"ask beta {marker}"))
    # A's answer is built from the tool's result, which is B's answer.
    assert text.startswith("done: ") and "echo: what is the capital of Peru?" in text
    (b_turn,) = calls_since(stack, before, "beta")
    assert b_turn["body"]["messages"][-1] == {"role": "user", "content": "what is the capital of Peru?"}
    system = b_turn["body"]["messages"][0]["content"]
    assert "BETA-PERSONA" in system and "a geography quiz" in system  # B's own persona, A's context
    assert "ALPHA-PERSONA" not in system
    first, second = calls_since(stack, before, "alpha")
    offered = [t["function"] for t in first["body"]["tools"] if t["function"]["name"] == TOOL]
    assert len(offered) == 1 and "beta, offline" in offered[0]["description"]
    assert tool_results(second) == [{"profile": "beta", "answer": "echo: what is the capital of Peru?"}]
    # The delegated turn is counted as beta's, marked with the caller.
    assert 'hermes_api_delegated_requests_total{caller="alpha",key="alice",profile="beta",status="200"}' in metrics(
        stack
    )


def test_the_tool_is_offered_only_to_profiles_with_targets(stack: dict[str, Any]) -> None:
    before = mark(stack)
    assert answer(chat(stack, "gamma", "hello")) == "echo: hello"
    (call,) = calls_since(stack, before, "gamma")
    assert TOOL not in {t["function"]["name"] for t in call["body"]["tools"]}


def test_the_delegation_is_a_tool_item_of_the_callers_answer(stack: dict[str, Any]) -> None:
    marker = stack["upstream"].script("visible", delegate("beta", "say hi"))
    body = {"model": "alpha", "input": f"go {marker}", "stream": True}
    r = httpx.post(stack["server"].url + "/v1/responses", json=body, headers={"Authorization": f"Bearer {ALICE}"},
                   timeout=TIMEOUT)  # fmt: skip
    final = json.loads([line for line in r.text.splitlines() if line.startswith("data: ")][-1][6:])["response"]
    call, message = final["output"]
    assert (call["type"], call["name"], call["status"]) == ("mcp_call", TOOL, "completed")
    assert json.loads(call["arguments"]) == {"profile": "beta", "task": "say hi"}
    assert json.loads(call["output"]) == {"profile": "beta", "answer": "echo: say hi"}
    assert message["content"][0]["text"].lstrip().startswith("done: ")  # streamed: after a paragraph break


# -- depth --------------------------------------------------------------------------------


def test_a_to_b_to_c_stops_at_the_depth_limit(stack: dict[str, Any]) -> None:
    upstream: ScriptedUpstream = stack["upstream"]
    deeper = upstream.script("b-to-c", delegate("gamma", "the bottom"))
    marker = upstream.script("a-to-b-to-c", delegate("beta", f"go deeper {deeper}"))
    before = mark(stack)
    text = answer(chat(stack, "alpha", marker))
    assert calls_since(stack, before, "gamma") == []  # refused before any provider call
    b_first, b_second = calls_since(stack, before, "beta")
    (refusal,) = tool_results(b_second)
    assert refusal["status"] == 400 and refusal["code"] == "delegation_depth_exceeded"
    assert "at most 2" in refusal["error"]
    # B's turn still answered (with the refusal), and A's with B's answer.
    assert "delegation_depth_exceeded" in text


def test_a_cycle_a_to_b_to_a_stops(stack: dict[str, Any]) -> None:
    upstream: ScriptedUpstream = stack["upstream"]
    back = upstream.script("b-to-a", delegate("alpha", "and back again [[call:a-to-b-cycle]]"))
    marker = upstream.script("a-to-b-cycle", delegate("beta", f"over to you {back}"))
    before = mark(stack)
    text = answer(chat(stack, "alpha", marker))
    assert len(calls_since(stack, before, "alpha")) == 2  # A's two steps; never a second A turn
    (refusal,) = tool_results(calls_since(stack, before, "beta")[1])
    assert refusal["code"] == "delegation_depth_exceeded"
    assert "delegation_depth_exceeded" in text


# -- refusals -----------------------------------------------------------------------------


def test_a_target_not_in_the_list_and_one_the_key_may_not_use_are_refused_distinctly(stack: dict[str, Any]) -> None:
    upstream: ScriptedUpstream = stack["upstream"]
    before = mark(stack)
    answer(chat(stack, "alpha", upstream.script("to-writer", delegate("writer", "write a poem"))))
    (not_listed,) = tool_results(calls_since(stack, before, "alpha")[1])
    assert not_listed["status"] == 403 and not_listed["code"] == "delegation_not_allowed"
    assert "'alpha' may not delegate to 'writer'" in not_listed["error"]
    assert calls_since(stack, before, "writer") == []
    # bob may use alpha but not beta: the delegated turn runs as bob's key, so beta is his usual 403.
    before = mark(stack)
    text = answer(chat(stack, "alpha", upstream.script("bob-to-beta", delegate("beta", "hi")), key=BOB))
    (forbidden,) = tool_results(calls_since(stack, before, "alpha")[1])
    assert forbidden["status"] == 403 and forbidden["code"] == "model_not_found"
    assert "may not use the model `beta`" in forbidden["error"]
    assert calls_since(stack, before, "beta") == [] and "model_not_found" in text


# -- history ------------------------------------------------------------------------------


def beta_turn_for(stack: dict[str, Any], before: int, task: str) -> list[tuple[str, str]]:
    """The (role, content) of the user and assistant messages B's provider got for ``task``."""
    (found,) = [r for r in calls_since(stack, before, "beta") if r["body"]["messages"][-1]["content"] == task]
    return [(m["role"], m["content"]) for m in found["body"]["messages"] if m["role"] in ("user", "assistant")]


def test_two_delegations_in_one_session_share_bs_history(stack: dict[str, Any]) -> None:
    upstream: ScriptedUpstream = stack["upstream"]
    remember = upstream.script("remember", delegate("beta", "remember: the code word is PAPAYA"))
    recall = upstream.script("recall", delegate("beta", "what was the code word?"))
    session = {"X-Hermes-Session-Id": "trip-1"}
    answer(chat(stack, "alpha", remember, headers=session))
    before = mark(stack)
    answer(chat(stack, "alpha", recall, headers=session))
    assert beta_turn_for(stack, before, "what was the code word?") == [
        ("user", "remember: the code word is PAPAYA"),
        ("assistant", "echo: remember: the code word is PAPAYA"),
        ("user", "what was the code word?"),
    ]
    # Another session of A is another session of B.
    before = mark(stack)
    answer(chat(stack, "alpha", recall, headers={"X-Hermes-Session-Id": "trip-2"}))
    assert beta_turn_for(stack, before, "what was the code word?") == [("user", "what was the code word?")]


def test_a_conversation_without_a_session_id_is_recognised_by_its_first_message(stack: dict[str, Any]) -> None:
    upstream: ScriptedUpstream = stack["upstream"]
    remember = upstream.script("remember-2", delegate("beta", "remember: the colour is TEAL"))
    recall = upstream.script("recall-2", delegate("beta", "what was the colour?"))
    first = answer(chat(stack, "alpha", remember))
    before = mark(stack)
    history = [
        {"role": "user", "content": remember},
        {"role": "assistant", "content": first},
        {"role": "user", "content": recall},
    ]
    answer(chat(stack, "alpha", "", messages=history))  # as Open WebUI sends a chat: all of it
    assert ("user", "remember: the colour is TEAL") in beta_turn_for(stack, before, "what was the colour?")


def test_concurrent_delegations_across_keys_leak_nothing(stack: dict[str, Any]) -> None:
    upstream: ScriptedUpstream = stack["upstream"]
    jobs = [(name, key, i) for name, key in (("alice", ALICE), ("carol", CAROL)) for i in range(4)]
    for name, _, i in jobs:
        upstream.script(f"keep-{name}-{i}", delegate("beta", f"keep the secret {name.upper()}-SECRET-{i}"))
        upstream.script(f"tell-{name}-{i}", delegate("beta", f"tell the secret of {name}-{i}"))

    def conversation(job: tuple[str, str, int]) -> list[str]:
        name, key, i = job
        session = {"X-Hermes-Session-Id": f"shared-{i}"}  # the same ids for both keys
        return [answer(chat(stack, "alpha", f"[[call:{step}-{name}-{i}]]", key, headers=session))
                for step in ("keep", "tell")]  # fmt: skip

    before, since = mark(stack), time.time()
    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = dict(zip(jobs, pool.map(conversation, jobs), strict=True))
    for (name, _, i), (kept, told) in answers.items():
        assert f"{name.upper()}-SECRET-{i}" in kept
        seen = " ".join(content for _, content in beta_turn_for(stack, before, f"tell the secret of {name}-{i}"))
        assert f"{name.upper()}-SECRET-{i}" in seen
        others = [f"{n.upper()}-SECRET-{j}" for n, _, j in jobs if (n, j) != (name, i)]
        assert not [s for s in others if s in seen or s in told], (name, i, seen)
    # The usage records: each of beta's turns is the caller's key's, names alpha and the request that asked.
    for name in ("alice", "carol"):
        rows = usage_rows(stack, name, since, count=16)
        asked = {request for profile, request, by, _ in rows if profile == "alpha" and by is None}
        delegated = [(by, caller) for profile, _, by, caller in rows if profile == "beta"]
        assert len(asked) == 8 and len(delegated) == 8
        assert all(by == "alpha" and caller in asked for by, caller in delegated)


def usage_rows(stack: dict[str, Any], key: str, since: float, count: int) -> list[tuple[Any, ...]]:
    """``(profile, request_id, delegated_by, caller_request_id)`` of ``key``'s turns since
    ``since``, once ``count`` of them are complete (rows are queued after each answer)."""
    deadline = time.monotonic() + 10
    while True:
        db = sqlite3.connect(stack["root"] / "state" / "responses.db")
        try:
            rows = db.execute(
                "SELECT profile, request_id, delegated_by, caller_request_id FROM usage"
                " WHERE key_name = ? AND created_at >= ? AND status IS NOT NULL",
                (key, since),
            ).fetchall()
        finally:
            db.close()
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


# -- failures -------------------------------------------------------------------------------


def test_a_delegated_turns_failure_reaches_a_as_a_tool_error(stack: dict[str, Any]) -> None:
    upstream: ScriptedUpstream = stack["upstream"]
    before = mark(stack)
    text = answer(chat(stack, "alpha", upstream.script("to-offline", delegate("offline", "are you there?"))))
    (failure,) = tool_results(calls_since(stack, before, "alpha")[1])
    assert failure["status"] == 502 and failure["code"] == "upstream_unavailable"
    assert text.startswith("done: ") and "upstream_unavailable" in text
    # The same for an agent target whose provider refuses its key.
    before = mark(stack)
    answer(chat(stack, "alpha", upstream.script("beta-401", delegate("beta", "fail [[status:401]]"))))
    (failure,) = tool_results(calls_since(stack, before, "alpha")[1])
    assert failure["status"] == 502 and failure["code"] == "upstream_auth_failed"


def in_flight(stack: dict[str, Any], profile: str) -> float:
    for line in metrics(stack).splitlines():
        if line.startswith(f'hermes_api_turns_in_flight{{profile="{profile}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_a_client_leaving_stops_the_delegated_turn_too(stack: dict[str, Any]) -> None:
    marker = stack["upstream"].script("slow", delegate("beta", "take your time [[sleep:60]]"))
    before = mark(stack)
    body = json.dumps({"model": "alpha", "messages": [{"role": "user", "content": marker}]}).encode()
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", stack["server"].port), timeout=TIMEOUT) as client:
        client.sendall(request)
        deadline = time.monotonic() + TIMEOUT
        while not calls_since(stack, before, "beta"):  # B's turn is waiting on its (sleeping) provider
            assert time.monotonic() < deadline, "the delegated turn did not start"
            time.sleep(0.1)
    # The client has gone: A's agent is interrupted, its tool closes its connection, B's turn stops.
    deadline = time.monotonic() + 20
    while (in_flight(stack, "alpha"), in_flight(stack, "beta")) != (0.0, 0.0):
        assert time.monotonic() < deadline, "the turns did not stop"
        time.sleep(0.2)


# -- the credential -------------------------------------------------------------------------


def credential(stack: dict[str, Any], **claims: Any) -> str:
    credentials = Credentials(stack["root"] / "state")
    credentials.open()
    fields = {"key": "alice", "profile": "alpha", "session": "s", "request": "req_x", "depth": 0,
              "expires": time.time() + 60, **claims}  # fmt: skip
    return credentials.mint(Credential(**fields))


def delegated_post(stack: dict[str, Any], token: str, path: str = "/v1/chat/completions", **headers: str) -> Any:
    body = {"model": "beta", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {token}", **headers}
    return httpx.post(stack["server"].url + path, json=body, headers=headers, timeout=TIMEOUT)


def test_the_secret_is_private(stack: dict[str, Any]) -> None:
    assert (stack["root"] / "state" / "delegation.secret").stat().st_mode & 0o777 == 0o600


def test_a_credential_cannot_be_forged_stretched_or_used_elsewhere(stack: dict[str, Any]) -> None:
    token = credential(stack)
    claims, signature = token.removeprefix("hermes-delegation.").split(".")
    forged = "hermes-delegation." + claims[:-2] + ("AA" if claims[-2:] != "AA" else "BB") + "." + signature
    expired = credential(stack, expires=time.time() - 1)
    for bad in (forged, expired, credential(stack, key="mallory"), token + "x"):
        r = delegated_post(stack, bad)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert bad not in r.text
    assert delegated_post(stack, token, "/v1/responses").status_code == 401
    assert delegated_post(stack, token, **{"X-Forwarded-For": "203.0.113.9"}).status_code == 401


def test_depth_lives_in_the_credential(stack: dict[str, Any]) -> None:
    before = mark(stack)
    deep = credential(stack, depth=1)  # a delegated turn delegating again: at the limit
    for depth in ("0", ""):
        r = delegated_post(stack, deep, **{"X-Hermes-Delegate-Depth": depth})
        assert r.status_code == 400 and r.json()["error"]["code"] == "delegation_depth_exceeded"
    # A client's header can only add to the count.
    r = chat(stack, "gamma", "hi", headers={"X-Hermes-Delegate-Depth": "2"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "delegation_depth_exceeded"
    assert chat(stack, "gamma", "hi", headers={"X-Hermes-Delegate-Depth": "-1"}).json()["error"]["code"] == (
        "invalid_header"
    )
    assert calls_since(stack, before) == []  # nothing reached a provider
    assert answer(delegated_post(stack, credential(stack), **{"X-Hermes-Delegate-Depth": "0"})) == "echo: hi"


def test_a_delegated_request_continues_the_servers_session_not_its_own(stack: dict[str, Any], tmp_path: Path) -> None:
    token = credential(stack, session="chosen-by-the-server")
    answer(delegated_post(stack, token, **{"X-Hermes-Session-Id": "picked-by-the-worker"}))
    before = mark(stack)
    answer(delegated_post(stack, token))
    (turn,) = calls_since(stack, before, "beta")
    assert [m["content"] for m in turn["body"]["messages"] if m["role"] == "user"] == ["hi", "hi"]


def test_no_credential_is_written_anywhere(stack: dict[str, Any]) -> None:
    """The worker's credential is a bearer token: it is in no log, no state.db, no store
    row and no provider request, on either side of a delegation."""
    deeper = stack["upstream"].script("quiet-deeper", delegate("gamma", "refused: too deep"))
    marker = stack["upstream"].script("quiet", delegate("beta", f"remember nothing {deeper}"))
    answer(chat(stack, "alpha", marker))
    record = stack["upstream"].record
    files = [p for p in [*stack["root"].rglob("*"), *record.parent.rglob("*")] if p.is_file()]
    assert any(p.name == "alpha.log" for p in files) and any(p.name == "state.db" for p in files)
    assert [p for p in files if b"hermes-delegation." in p.read_bytes()] == []
