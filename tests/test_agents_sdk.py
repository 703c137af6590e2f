"""The OpenAI Agents SDK (``openai-agents``) with hermes-api as its model: an ``Agent``
with two function tools, run by ``Runner``, over a scripted chat-completions provider
that calls both tools at once and then answers. The tools must run, their outputs
reach the provider, and the final output come back; through the Responses API (the
SDK's default model class, plain and streamed) and through chat completions.

The agent runs in ``tests/agents_sdk_client.py``, in a venv of its own with
``openai-agents`` (``conftest.client_venv``): it needs openai 3.x, and the server's
environment has the agent runtime's hermes-agent, which pins openai 2.x."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest
import respx

from .conftest import AGENTS_SDK, LiveServer, client_venv, completion, sse_body, tool_chunks, tool_completion

CLIENT = Path(__file__).resolve().parent / "agents_sdk_client.py"

QUESTION = "What is the weather in Paris, and the time in Tokyo?"
CALLS = [("call_w", "get_weather", '{"city":"Paris"}'), ("call_t", "get_time", '{"city":"Tokyo"}')]
FINAL = "Sunny, 21 °C in Paris; 21:00 in Tokyo."


class Provider:
    """Scripted: while the conversation has no tool results it calls both tools (in
    one answer); then it answers ``FINAL``. Streams when asked to. Keeps every body."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        self.bodies.append(body)
        done = body["messages"][-1]["role"] == "tool"
        if body.get("stream"):
            events = sse_body(*(tool_chunks(*CALLS, size=5) if not done else _text_chunks()))
            return httpx.Response(200, content=events, headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json=completion(FINAL) if done else tool_completion(*CALLS))


def _text_chunks() -> list[dict]:
    """``FINAL`` streamed in pieces of 8 characters, then ``finish_reason: stop``."""
    role, *_, finish = tool_chunks()

    def piece(text: str) -> dict:
        return {**role, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}

    stop = {**finish, "choices": [{**finish["choices"][0], "finish_reason": "stop"}]}
    return [role, *(piece(FINAL[i : i + 8]) for i in range(0, len(FINAL), 8)), stop]


@pytest.fixture
def served(make_app, live: Callable[..., LiveServer], upstream: respx.MockRouter) -> tuple[str, Provider]:
    provider = Provider()
    upstream.post("/chat/completions").mock(side_effect=provider)
    return live(make_app()).url + "/v1", provider


@pytest.fixture(scope="module")
def agents_python() -> Path:
    return client_venv(AGENTS_SDK)


def run(python: Path, url: str, kind: str, streamed: bool = False) -> tuple[str, list[tuple[str, str]]]:
    """The agent's final output and the tools it ran (tool, city)."""
    mode = "streamed" if streamed else "plain"
    done = subprocess.run(
        [str(python), str(CLIENT), url, kind, mode, QUESTION], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    return result["final"], [tuple(pair) for pair in result["ran"]]


def check_tool_turn(provider: Provider) -> None:
    """Two provider calls: the question with both tools, then both outputs."""
    first, second = provider.bodies
    assert [t["function"]["name"] for t in first["tools"]] == ["get_weather", "get_time"]
    assert first["messages"][0]["content"].startswith("You are ALPHA-PERSONA.\n\nUse the tools.")
    assert first["messages"][1:] == [{"role": "user", "content": QUESTION}]
    calls = second["messages"][2]["tool_calls"]
    assert [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in calls] == CALLS
    results = [(m["tool_call_id"], m["content"]) for m in second["messages"][3:]]
    assert results == [("call_w", "sunny, 21 °C in Paris"), ("call_t", "21:00 in Tokyo")]


@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run_streamed"])
def test_an_agent_over_the_responses_api(served, agents_python: Path, streamed: bool) -> None:
    url, provider = served
    final, ran = run(agents_python, url, "responses", streamed)
    assert final == FINAL
    assert sorted(ran) == [("get_time", "Tokyo"), ("get_weather", "Paris")]
    check_tool_turn(provider)
    assert all(body["stream"] is streamed for body in provider.bodies)


def test_an_agent_over_chat_completions(served, agents_python: Path) -> None:
    url, provider = served
    final, ran = run(agents_python, url, "chat")
    assert final == FINAL
    assert sorted(ran) == [("get_time", "Tokyo"), ("get_weather", "Paris")]
    check_tool_turn(provider)
