"""The agent runtime: profiles answered by the real Hermes agent (hermes-agent, the
``agent`` extra) in a worker process each, against a scripted provider that calls tools.

One server for the module: profiles ``alpha`` and ``beta`` run the agent, ``default``
stays direct; keys ``alice`` (every profile) and ``bob`` (alpha only).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sqlite3
import subprocess
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

if importlib.util.find_spec("run_agent") is None:
    # CI installs the extra and sets HERMES_API_AGENT=required: there a missing agent fails.
    if os.environ.get("HERMES_API_AGENT") == "required":
        raise RuntimeError("hermes-agent is not installed: pip install -e '.[agent]'")
    pytest.skip("the agent runtime needs hermes-agent: pip install -e '.[agent]'", allow_module_level=True)

ALICE, BOB = "sk-alice-0123456789abcdef", "sk-bob-0123456789abcdef"
TIMEOUT = 120.0  # a worker's first turn starts Hermes (seconds on a busy machine)


def memory_call(entry: str) -> str:
    args = {"action": "add", "target": "memory", "content": entry}
    return f"remember this [[tool:memory {json.dumps(args)}]]"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, scripted: ScriptedUpstream) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("agent")
    home = HermesHome(root / "hermes")
    add_agent_profile(home, "default", scripted, soul="You are DEFAULT-PERSONA.")
    add_agent_profile(home, "alpha", scripted, soul="You are ALPHA-PERSONA.", memory=["alpha knows the tea shop"])
    add_agent_profile(home, "beta", scripted, soul="You are BETA-PERSONA.")
    skill = home.dir("beta") / "skills" / "research" / "cite-sources"
    skill.mkdir(parents=True)
    (skill / "SKILL.md").write_text("---\nname: cite-sources\ndescription: Cite every source you use.\n---\nCite.\n")
    config = {
        "hermes_home": str(home.root),
        "state_dir": str(root / "state"),
        "expose": ["default", "alpha", "beta"],
        "keys": [{"name": "alice", "key_env": "K_ALICE"}, {"name": "bob", "key_env": "K_BOB", "profiles": ["alpha"]}],
        "agent": {"profiles": ["alpha", "beta"], "turn_timeout": 90},
        "reload_interval": 0.2,
    }
    path = root / "hermes-api.yaml"
    path.write_text(yaml.safe_dump(config))
    environ = worker_environ(root, K_ALICE=ALICE, K_BOB=BOB)
    server = LiveServer(create_app(Settings.load(path, environ), environ=environ)).__enter__()
    try:
        yield {"server": server, "home": home, "upstream": scripted, "root": root}
    finally:
        server.__exit__()


def post(stack: dict[str, Any], path: str, body: dict[str, Any], key: str = ALICE, **headers: str) -> httpx.Response:
    return httpx.post(
        stack["server"].url + path,
        json=body,
        headers={"Authorization": f"Bearer {key}", **headers},
        timeout=TIMEOUT,
    )


def chat(stack: dict[str, Any], profile: str, text: str, key: str = ALICE, **extra: Any) -> httpx.Response:
    headers = extra.pop("headers", {})
    body = {"model": profile, "messages": [{"role": "user", "content": text}], **extra}
    return post(stack, "/v1/chat/completions", body, key, **headers)


def events(response: httpx.Response) -> list[tuple[str | None, str]]:
    """``(event name, data)`` of every SSE event of ``response``."""
    out, name = [], None
    for line in response.text.splitlines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            out.append((name, line[6:]))
            name = None
    return out


def sessions(home: HermesHome, profile: str) -> list[dict[str, Any]]:
    """The ``sessions`` rows of the profile's ``state.db``, with their messages."""
    db = sqlite3.connect(home.dir(profile) / "state.db")
    db.row_factory = sqlite3.Row
    try:
        rows = [dict(r) for r in db.execute("SELECT * FROM sessions ORDER BY started_at")]
        for row in rows:
            row["messages"] = [
                dict(m) for m in db.execute("SELECT * FROM messages WHERE session_id = ? ORDER BY id", (row["id"],))
            ]
        return rows
    finally:
        db.close()


