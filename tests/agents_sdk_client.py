"""An OpenAI Agents SDK (``openai-agents``) client, run in a venv of its own by
``tests/test_agents_sdk.py``: an ``Agent`` with two function tools, hermes-api as its
model. The Agents SDK needs openai 3.x and the agent runtime's hermes-agent pins 2.x,
so the client lives apart from the server, as it would in real use.

    python agents_sdk_client.py <base_url> responses|chat streamed|plain <question>

Prints ``{"final": <final output>, "ran": [[tool, city], ...]}`` on stdout.
"""

from __future__ import annotations

import asyncio
import json
import sys

from agents import Agent, OpenAIChatCompletionsModel, OpenAIResponsesModel, RunConfig, Runner, function_tool
from openai import AsyncOpenAI


async def main(url: str, kind: str, mode: str, question: str) -> None:
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

    model_class = OpenAIResponsesModel if kind == "responses" else OpenAIChatCompletionsModel
    async with AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=30) as client:
        model = model_class(model="alpha", openai_client=client)
        agent = Agent(name="assistant", instructions="Use the tools.", tools=[get_weather, get_time], model=model)
        config = RunConfig(tracing_disabled=True)  # the SDK would export traces to OpenAI
        if mode == "streamed":
            result = Runner.run_streamed(agent, question, run_config=config)
            async for _ in result.stream_events():
                pass
        else:
            result = await Runner.run(agent, question, run_config=config)
    print(json.dumps({"final": result.final_output, "ran": ran}))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
