"""Open WebUI 0.12.4 shows the tools an agent profile ran, and never runs them itself.

    Open WebUI (Chromium)       →  hermes-api serve           →  tests/scriptedupstream.py
    connection 0 with the           profile "scribe" on the       answers the user's
    header X-Hermes-Tool-Display:   agent runtime (the real       [[tool:memory {...}]] marker
    openwebui (OPENAI_API_CONFIGS)  Hermes agent, toolset memory) with that call, then "done: ..."

The agent runs Hermes's memory tool (it really appends to the profile's MEMORY.md). Over a
chat-completions connection hermes-api writes the finished tool into the answer as Open
WebUI's ``<details type="tool_calls">`` block; over a Responses connection (``api_type:
responses``) as a ``function_call`` + ``function_call_output`` pair (docs/agent.md, "Tools
the agent ran, on the wire"). Either way the chat shows a "View Result from memory" row
with the tool's input and output, then the agent's answer; and the scripted provider gets
exactly the agent's two requests of the turn: had Open WebUI run the tool itself, it would
have sent the result back for another turn, and the provider a third request. A second
message in the same chat carries the first turn back as history (the block, or the call
and its output): the agent gets it as plain text, and no tool message.

Screenshots (``e2e/artifacts/``): ``openwebui-agent-tool-chat.png`` and
``openwebui-agent-tool-responses.png``, each with the tool row opened.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import need
from .stack import (
    OPEN_WEBUI_BIN,
    OpenWebUIClient,
    ScriptedUpstream,
    hermes_api,
    open_webui,
    record_figure,
    write_agent_home,
)

pytestmark = pytest.mark.e2e
browser = pytest.importorskip("e2e.browser", reason="needs the e2e extra: pip install -e '.[e2e]'")

PROFILE = "scribe"
KEY = "e2e-agent-key-0123456789"
DISPLAY = {"X-Hermes-Tool-Display": "openwebui"}  # set on the connection, sent with every request


@dataclass
class AgentStack:
    upstream: ScriptedUpstream
    home: Path
    client: OpenWebUIClient
    webui_url: str
    hermes_log: Path

    def requests(self) -> list[str]:
        """The request lines of hermes-api's access log ("POST /v1/responses", ...)."""
        lines = self.hermes_log.read_text(errors="replace").splitlines()
        return [line.split('"')[1].rsplit(" ", 1)[0] for line in lines if '"POST /v1/' in line]


@pytest.fixture(scope="module")
def agent_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentStack]:
    need(OPEN_WEBUI_BIN.exists(), f"Open WebUI is not installed at {OPEN_WEBUI_BIN}")
    need(importlib.util.find_spec("run_agent") is not None, "hermes-agent (the demo extra) is not installed")
    work = tmp_path_factory.mktemp("agent-tools")
    with ScriptedUpstream(work / "upstream.jsonl") as upstream:
        home = write_agent_home(work / "home", upstream.url, PROFILE)
        config = {
            "hermes_home": str(home),
            "expose": [PROFILE],
            "default_profile": PROFILE,
            "keys": [{"name": "webui", "key_env": "E2E_AGENT_KEY"}],
            "agent": {"profiles": [PROFILE], "toolsets": ["memory"]},
        }
        with hermes_api(work, config, {"E2E_AGENT_KEY": KEY}) as hermes:
            connection = {"0": {"enable": True, "headers": DISPLAY}}
            webui = open_webui(work, hermes.url + "/v1", KEY, OPENAI_API_CONFIGS=json.dumps(connection))  # type: ignore[attr-defined]
            with webui:
                record_figure("open_webui_startup_seconds_agent_stack", round(webui.startup_seconds or 0, 2))
                client = OpenWebUIClient(webui.url)  # type: ignore[attr-defined]
                try:
                    yield AgentStack(upstream, home / "profiles" / PROFILE, client, webui.url, hermes.log)  # type: ignore[attr-defined]
                finally:
                    client.close()


def remember(entry: str) -> str:
    """A message the scripted provider answers with a call of Hermes's memory tool."""
    return "Remember this [[tool:memory " + json.dumps({"action": "add", "target": "memory", "content": entry}) + "]]"