def upstream_calls_since(stack: dict[str, Any], count: int) -> list[dict[str, Any]]:
    return stack["upstream"].requests()[count:]


def system_prompt(request: dict[str, Any]) -> str:
    return next(m["content"] for m in request["body"]["messages"] if m["role"] == "system")


# -- a text turn ----------------------------------------------------------------------


def test_a_text_turn_is_answered_by_the_agent_and_lands_in_state_db(stack: dict[str, Any]) -> None:
    before = len(stack["upstream"].requests())
    r = chat(stack, "alpha", "hello agent")
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["model"] == "alpha"
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "echo: hello agent"}
    calls = upstream_calls_since(stack, before)
    assert len(calls) == 1 and calls[0]["auth"] == "Bearer sk-alpha-upstream-key"
    # Usage is the agent's (the provider's figures for its one call).
    assert answer["usage"]["prompt_tokens"] > 100 and answer["usage"]["completion_tokens"] == 7
    # The persona, memory and Hermes's own API-server platform hint are in the agent's prompt.
    prompt = system_prompt(calls[0])
    assert "ALPHA-PERSONA" in prompt and "alpha knows the tea shop" in prompt
    assert "You're responding through an API server" in prompt
    turn = [s for s in sessions(stack["home"], "alpha") if any(m["content"] == "hello agent" for m in s["messages"])]
    assert len(turn) == 1 and turn[0]["source"] == "api_server"
    assert [(m["role"], m["content"]) for m in turn[0]["messages"]] == [
        ("user", "hello agent"),
        ("assistant", "echo: hello agent"),
    ]


