"""POST /v1/chat/completions against a mocked provider: what goes upstream, what comes back."""

from __future__ import annotations

import httpx
import orjson
import pytest
import respx
from starlette.testclient import TestClient

from .conftest import BrokenStream, chunks, completion, sse_body

USER = [{"role": "user", "content": "hi"}]


def sent(route: respx.Route) -> dict:
    return orjson.loads(route.calls.last.request.content)


def events(text: str) -> list:
    out = []
    for line in text.splitlines():
        if line.startswith("data: "):
            payload = line[6:]
            out.append(payload if payload == "[DONE]" else orjson.loads(payload))
    return out


def test_non_stream_reaches_the_profiles_provider(client: TestClient, upstream: respx.MockRouter) -> None:
    route = upstream.post("/chat/completions").respond(json=completion("Hi from beta"))
    r = client.post("/v1/chat/completions", json={"model": "beta", "messages": USER})
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "beta" and body["choices"][0]["message"]["content"] == "Hi from beta"
    assert body["usage"]["total_tokens"] == 12 and body["object"] == "chat.completion"
    assert r.headers["x-hermes-profile"] == "beta" and r.headers["x-request-id"].startswith("req_")
    request = route.calls.last.request
    assert request.headers["authorization"] == "Bearer sk-beta-secret"
    payload = sent(route)
    assert payload["model"] == "model-beta"
    assert payload["messages"] == [{"role": "system", "content": "You are BETA-PERSONA."}, *USER]


def test_client_system_message_follows_the_persona(make_app, upstream, home) -> None:
    home.add("alpha", soul="ALPHA SOUL", memory=["remembers tea"], user=["is Ada"])
    route = upstream.post("/chat/completions").respond(json=completion())
    messages = [{"role": "system", "content": "Answer in French."}, *USER]
    with TestClient(make_app()) as client:
        client.post("/v1/chat/completions", json={"model": "alpha", "messages": messages})
    system = sent(route)["messages"][0]
    assert system["role"] == "system"
    head, tail = system["content"].split("\n\nAnswer in French.")
    assert head.startswith("ALPHA SOUL\n\n") and "remembers tea" in head and head.endswith("is Ada")
    assert tail == "" and sent(route)["messages"][1:] == USER


def test_unknown_fields_and_tools_pass_through(client, upstream) -> None:
    route = upstream.post("/chat/completions").respond(json=completion())
    tools = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
    extra = {"tools": tools, "tool_choice": "auto", "temperature": 0.2, "seed": 7, "x_custom": {"a": 1}}
    client.post("/v1/chat/completions", json={"model": "alpha", "messages": USER, **extra})
    payload = sent(route)
    assert {k: payload[k] for k in extra} == extra


def test_tool_calls_come_back_unchanged(client, upstream) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
    answer = completion()
    answer["choices"][0]["message"] = {"role": "assistant", "content": None, "tool_calls": [call]}
    answer["choices"][0]["finish_reason"] = "tool_calls"
    upstream.post("/chat/completions").respond(json=answer)
    r = client.post("/v1/chat/completions", json={"model": "alpha", "messages": USER})
    assert r.json()["choices"][0]["message"]["tool_calls"] == [call]


def test_profile_max_tokens_is_a_default_only(make_app, upstream, home) -> None:
    home.add(
        "alpha", model={"default": "m", "provider": "custom", "base_url": "http://upstream.test/v1", "max_tokens": 64}
    )
    route = upstream.post("/chat/completions").respond(json=completion())
    with TestClient(make_app()) as client:
        client.post("/v1/chat/completions", json={"model": "alpha", "messages": USER})
        assert sent(route)["max_tokens"] == 64
        assert "authorization" not in route.calls.last.request.headers  # keyless local server
        client.post("/v1/chat/completions", json={"model": "alpha", "messages": USER, "max_tokens": 5})
        assert sent(route)["max_tokens"] == 5


def test_default_profile_and_alias(client, upstream) -> None:
    route = upstream.post("/chat/completions").respond(json=completion())
    r = client.post("/v1/chat/completions", json={"model": "hermes-agent", "messages": USER})
    assert r.json()["model"] == "default" and sent(route)["model"] == "model-default"


def test_prefix_route_selects_the_profile(client, upstream) -> None:
    route = upstream.post("/chat/completions").respond(json=completion())
    r = client.post("/p/gamma/v1/chat/completions", json={"messages": USER})
    assert r.json()["model"] == "gamma" and r.headers["x-hermes-profile"] == "gamma"
    assert route.calls.last.request.headers["authorization"] == "Bearer sk-gamma-secret"