def chat_with_a_tool(stack: AgentStack, entry: str, screenshot: Path, tmp_path: Path) -> tuple[str, str]:
    """Send ``remember(entry)`` to the agent profile in Chromium and wait for the answer;
    open the tool row, take ``screenshot``; then say "Thanks" in the same chat and wait
    for its answer. The visible text of the first answer before and after the row was
    opened."""
    with browser.chromium_page(tmp_path / "chromium-profile") as page:
        browser.open_chat(page, stack.webui_url)
        browser.open_model_selector(page)
        browser.pick_model(page, PROFILE)
        browser.send_message(page, remember(entry))
        closed, _ = browser.wait_for_reply(page, timeout=180)
        opened = browser.open_tool_row(page, "memory")
        page.screenshot(path=screenshot, full_page=True)
        browser.send_message(page, "Thanks")
        browser.wait_for_text(page, "echo: Thanks", timeout=180)
    return closed, opened


def assert_the_agent_alone_ran_the_tool(stack: AgentStack, before: int, entry: str) -> None:
    """The provider got the agent's two requests of the first turn and nothing more, then
    the one of the second turn, whose history is plain text; the tool wrote the profile's
    MEMORY.md; Open WebUI's own tools never reached the agent."""
    turns = stack.upstream.chats()[before:]
    roles = [[m["role"] for m in body["messages"]] for body in turns]
    assert len(turns) == 3, roles
    first, second, thanks = turns
    assert first["messages"][-1]["role"] == "user" and entry in first["messages"][-1]["content"]
    assert second["messages"][-1]["role"] == "tool"
    assert second["messages"][-2]["tool_calls"][0]["function"]["name"] == "memory"
    names = {t["function"]["name"] for t in first.get("tools") or []}
    assert "memory" in names and "get_current_timestamp" not in names, sorted(names)
    assert entry in (stack.home / "memories" / "MEMORY.md").read_text()
    # The next turn: the first one as history, its answer's text without any tool block.
    assert roles[2] == ["system", "user", "assistant", "user"], roles
    history = thanks["messages"][2]["content"]
    assert history.lstrip().startswith("done: ") and "<details" not in history and "View Result" not in history


def test_a_chat_completions_connection_shows_the_tool_row(
    agent_stack: AgentStack, tmp_path: Path, artifacts: Path
) -> None:
    before, sent = len(agent_stack.upstream.chats()), len(agent_stack.requests())
    entry = "The e2e cat is called Ziggy"
    closed, opened = chat_with_a_tool(agent_stack, entry, artifacts / "openwebui-agent-tool-chat.png", tmp_path)
    assert "View Result from memory" in closed
    assert "done: " in closed and '"success": true' in closed  # the agent's answer, after the tool
    assert "<details" not in closed  # rendered as a row, not shown as text
    assert entry in opened  # the row's INPUT: the call's arguments
    assert agent_stack.requests()[sent:] == ["POST /v1/chat/completions"] * 2
    assert_the_agent_alone_ran_the_tool(agent_stack, before, entry)


@pytest.fixture
def responses_connection(agent_stack: AgentStack) -> Iterator[None]:
    """Connection 0 switched to ``api_type: responses``, its header kept (restored afterwards)."""
    client = agent_stack.client
    saved = client.connections()
    configs = {"0": {"enable": True, "api_type": "responses", "headers": DISPLAY}}
    client.set_connections({**saved, "OPENAI_API_CONFIGS": configs})
    try:
        yield
    finally:
        client.set_connections(saved)


def test_a_responses_connection_shows_the_call_and_its_output(
    agent_stack: AgentStack, responses_connection: None, tmp_path: Path, artifacts: Path
) -> None:
    before, sent = len(agent_stack.upstream.chats()), len(agent_stack.requests())
    entry = "The e2e dog is called Biscuit"
    closed, opened = chat_with_a_tool(agent_stack, entry, artifacts / "openwebui-agent-tool-responses.png", tmp_path)
    assert "View Result from memory" in closed
    assert "done: " in closed and '"success": true' in closed
    assert entry in opened
    assert agent_stack.requests()[sent:] == ["POST /v1/responses"] * 2
    assert_the_agent_alone_ran_the_tool(agent_stack, before, entry)