def test_a_streamed_text_turn_ends_with_usage_and_done(stack: dict[str, Any]) -> None:
    r = chat(stack, "alpha", "stream please", stream=True, stream_options={"include_usage": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    datas = [d for _, d in events(r)]
    assert datas[-1] == "[DONE]"
    chunks = [json.loads(d) for d in datas[:-1]]
    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "echo: stream please"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 7


def test_a_provider_that_reports_no_usage_gives_no_usage_not_zeros(stack: dict[str, Any]) -> None:
    """llama.cpp's server sends no usage in the streams Hermes asks for: the turn's usage
    is then unknown (null), as for a direct turn, never made-up zeros."""
    r = chat(stack, "alpha", "how many tokens? [[no-usage]]")
    assert r.status_code == 200, r.text
    assert r.json()["usage"] is None and r.json()["choices"][0]["message"]["content"] == "echo: how many tokens?"
    streamed = chat(stack, "alpha", "and now? [[no-usage]]", stream=True, stream_options={"include_usage": True})
    chunks = [json.loads(d) for _, d in events(streamed) if d != "[DONE]"]
    assert chunks and all(c["choices"] for c in chunks)  # no usage chunk: there is no usage to send
    response = post(stack, "/v1/responses", {"model": "alpha", "input": "and here? [[no-usage]]"})
    assert response.status_code == 200 and response.json()["usage"] is None


def test_the_client_system_prompt_is_ephemeral_and_client_tools_never_reach_the_agent(stack: dict[str, Any]) -> None:
    before = len(stack["upstream"].requests())
    client_tool = {"type": "function", "function": {"name": "open_the_pod_bay_doors", "parameters": {"type": "object"}}}
    body = {
        "model": "beta",
        "messages": [{"role": "system", "content": "ANSWER-IN-HAIKU"}, {"role": "user", "content": "hi"}],
        "tools": [client_tool],
    }
    r = post(stack, "/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    (call,) = upstream_calls_since(stack, before)
    prompt = system_prompt(call)
    assert prompt.rstrip().endswith("ANSWER-IN-HAIKU")  # after Hermes's own prompt, as Hermes appends it
    names = {t["function"]["name"] for t in call["body"]["tools"]}
    assert "open_the_pod_bay_doors" not in names
    assert {"memory", "todo", "skills_list", "session_search"} <= names  # the safe default toolsets
    assert not names & {"terminal", "write_file", "execute_code"}
    # Hermes's skills index lists the profile's skill.
    assert "cite-sources" in prompt
    stored = [s for s in sessions(stack["home"], "beta") if "ANSWER-IN-HAIKU" in (s["system_prompt"] or "")]
    assert stored == []  # ephemeral: never stored


# -- tools ----------------------------------------------------------------------------


def test_a_memory_turn_writes_memory_md_and_the_next_turns_see_it(stack: dict[str, Any], tmp_path: Path) -> None:
    home: HermesHome = stack["home"]
    r = chat(stack, "alpha", memory_call("the user's cat is called Ziggy"))
    assert r.status_code == 200, r.text
    answer = r.json()["choices"][0]["message"]
    assert "tool_calls" not in answer and answer["content"].startswith("done: ")
    assert "the user's cat is called Ziggy" in (home.dir("alpha") / "memories" / "MEMORY.md").read_text()
    # The next agent turn (a new session) has the entry in its memory block.
    before = len(stack["upstream"].requests())
    assert chat(stack, "alpha", "what is my cat called?").status_code == 200
    assert "the user's cat is called Ziggy" in system_prompt(upstream_calls_since(stack, before)[0])
    # A direct-runtime server on the same home sees it in the profile's persona too.
    config = {"hermes_home": str(home.root), "state_dir": str(tmp_path / "state"), "expose": ["alpha"],
              "default_profile": "alpha"}  # fmt: skip
    path = tmp_path / "direct.yaml"
    path.write_text(yaml.safe_dump(config))
    with LiveServer(create_app(Settings.load(path, {}), environ={})) as direct:
        before = len(stack["upstream"].requests())
        r = httpx.post(direct.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]},
                       timeout=TIMEOUT)  # fmt: skip
        assert r.status_code == 200, r.text
    (call,) = upstream_calls_since(stack, before)
    assert "ALPHA-PERSONA" in system_prompt(call) and "the user's cat is called Ziggy" in system_prompt(call)


def test_tools_the_agent_ran_are_never_sent_as_tool_calls(stack: dict[str, Any]) -> None:
    r = chat(stack, "alpha", memory_call("streams stay clean"), stream=True)
    assert r.status_code == 200
    found = events(r)
    assert all(name is None for name, _ in found)  # no custom events unless asked
    chunks = [json.loads(d) for _, d in found if d != "[DONE]"]
    assert not any("tool_calls" in (c["choices"][0].get("delta") or {}) for c in chunks if c["choices"])
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert "done: " in text


def test_tool_progress_as_hermes_events_when_asked(stack: dict[str, Any]) -> None:
    headers = {"X-Hermes-Tool-Display": "hermes"}
    r = chat(stack, "alpha", memory_call("progress is opt-in"), stream=True, headers=headers)
    progress = [json.loads(d) for name, d in events(r) if name == "hermes.tool.progress"]
    assert [p["status"] for p in progress] == ["running", "completed"]
    assert progress[0]["tool"] == "memory" and progress[0]["toolCallId"] == progress[1]["toolCallId"]
    assert progress[0]["emoji"] and "progress is opt-in" in progress[0]["label"]


def test_tool_blocks_for_open_webui_when_asked(stack: dict[str, Any]) -> None:
    headers = {"X-Hermes-Tool-Display": "openwebui"}
    streamed = chat(stack, "alpha", memory_call('blocks <render> & "quote"'), stream=True, headers=headers)
    chunks = [json.loads(d) for _, d in events(streamed) if d != "[DONE]"]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    block = text[text.index("<details") : text.index("</details>")]
    assert block.startswith('<details type="tool_calls" done="true" id="call_') and 'name="memory"' in block
    assert "blocks &lt;render&gt; &amp; \\&quot;quote\\&quot;" in block  # escaped: the tag stays whole
    assert text.index("<details") > 0 and text[text.index("<details") - 1] == "\n"  # on a line of its own
    plain = chat(stack, "alpha", memory_call("non-stream blocks"), headers=headers).json()
    assert plain["choices"][0]["message"]["content"].startswith('\n<details type="tool_calls" done="true"')
    # Open WebUI sends the blocks back as history: the agent never sees them.
    before = len(stack["upstream"].requests())
    history = [
        {"role": "user", "content": "earlier"},
        {"role": "assistant", "content": plain["choices"][0]["message"]["content"]},
        {"role": "user", "content": "next"},
    ]
    r = post(stack, "/v1/chat/completions", {"model": "alpha", "messages": history}, **headers)
    assert r.status_code == 200
    sent = upstream_calls_since(stack, before)[0]["body"]["messages"]
    assert not any("<details" in str(m.get("content")) for m in sent)
    assert chat(stack, "alpha", "x", headers={"X-Hermes-Tool-Display": "sparkles"}).status_code == 400


# -- sessions ---------------------------------------------------------------------------


def test_a_session_continues_from_state_db_and_never_across_keys(stack: dict[str, Any]) -> None:
    sid = {"X-Hermes-Session-Id": "trip-planning"}
    assert chat(stack, "alpha", "my destination is Lisbon", headers=sid).status_code == 200
    before = len(stack["upstream"].requests())
    r = chat(stack, "alpha", "where am I going?", headers=sid)
    assert r.status_code == 200 and r.headers["x-hermes-session-id"] == "trip-planning"
    sent = [(m["role"], m["content"]) for m in upstream_calls_since(stack, before)[0]["body"]["messages"][1:]]
    assert sent == [
        ("user", "my destination is Lisbon"),
        ("assistant", "echo: my destination is Lisbon"),
        ("user", "where am I going?"),
    ]
    # The same session id with another key is another session: nothing of alice's.
    before = len(stack["upstream"].requests())
    assert chat(stack, "alpha", "where am I going?", key=BOB, headers=sid).status_code == 200
    sent = upstream_calls_since(stack, before)[0]["body"]["messages"][1:]
    assert [m["content"] for m in sent] == ["where am I going?"]
    ids = {s["id"] for s in sessions(stack["home"], "alpha") if any("where am I going" in (m["content"] or "")
                                                                     for m in s["messages"])}  # fmt: skip
    assert len(ids) == 2 and "trip-planning" not in ids


# -- the agent's provider failing --------------------------------------------------------


def test_the_agents_provider_refusing_its_key_is_the_error_tables_502(stack: dict[str, Any]) -> None:
    started = time.monotonic()
    r = chat(stack, "beta", "fail [[status:401]]")
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_auth_failed"
    assert r.headers["x-should-retry"] == "false"
    streamed = chat(stack, "beta", "fail [[status:401]]", stream=True)
    assert streamed.status_code == 502  # before the first byte: the agent failed at once
    assert time.monotonic() - started < TIMEOUT


# -- isolation of OS tools ----------------------------------------------------------------


@pytest.fixture(scope="module")
def terminal_stack(tmp_path_factory: pytest.TempPathFactory, scripted: ScriptedUpstream) -> Iterator[dict[str, Any]]:
    """Profiles ``gamma`` and ``delta`` with the terminal toolset, each with its own
    ``.env`` value. (Offline CI: Hermes's command scanner tirith is not downloaded.)"""
    root = tmp_path_factory.mktemp("terminal")
    home = HermesHome(root / "hermes")
    no_download = {"security": {"tirith_enabled": False}}
    add_agent_profile(home, "default", scripted)
    for name, colour in (("gamma", "green"), ("delta", "violet")):
        add_agent_profile(home, name, scripted, env={"PROFILE_COLOUR": colour}, config=no_download)
    terminal = {"toolsets": ["memory", "terminal"]}
    config = {
        "hermes_home": str(home.root),
        "state_dir": str(root / "state"),
        "expose": ["default", "gamma", "delta"],
        "keys": [{"name": "alice", "key_env": "K_ALICE"}],
        "agent": {"profiles": ["gamma", "delta"], "per_profile": {"gamma": terminal, "delta": terminal}},
    }
    path = root / "hermes-api.yaml"
    path.write_text(yaml.safe_dump(config))
    environ = worker_environ(root, K_ALICE=ALICE, SECRET_OF_THE_SERVER="sk-server-only-0123456789")
    server = LiveServer(create_app(Settings.load(path, environ), environ=environ)).__enter__()
    try:
        yield {"server": server, "home": home, "upstream": scripted, "root": root}
    finally:
        server.__exit__()


def test_terminal_tools_of_two_profiles_each_see_only_their_own(terminal_stack: dict[str, Any]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    command = 'pwd; echo "home=$HERMES_HOME"; echo "colour=$PROFILE_COLOUR"; echo "server=$SECRET_OF_THE_SERVER"'
    text = f"run it [[tool:terminal {json.dumps({'command': command})}]]"
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda p: (p, chat(terminal_stack, p, text)), ["gamma", "delta"] * 2))
    home: HermesHome = terminal_stack["home"]
    for profile, r in answers:
        assert r.status_code == 200, r.text
        output = r.json()["choices"][0]["message"]["content"]
        other = "delta" if profile == "gamma" else "gamma"
        assert str(home.dir(profile) / "workspace") in output, output
        assert f"home={home.dir(profile)}" in output
        assert f"colour={'green' if profile == 'gamma' else 'violet'}" in output
        assert 'server="' in output  # empty: nothing of hermes-api's own environment (the JSON string ends)
        assert str(home.dir(other)) not in output and "sk-server-only" not in output