def test_stream_relabels_and_ends_with_done(client, upstream) -> None:
    upstream.post("/chat/completions").respond(
        content=sse_body(*chunks("one two", model="model-alpha")), headers={"content-type": "text/event-stream"}
    )
    with client.stream("POST", "/v1/chat/completions", json={"model": "alpha", "messages": USER, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-hermes-profile"] == "alpha"
        out = events(r.read().decode())
    assert out[-1] == "[DONE]"
    data = out[:-1]
    assert {c["model"] for c in data} == {"alpha"} and len({c["id"] for c in data}) == 1
    assert data[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in data) == "one two "
    assert all("usage" not in c for c in data)


def test_include_usage_adds_one_usage_chunk(client, upstream) -> None:
    route = upstream.post("/chat/completions").respond(
        content=sse_body(*chunks("a b", usage=True)), headers={"content-type": "text/event-stream"}
    )
    body = {"model": "alpha", "messages": USER, "stream": True, "stream_options": {"include_usage": True}}
    out = events(client.post("/v1/chat/completions", json=body).text)
    assert sent(route)["stream_options"] == {"include_usage": True}
    *content, usage_chunk, done = out
    assert done == "[DONE]"
    assert all(c["usage"] is None and c["choices"] for c in content)
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["total_tokens"] == 7
    assert usage_chunk["id"] == content[0]["id"] and usage_chunk["model"] == "alpha"


def test_usage_chunk_is_dropped_when_not_asked(client, upstream) -> None:
    upstream.post("/chat/completions").respond(content=sse_body(*chunks("a", usage=True)))
    out = events(client.post("/v1/chat/completions", json={"model": "alpha", "messages": USER, "stream": True}).text)
    assert all(c == "[DONE]" or c["choices"] for c in out)


def test_first_delta_gets_a_role_when_the_provider_omits_it(client, upstream) -> None:
    first = {"id": "x", "created": 1, "model": "m", "choices": [{"index": 0, "delta": {"content": "Hi"}}]}
    upstream.post("/chat/completions").respond(content=sse_body(first))
    out = events(client.post("/v1/chat/completions", json={"model": "alpha", "messages": USER, "stream": True}).text)
    assert out[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Hi"}
    assert out[0]["object"] == "chat.completion.chunk"


@pytest.mark.parametrize(
    ("response", "code"),
    [
        pytest.param(
            lambda: httpx.Response(200, stream=BrokenStream(sse_body(*chunks("a")[:2], done=False))),
            "upstream_unavailable",
            id="reset-mid-stream",
        ),
        pytest.param(
            lambda: httpx.Response(200, content=sse_body(*chunks("a"), done=False)), "upstream_error", id="no-done"
        ),
        pytest.param(lambda: httpx.Response(200, content=b"data: {not json\n\n"), "upstream_error", id="not-json"),
        pytest.param(
            lambda: httpx.Response(200, content=sse_body({"error": {"message": "overloaded"}})),
            "upstream_error",
            id="error-event",
        ),
    ],
)
def test_failure_after_first_byte_is_in_stream(client, upstream, response, code) -> None:
    upstream.post("/chat/completions").mock(side_effect=lambda request: response())
    r = client.post("/v1/chat/completions", json={"model": "alpha", "messages": USER, "stream": True})
    assert r.status_code == 200
    out = events(r.text)
    assert out[-1] == "[DONE]"
    error = out[-2]["error"]
    assert error["code"] == code and set(error) == {"message", "type", "param", "code"}


def test_failure_before_first_byte_of_a_stream_is_plain_json(client, upstream) -> None:
    upstream.post("/chat/completions").respond(status_code=503)
    r = client.post("/v1/chat/completions", json={"model": "alpha", "messages": USER, "stream": True})
    assert r.status_code == 502 and r.headers["content-type"] == "application/json"
    assert r.json()["error"]["code"] == "upstream_unavailable"
    assert r.headers["x-hermes-profile"] == "alpha"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        pytest.param({"model": "alpha"}, "messages", id="missing-messages"),
        pytest.param({"model": "alpha", "messages": []}, "messages", id="empty-messages"),
        pytest.param({"model": "alpha", "messages": "hi"}, "messages", id="messages-string"),
        pytest.param({"model": "alpha", "messages": [{"content": "x"}]}, "messages[0]", id="no-role"),
        pytest.param(
            {"model": "alpha", "messages": [{"role": "user", "content": 5}]}, "messages[0].content", id="content-number"
        ),
        pytest.param({"model": "alpha", "messages": USER, "stream": "yes"}, "stream", id="stream-string"),
        pytest.param(
            {"model": "alpha", "messages": USER, "stream_options": []}, "stream_options", id="stream-options-list"
        ),
        pytest.param(
            {"model": "alpha", "messages": USER, "stream": True, "stream_options": {"include_usage": "yes"}},
            "stream_options.include_usage",
            id="include-usage-string",
        ),
        pytest.param({"model": 12, "messages": USER}, "model", id="model-number"),
        pytest.param({"model": "alpha", "messages": USER, "tools": "get_time"}, "tools", id="tools-string"),
        pytest.param({"model": "alpha", "messages": USER, "tools": ["get_time"]}, "tools", id="tools-not-objects"),
    ],
)
def test_bad_field_types_are_400_naming_the_field(client, upstream, body, param) -> None:
    route = upstream.post("/chat/completions").respond(json=completion())
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 400
    assert r.json()["error"] | {"message": ""} == {
        "message": "",
        "type": "invalid_request_error",
        "param": param,
        "code": "invalid_value",
    }
    assert not route.called


@pytest.mark.parametrize(
    "raw",
    [b"{", b"[1,2]", b"\xff\xfe{}", b'"just a string"', b"[" * 5000 + b"]" * 5000, b""],
    ids=["truncated", "array", "bad-utf8", "string", "deep-nesting", "empty"],
)
def test_malformed_json_is_400_invalid_json(client, raw: bytes) -> None:
    r = client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_body_over_the_limit_is_413(make_app, upstream) -> None:
    with TestClient(make_app(max_body_bytes=1000)) as c:
        big = {"model": "alpha", "messages": [{"role": "user", "content": "x" * 2000}]}
        r = c.post("/v1/chat/completions", json=big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        chunked = c.post("/v1/chat/completions", content=iter([b"{" + b" " * 600, b" " * 600 + b"}"]))
        assert chunked.status_code == 413
