"""The official OpenAI SDK's ``client.responses`` against hermes-api under uvicorn.

The provider is a respx-mocked chat-completions server (it has no Responses API), so
every case checks what hermes-api sent it. SDK retries are off (``max_retries=0``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import openai
import orjson
import pytest
import respx
from openai import OpenAI

from .conftest import LiveServer, chunks, completion, digest, sse_body

KEYS = [
    {"name": "sdk", "key_sha256": digest("sdk-key"), "profiles": ["alpha", "beta"]},
    {"name": "other", "key_sha256": digest("other-key")},
]


@pytest.fixture
def server(make_app, live: Callable[..., LiveServer]) -> LiveServer:
    return live(make_app(keys=KEYS))


@pytest.fixture
def sdk(server: LiveServer) -> Iterator[OpenAI]:
    with OpenAI(base_url=server.url + "/v1", api_key="sdk-key", max_retries=0, timeout=10) as client:
        yield client


def streaming(upstream: respx.MockRouter, text: str, **kw) -> respx.Route:
    return upstream.post("/chat/completions").respond(
        content=sse_body(*chunks(text, **kw)), headers={"content-type": "text/event-stream"}
    )


def sent_messages(route: respx.Route) -> list[dict]:
    return orjson.loads(route.calls.last.request.content)["messages"]


def test_create_non_stream(sdk: OpenAI, upstream: respx.MockRouter) -> None:
    route = upstream.post("/chat/completions").respond(json=completion("Bonjour"))
    raw = sdk.responses.with_raw_response.create(model="alpha", input="Hi", instructions="French only.")
    response = raw.parse()
    assert response.output_text == "Bonjour" and response.model == "alpha" and response.status == "completed"
    assert response.id.startswith("resp_") and response.instructions == "French only."
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (9, 3, 12)
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert raw.headers["x-hermes-profile"] == "alpha" and raw.request_id.startswith("req_")
    assert sent_messages(route)[0] == {"role": "system", "content": "You are ALPHA-PERSONA.\n\nFrench only."}
    assert route.calls.last.request.headers["authorization"] == "Bearer sk-alpha-secret"


def test_create_stream_yields_typed_events(sdk: OpenAI, upstream: respx.MockRouter) -> None:
    streaming(upstream, "streamed words here", usage=True)
    events = list(sdk.responses.create(model="beta", input="Hi", stream=True))
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 3,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.output_text == "streamed words here " and events[-1].response.model == "beta"
    assert events[-1].response.usage.total_tokens == 7


def test_stream_helper_and_get_final_response(sdk: OpenAI, upstream: respx.MockRouter) -> None:
    route = streaming(upstream, "helper text")
    with sdk.responses.stream(model="alpha", input="Hi", max_output_tokens=20) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "helper text " == final.output_text
    assert final.status == "completed" and final.usage is None  # the mock, like llama.cpp, sent no usage
    payload = orjson.loads(route.calls.last.request.content)
    assert payload["stream_options"] == {"include_usage": True} and payload["max_tokens"] == 20
    assert sdk.responses.retrieve(final.id).output_text == "helper text "


def test_stream_helper_returns_a_response_cut_at_the_limit(sdk: OpenAI, upstream: respx.MockRouter) -> None:
    cut = chunks("a long story")
    cut[-1]["choices"][0]["finish_reason"] = "length"
    upstream.post("/chat/completions").respond(content=sse_body(*cut))
    with sdk.responses.stream(model="alpha", input="Tell a story", max_output_tokens=3) as stream:
        final = stream.get_final_response()
    assert final.status == "incomplete" and final.incomplete_details.reason == "max_output_tokens"
    assert final.output_text == "a long story "


def test_a_chain_of_three_turns(sdk: OpenAI, upstream: respx.MockRouter) -> None:
    route = upstream.post("/chat/completions")
    route.side_effect = [httpx.Response(200, json=completion(f"Answer {n}")) for n in (1, 2)]
    first = sdk.responses.create(model="alpha", input="My name is Ada.", instructions="Turn-one rules.")
    second = sdk.responses.create(model="alpha", input="I like tea.", previous_response_id=first.id)
    route.side_effect = None
    streaming(upstream, "Answer 3")
    with sdk.responses.stream(
        model="alpha", input="What do you know?", previous_response_id=second.id, instructions="Turn-three rules."
    ) as stream:
        third = stream.get_final_response()
    assert third.previous_response_id == second.id and third.output_text == "Answer 3 "
    assert sent_messages(route) == [
        {"role": "system", "content": "You are ALPHA-PERSONA.\n\nTurn-three rules."},
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Answer 1"},
        {"role": "user", "content": "I like tea."},
        {"role": "assistant", "content": "Answer 2"},
        {"role": "user", "content": "What do you know?"},
    ]
    assert "Turn-one rules." not in route.calls.last.request.content.decode()


def test_retrieve_input_items_and_delete(sdk: OpenAI, server: LiveServer, upstream: respx.MockRouter) -> None:
    upstream.post("/chat/completions").respond(json=completion("ok"))
    items = [{"role": "user", "content": f"m{i}"} for i in range(25)]
    created = sdk.responses.create(model="beta", input=items)
    assert sdk.responses.retrieve(created.id).output_text == "ok"

    listed = list(sdk.responses.input_items.list(created.id, order="asc"))  # follows has_more / after
    assert [i.content[0].text for i in listed] == [f"m{i}" for i in range(25)]
    first_page = sdk.responses.input_items.list(created.id, limit=5)
    assert [i.content[0].text for i in first_page.data] == ["m24", "m23", "m22", "m21", "m20"]
    assert first_page.has_more is True

    with OpenAI(base_url=server.url + "/v1", api_key="other-key", max_retries=0) as other:
        for call in (lambda: other.responses.retrieve(created.id), lambda: other.responses.delete(created.id)):
            with pytest.raises(openai.NotFoundError) as info:
                call()
            assert info.value.code == "response_not_found"

    assert sdk.responses.delete(created.id) is None  # the SDK returns nothing for a 200
    with pytest.raises(openai.NotFoundError) as info:
        sdk.responses.retrieve(created.id)
    assert info.value.code == "response_not_found" and info.value.request_id
    with pytest.raises(openai.NotFoundError) as info:
        sdk.responses.create(model="beta", input="again", previous_response_id=created.id)
    assert info.value.param == "previous_response_id"


def test_errors_reach_the_sdk_typed(sdk: OpenAI, upstream: respx.MockRouter) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.responses.create(model="alpha", input=[{"type": "function_call_output", "call_id": "c", "output": "1"}])
    assert (info.value.code, info.value.param) == ("invalid_value", "input[0]")
    with pytest.raises(openai.PermissionDeniedError):
        sdk.responses.create(model="gamma", input="x")
    upstream.post("/chat/completions").respond(status_code=503)
    with pytest.raises(openai.InternalServerError) as info:
        sdk.responses.create(model="alpha", input="x", stream=True)
    assert info.value.code == "upstream_unavailable"


def test_a_failure_mid_stream_reaches_the_sdk_as_response_failed(sdk: OpenAI, upstream) -> None:
    upstream.post("/chat/completions").respond(content=sse_body(*chunks("cut short")[:2], done=False))
    with sdk.responses.stream(model="alpha", input="x") as stream:
        events = list(stream)
        assert events[-1].type == "response.failed"
        assert events[-1].response.error.code == "upstream_error"
        with pytest.raises(RuntimeError, match="response.completed"):
            stream.get_final_response()
