"""Chat completions session continuity (``X-Hermes-Session-Id``), as Hermes's API server
has it: earlier turns of the same key and profile go first, the new turn is stored
after a successful answer, the header comes back."""

from __future__ import annotations

import http.client

import httpx
import orjson
import pytest
import respx
from starlette.testclient import TestClient

from .conftest import chunks, completion, digest, sse_body, tool_call, tool_chunks, tool_completion

KEYS = [{"name": "one", "key_sha256": digest("key-one")}, {"name": "two", "key_sha256": digest("key-two")}]
SESSION = {"X-Hermes-Session-Id": "chat-42"}


def sent(route: respx.Route) -> list[dict]:
    return orjson.loads(route.calls.last.request.content)["messages"]


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def keyed(make_app):
    with TestClient(make_app(keys=KEYS), raise_server_exceptions=False) as c:
        c.headers["Authorization"] = "Bearer key-one"
        yield c


def test_earlier_turns_are_prepended_and_the_header_echoed(keyed, upstream) -> None:
    route = upstream.post("/chat/completions")
    route.side_effect = [httpx.Response(200, json=completion("A1")), httpx.Response(200, json=completion("A2"))]
    first = keyed.post("/v1/chat/completions", headers=SESSION, json={"model": "alpha", "messages": user("Q1")})
    assert first.status_code == 200 and first.headers["x-hermes-session-id"] == "chat-42"
    system = [{"role": "system", "content": "Be kind."}]
    second = keyed.post(
        "/v1/chat/completions", headers=SESSION, json={"model": "alpha", "messages": system + user("Q2")}
    )
    assert second.json()["choices"][0]["message"]["content"] == "A2"
    assert sent(route) == [
        {"role": "system", "content": "You are ALPHA-PERSONA.\n\nBe kind."},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
    ]
    route.side_effect = None
    route.respond(json=completion("A3"))
    keyed.post("/v1/chat/completions", headers=SESSION, json={"model": "alpha", "messages": user("Q3")})
    # The client's system message of turn 2 was not stored in the session.
    assert sent(route) == [
        {"role": "system", "content": "You are ALPHA-PERSONA."},
        *user("Q1"),
        {"role": "assistant", "content": "A1"},
        *user("Q2"),
        {"role": "assistant", "content": "A2"},
        *user("Q3"),
    ]


def test_other_keys_profiles_and_sessions_see_nothing(keyed, upstream) -> None:
    route = upstream.post("/chat/completions").respond(json=completion("private answer"))
    keyed.post("/v1/chat/completions", headers=SESSION, json={"model": "alpha", "messages": user("private")})
    for headers, model in [
        ({**SESSION, "Authorization": "Bearer key-two"}, "alpha"),  # another key
        (SESSION, "beta"),  # another profile
        ({"X-Hermes-Session-Id": "chat-43"}, "alpha"),  # another session
        ({}, "alpha"),  # no session
    ]:
        keyed.post("/v1/chat/completions", headers=headers, json={"model": model, "messages": user("hi")})
        assert sent(route)[1:] == user("hi"), (headers, model)


def test_a_stream_is_appended_only_after_it_completes(keyed, upstream) -> None:
    route = upstream.post("/chat/completions")
    route.respond(content=sse_body(*chunks("streamed answer")), headers={"content-type": "text/event-stream"})
    body = {"model": "alpha", "messages": user("Q1"), "stream": True}
    r = keyed.post("/v1/chat/completions", headers=SESSION, json=body)
    assert r.headers["x-hermes-session-id"] == "chat-42" and r.text.endswith("data: [DONE]\n\n")
    route.respond(content=sse_body(*chunks("cut")[:2], done=False))  # fails mid-stream
    failed = keyed.post("/v1/chat/completions", headers=SESSION, json={**body, "messages": user("lost")})
    assert '"error"' in failed.text
    route.respond(json=completion())
    keyed.post("/v1/chat/completions", headers=SESSION, json={"model": "alpha", "messages": user("Q3")})
    assert sent(route)[1:] == [*user("Q1"), {"role": "assistant", "content": "streamed answer "}, *user("Q3")]


def test_a_failed_turn_is_not_stored(keyed, upstream) -> None:
    route = upstream.post("/chat/completions")
    route.respond(status_code=503)
    r = keyed.post("/v1/chat/completions", headers=SESSION, json={"model": "alpha", "messages": user("lost")})
    assert r.status_code == 502
    route.respond(json=completion())
    keyed.post("/v1/chat/completions", headers=SESSION, json={"model": "alpha", "messages": user("Q")})
    assert sent(route)[1:] == user("Q")


@pytest.mark.parametrize("value", ["x" * 257, "bad\x01id", "tab\there"], ids=["too-long", "control", "tab"])
def test_session_header_is_sanitised(keyed, upstream, value: str) -> None:
    route = upstream.post("/chat/completions").respond(json=completion())
    headers = {"X-Hermes-Session-Id": value}
    r = keyed.post("/v1/chat/completions", headers=headers, json={"model": "alpha", "messages": user("x")})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_header" and r.json()["error"]["param"] == "x-hermes-session-id"
    assert not route.called


def test_a_non_ascii_session_id_is_echoed_byte_for_byte(make_app, live, upstream) -> None:
    # Through uvicorn and http.client: Starlette's TestClient cannot carry non-ASCII
    # response headers, and respx intercepts every httpx client in this test.
    upstream.post("/chat/completions").respond(json=completion())
    server = live(make_app())
    sid = "café-☕".encode()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    body = orjson.dumps({"model": "alpha", "messages": user("x")})
    conn.putrequest("POST", "/v1/chat/completions")
    for name, value in [(b"content-type", b"application/json"), (b"x-hermes-session-id", sid)]:
        conn.putheader(name, value)
    conn.putheader(b"content-length", str(len(body)).encode())
    conn.endheaders(body)
    response = conn.getresponse()
    response.read()
    conn.close()
    assert response.status == 200
    # http.client decodes header bytes as Latin-1: re-encode to see the bytes sent.
    assert response.getheader("x-hermes-session-id").encode("latin-1") == sid


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_session_turn_keeps_its_tool_calls(client: TestClient, upstream, stream: bool) -> None:
    """The next turn replays the assistant's calls before the tool results that answer
    them (an assistant message without them would make the provider refuse the turn)."""
    route = upstream.post("/chat/completions")
    calls = [("call_a", "lookup", '{"q": 1}'), ("call_b", "lookup", '{"q": 2}')]
    first = sse_body(*tool_chunks(*calls, size=3, interleave=True)) if stream else None
    route.side_effect = [
        httpx.Response(200, content=first) if stream else httpx.Response(200, json=tool_completion(*calls)),
        httpx.Response(200, json=completion("both found")),
    ]
    headers = {"X-Hermes-Session-Id": "tools-1"}
    question = {"role": "user", "content": "look up 1 and 2"}
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    body = {"model": "alpha", "messages": [question], "tools": tools, "stream": stream}
    assert client.post("/v1/chat/completions", headers=headers, json=body).status_code == 200
    results = [{"role": "tool", "tool_call_id": c[0], "content": f"result {c[0]}"} for c in calls]
    r = client.post("/v1/chat/completions", headers=headers, json={"model": "alpha", "messages": results,
                                                                     "tools": tools})  # fmt: skip
    assert r.status_code == 200
    assert sent(route)[1:] == [question, {"role": "assistant", "tool_calls": [tool_call(*c) for c in calls]}, *results]
