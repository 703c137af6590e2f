"""The OpenAI Agents SDK (``openai-agents``) with hermes-api as its model: an ``Agent``
with two function tools, run by ``Runner``, over a scripted chat-completions provider
that calls both tools at once and then answers. The tools must run, their outputs
reach the provider, and the final output come back; through the Responses API (the
SDK's default model class, plain and streamed) and through chat completions."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import orjson
import pytest
import respx
from agents import (
    Agent,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    RunConfig,
    Runner,
    function_tool,
)
from openai import AsyncOpenAI

from .conftest import LiveServer, completion, sse_body, tool_chunks, tool_completion

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


def make_agent(model) -> tuple[Agent, list[tuple[str, str]]]:
    ran: list[tuple[str, str]] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather now in a city."""
        ran.append(("get_weather", city))
        return f"sunny, 21 °C in {city}"

    @function_tool
    def get_time(city: str) -> str:
        """The local time in a city."""
        ran.append(("get_time", city))
        return f"21:00 in {city}"

    agent = Agent(name="assistant", instructions="Use the tools.", tools=[get_weather, get_time], model=model)
    return agent, ran


@pytest.fixture
def served(make_app, live: Callable[..., LiveServer], upstream: respx.MockRouter) -> tuple[str, Provider]:
    provider = Provider()
    upstream.post("/chat/completions").mock(side_effect=provider)
    return live(make_app()).url + "/v1", provider


async def run(url: str, model_class: type, streamed: bool = False) -> tuple[str, list[tuple[str, str]]]:
    async with AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=10) as client:
        agent, ran = make_agent(model_class(model="alpha", openai_client=client))
        config = RunConfig(tracing_disabled=True)  # the SDK would export traces to OpenAI
        if streamed:
            result = Runner.run_streamed(agent, QUESTION, run_config=config)
            async for _ in result.stream_events():
                pass
        else:
            result = await Runner.run(agent, QUESTION, run_config=config)
        return result.final_output, ran


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
def test_an_agent_over_the_responses_api(served, streamed: bool) -> None:
    url, provider = served
    final, ran = asyncio.run(run(url, OpenAIResponsesModel, streamed))
    assert final == FINAL
    assert sorted(ran) == [("get_time", "Tokyo"), ("get_weather", "Paris")]
    check_tool_turn(provider)
    assert all(body["stream"] is streamed for body in provider.bodies)


def test_an_agent_over_chat_completions(served) -> None:
    url, provider = served
    final, ran = asyncio.run(run(url, OpenAIChatCompletionsModel))
    assert final == FINAL
    assert sorted(ran) == [("get_time", "Tokyo"), ("get_weather", "Paris")]
    check_tool_turn(provider)
