"""Function calling through ``client.responses`` of the official OpenAI SDK, against
hermes-api under uvicorn, over a scripted chat-completions provider (respx): what the
provider was sent for each request, and what the SDK made of the answer."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import openai
import orjson
import pytest
import respx
from openai import OpenAI

from .conftest import LiveServer, completion, sse_body, tool_call, tool_chunks, tool_completion

PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather now in a city.",
    "parameters": PARAMETERS,
    "strict": True,
}
TIME = {"type": "function", "name": "get_time", "parameters": PARAMETERS}
CHAT_WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather now in a city.",
        "parameters": PARAMETERS,
        "strict": True,
    },
}
PERSONA = {"role": "system", "content": "You are ALPHA-PERSONA."}
QUESTION = "What is the weather in Paris and the time in Tokyo?"


@pytest.fixture
def sdk(make_app, live: Callable[..., LiveServer]) -> Iterator[OpenAI]:
    server = live(make_app())
    with OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=10) as client:
        yield client


def sent(route: respx.Route, call: int = -1) -> dict:
    return orjson.loads(route.calls[call].request.content)


def scripted(upstream: respx.MockRouter, *answers: dict | list[dict]) -> respx.Route:
    """The provider answers each request with the next of ``answers``: a completion, or
    a list of stream chunks."""
    responses = [
        httpx.Response(200, content=sse_body(*a), headers={"content-type": "text/event-stream"})
        if isinstance(a, list)
        else httpx.Response(200, json=a)
        for a in answers
    ]
    return upstream.post("/chat/completions").mock(side_effect=responses)


def test_create_with_tools_returns_function_call_items(sdk: OpenAI, upstream) -> None:
    route = scripted(upstream, tool_completion(("call_w1", "get_weather", '{"city":"Paris"}')))
    hosted = [{"type": "web_search"}, {"type": "file_search", "vector_store_ids": ["vs_1"]}, {"type": "mcp_future"}]
    response = sdk.responses.create(model="alpha", input="Weather in Paris?", tools=[WEATHER, *hosted])
    payload = sent(route)
    assert payload["tools"] == [CHAT_WEATHER]  # hosted and unknown tool types are not sent
    assert "tool_choice" not in payload and "parallel_tool_calls" not in payload
    (call,) = response.output
    assert (call.type, call.call_id, call.name, call.arguments, call.status) == (
        "function_call", "call_w1", "get_weather", '{"city":"Paris"}', "completed",
    )  # fmt: skip
    assert call.id.startswith("fc_") and response.output_text == ""
    assert [t.name for t in response.tools] == ["get_weather"] and response.tools[0].strict is True
    assert (response.tool_choice, response.parallel_tool_calls) == ("auto", True)
    assert sdk.responses.retrieve(response.id).output == response.output


def test_stream_helper_holds_the_call_in_the_final_response(sdk: OpenAI, upstream) -> None:
    scripted(upstream, tool_chunks(("call_w1", "get_weather", '{"city": "Paris"}'), size=4))
    with sdk.responses.stream(model="alpha", input="Weather in Paris?", tools=[WEATHER]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        *["response.function_call_arguments.delta"] * 5,
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[2].item.type == "function_call" and events[2].item.status == "in_progress"
    assert events[-3].arguments == '{"city": "Paris"}' and events[-4].snapshot == '{"city": "Paris"}'
    (call,) = final.output
    assert (call.call_id, call.name, call.arguments) == ("call_w1", "get_weather", '{"city": "Paris"}')
    assert call.parsed_arguments == {"city": "Paris"}  # the SDK parses a strict tool's arguments
    assert call.id == events[2].item.id == events[-2].item.id


def test_a_full_loop_through_previous_response_id(sdk: OpenAI, upstream) -> None:
    """call -> output -> answer, then one more question on the same chain."""
    route = scripted(
        upstream,
        tool_completion(("call_w1", "get_weather", '{"city":"Paris"}')),
        completion("It is sunny in Paris."),
        completion("Take sunglasses."),
    )
    first = sdk.responses.create(model="alpha", input="Weather in Paris?", tools=[WEATHER])
    call = first.output[0]
    output = {"type": "function_call_output", "call_id": call.call_id, "output": '{"sky": "sunny"}'}
    second = sdk.responses.create(model="alpha", previous_response_id=first.id, input=[output], tools=[WEATHER])
    assert second.output_text == "It is sunny in Paris." and second.previous_response_id == first.id
    assert sent(route)["messages"] == [
        PERSONA,
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [tool_call("call_w1", "get_weather", '{"city":"Paris"}')]},
        {"role": "tool", "tool_call_id": "call_w1", "content": '{"sky": "sunny"}'},
    ]
    assert sent(route)["tools"] == [CHAT_WEATHER]
    (item,) = sdk.responses.input_items.list(second.id).data
    assert (item.type, item.call_id, item.output) == ("function_call_output", "call_w1", '{"sky": "sunny"}')
    assert item.id.startswith("fco_")
    third = sdk.responses.create(model="alpha", previous_response_id=second.id, input="So, what do I take?")
    assert (
        third.output_text == "Take sunglasses."
        and third.tools == []
        and sent(route)["messages"][-3:]
        == [
            {"role": "tool", "tool_call_id": "call_w1", "content": '{"sky": "sunny"}'},
            {"role": "assistant", "content": "It is sunny in Paris."},
            {"role": "user", "content": "So, what do I take?"},
        ]
    )
    assert "tools" not in sent(route)  # this turn gave none


def test_store_false_with_the_history_resent_sends_the_same(sdk: OpenAI, upstream) -> None:
    """The client keeps the history (store: false, as the Agents SDK and Codex do): the
    provider gets exactly what the previous_response_id chain gives it."""
    answers = [tool_completion(("call_w1", "get_weather", '{"city":"Paris"}')), completion("Sunny.")]
    route = scripted(upstream, *answers, *answers)
    question = {"role": "user", "content": "Weather in Paris?"}
    output = {"type": "function_call_output", "call_id": "call_w1", "output": "sunny"}
    first = sdk.responses.create(model="alpha", input=[question], tools=[WEATHER], store=False)
    history = [question, *(item.model_dump(exclude_none=True) for item in first.output), output]
    second = sdk.responses.create(model="alpha", input=history, tools=[WEATHER], store=False)
    chained = sdk.responses.create(model="alpha", input=[question], tools=[WEATHER])
    sdk.responses.create(model="alpha", previous_response_id=chained.id, input=[output], tools=[WEATHER])
    assert second.output_text == "Sunny." and sent(route, 1) == sent(route, 3)
    assert sent(route, 1)["messages"][2]["tool_calls"][0]["id"] == "call_w1"
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(first.id)


def test_parallel_calls_and_their_outputs(sdk: OpenAI, upstream) -> None:
    calls = [("call_w1", "get_weather", '{"city":"Paris"}'), ("call_t1", "get_time", '{"city":"Tokyo"}')]
    route = scripted(upstream, tool_completion(*calls, content="Checking both."), completion("Sunny; 9 pm."))
    first = sdk.responses.create(model="alpha", input=QUESTION, tools=[WEATHER, TIME], parallel_tool_calls=True)
    assert [item.type for item in first.output] == ["message", "function_call", "function_call"]
    assert first.output_text == "Checking both." and [c.call_id for c in first.output[1:]] == ["call_w1", "call_t1"]
    assert sent(route, 0)["parallel_tool_calls"] is True
    outputs = [{"type": "function_call_output", "call_id": c.call_id, "output": f"result of {c.name}"}
               for c in first.output[1:]]  # fmt: skip
    second = sdk.responses.create(model="alpha", previous_response_id=first.id, input=outputs, tools=[WEATHER, TIME])
    assert second.output_text == "Sunny; 9 pm."
    assert sent(route)["messages"][1:] == [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "Checking both.", "tool_calls": [tool_call(*c) for c in calls]},
        {"role": "tool", "tool_call_id": "call_w1", "content": "result of get_weather"},
        {"role": "tool", "tool_call_id": "call_t1", "content": "result of get_time"},
    ]


@pytest.mark.parametrize(
    ("choice", "upstream_choice"),
    [
        pytest.param("auto", "auto", id="auto"),
        pytest.param("required", "required", id="required"),
        pytest.param("none", "none", id="none"),
        pytest.param(
            {"type": "function", "name": "get_time"}, {"type": "function", "function": {"name": "get_time"}}, id="named"
        ),  # fmt: skip
    ],
)
def test_tool_choice_reaches_the_provider_as_its_chat_twin(sdk: OpenAI, upstream, choice, upstream_choice) -> None:
    route = scripted(upstream, completion("ok"))
    response = sdk.responses.create(
        model="alpha", input="x", tools=[WEATHER, TIME], tool_choice=choice, parallel_tool_calls=False
    )
    payload = sent(route)
    assert payload["tool_choice"] == upstream_choice and payload["parallel_tool_calls"] is False
    assert [t["function"]["name"] for t in payload["tools"]] == ["get_weather", "get_time"]
    echoed = response.tool_choice if isinstance(response.tool_choice, str) else response.tool_choice.model_dump()
    assert echoed == choice and response.parallel_tool_calls is False


def test_arguments_in_small_fragments_over_two_interleaved_calls(sdk: OpenAI, upstream) -> None:
    calls = [("call_w1", "get_weather", '{"city": "Paris, France"}'), ("call_t1", "get_time", '{"city": "Tokyo"}')]
    scripted(upstream, tool_chunks(*calls, size=2, text="Let me check.", interleave=True))
    with sdk.responses.stream(model="alpha", input=QUESTION, tools=[WEATHER, TIME]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert [e.sequence_number for e in events] == list(range(len(events)))
    added = [(e.output_index, e.item.type) for e in events if e.type == "response.output_item.added"]
    assert added == [(0, "message"), (1, "function_call"), (2, "function_call")]
    deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
    assert [e.output_index for e in deltas[:4]] == [1, 2, 1, 2]  # as the provider interleaved them
    for index, (call_id, name, arguments) in enumerate(calls, start=1):
        assert "".join(e.delta for e in deltas if e.output_index == index) == arguments
        item = final.output[index]
        assert (item.call_id, item.name, item.arguments, item.status) == (call_id, name, arguments, "completed")
    assert final.output_text == "Let me check." and [i.type for i in final.output] == [
        "message", "function_call", "function_call",
    ]  # fmt: skip