def test_os_toolsets_only_for_the_profile_that_names_them(terminal_stack: dict[str, Any]) -> None:
    before = len(terminal_stack["upstream"].requests())
    assert chat(terminal_stack, "gamma", "hi").status_code == 200
    names = {t["function"]["name"] for t in upstream_calls_since(terminal_stack, before)[0]["body"]["tools"]}
    assert "terminal" in names and "execute_code" not in names and "write_file" not in names


# -- the Responses API --------------------------------------------------------------------


def test_responses_list_the_tools_the_agent_ran_as_mcp_calls(stack: dict[str, Any]) -> None:
    r = post(stack, "/v1/responses", {"model": "alpha", "input": memory_call("responses see tools")})
    assert r.status_code == 200, r.text
    output = r.json()["output"]
    assert [item["type"] for item in output] == ["mcp_call", "message"]
    call, message = output
    assert call["server_label"] == "hermes" and call["name"] == "memory" and call["status"] == "completed"
    assert json.loads(call["arguments"])["content"] == "responses see tools"
    assert json.loads(call["output"])["success"] is True
    assert message["content"][0]["text"].startswith("done: ")
    # Stored, and a chain continues it: the agent gets the first turn as history.
    before = len(stack["upstream"].requests())
    second = post(
        stack, "/v1/responses", {"model": "alpha", "input": "and now?", "previous_response_id": r.json()["id"]}
    )
    assert second.status_code == 200, second.text
    sent = [(m["role"], m["content"]) for m in upstream_calls_since(stack, before)[0]["body"]["messages"][1:]]
    assert sent[0][0] == "user" and "responses see tools" in sent[0][1] and sent[-1] == ("user", "and now?")
    assert all(role in ("user", "assistant") for role, _ in sent)


def test_a_streamed_response_adds_and_finishes_each_tool_as_it_runs(stack: dict[str, Any]) -> None:
    r = post(stack, "/v1/responses", {"model": "alpha", "input": memory_call("streamed tool"), "stream": True})
    assert r.status_code == 200
    found = [json.loads(d) for _, d in events(r)]
    assert [e["sequence_number"] for e in found] == list(range(len(found)))
    kinds = [e["type"] for e in found]
    start = kinds.index("response.mcp_call.in_progress")
    assert kinds[start - 1] == "response.output_item.added" and found[start - 1]["item"]["type"] == "mcp_call"
    assert kinds.index("response.mcp_call.completed") < kinds.index("response.output_text.delta")
    assert kinds[-1] == "response.completed"
    final = found[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["mcp_call", "message"]
    done = [e["item"] for e in found if e["type"] == "response.output_item.done"]
    assert done == final["output"]


def test_responses_for_open_webui_pair_each_call_with_its_output(stack: dict[str, Any]) -> None:
    headers = {"X-Hermes-Tool-Display": "openwebui"}
    body = {"model": "alpha", "input": memory_call("paired for open webui"), "stream": True}
    r = post(stack, "/v1/responses", body, **headers)
    final = [json.loads(d) for _, d in events(r)][-1]["response"]
    call, output, message = final["output"]
    assert (call["type"], output["type"], message["type"]) == ("function_call", "function_call_output", "message")
    assert call["call_id"] == output["call_id"] and call["status"] == "completed"
    assert output["output"][0]["type"] == "input_text" and "success" in output["output"][0]["text"]
    # Open WebUI sends the pair back as input: accepted, and the agent sees no tool messages.
    before = len(stack["upstream"].requests())
    again = {"model": "alpha", "input": [*final["output"][:2], {"role": "user", "content": "thanks"}]}
    assert post(stack, "/v1/responses", again, **headers).status_code == 200
    roles = [m["role"] for m in upstream_calls_since(stack, before)[0]["body"]["messages"]]
    assert "tool" not in roles


def test_the_openai_sdk_reads_agent_turns_with_tools(stack: dict[str, Any]) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=stack["server"].url + "/v1", api_key=ALICE, max_retries=0, timeout=TIMEOUT)
    pieces = []
    for chunk in client.chat.completions.create(
        model="alpha", messages=[{"role": "user", "content": memory_call("sdk chat loop")}], stream=True
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    assert "".join(pieces).lstrip().startswith("done: ")  # text after a tool starts a new paragraph
    with client.responses.stream(model="alpha", input=memory_call("sdk responses stream")) as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    assert [item.type for item in final.output] == ["mcp_call", "message"]
    assert final.output[0].name == "memory" and final.output_text.lstrip().startswith("done: ")
    # The Agents SDK sends the mcp_call items back as input: accepted.
    items = [item.model_dump(exclude_none=True) for item in final.output]
    follow = client.responses.create(model="alpha", input=[*items, {"role": "user", "content": "more"}])
    assert follow.output_text == "echo: more"


def test_hermes_own_cli_lists_the_turns(stack: dict[str, Any]) -> None:
    """``hermes sessions list`` (hermes-agent's own CLI, beside the interpreter) shows the
    API turns of the profile, as it shows Hermes's own API server's."""
    assert chat(stack, "beta", "a turn for hermes sessions list").status_code == 200
    hermes = Path(sys.executable).with_name("hermes")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(stack["root"]),
        "HERMES_HOME": str(stack["home"].dir("beta")),
    }
    done = subprocess.run([str(hermes), "sessions", "list"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if "a turn for hermes sessions list" in line)
    assert "api_server" in row


@pytest.mark.slow
def test_workers_run_in_the_interpreter_the_config_names(tmp_path: Path, scripted: ScriptedUpstream) -> None:
    """``agent.python``: a venv with hermes-agent and without hermes-api (the worker needs
    only the standard library, hermes-agent, and its protocol file, which it loads by path)."""
    from .conftest import client_venv

    python = client_venv("hermes-agent==0.19.0")
    assert subprocess.run([str(python), "-I", "-c", "import hermes_api"], capture_output=True).returncode != 0
    home = HermesHome(tmp_path / "hermes")
    add_agent_profile(home, "default", scripted)
    config = {"hermes_home": str(home.root), "state_dir": str(tmp_path / "state"), "expose": ["default"],
              "keys": [{"name": "alice", "key_env": "K_ALICE"}],
              "agent": {"profiles": ["default"], "python": str(python)}}  # fmt: skip
    path = tmp_path / "hermes-api.yaml"
    path.write_text(yaml.safe_dump(config))
    environ = worker_environ(tmp_path, K_ALICE=ALICE)
    with LiveServer(create_app(Settings.load(path, environ), environ=environ)) as server:
        r = chat({"server": server}, "default", "from another interpreter")
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "echo: from another interpreter"
