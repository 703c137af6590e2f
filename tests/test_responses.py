"""POST/GET/DELETE /v1/responses against a mocked chat-only provider: what goes upstream,
what comes back, the event stream, the store and who may see what."""

from __future__ import annotations

import sqlite3

import httpx
import orjson
import pytest
import respx
from starlette.testclient import TestClient

from hermes_api.app import create_app
from hermes_api.store.sqlite import SQLiteStore

from .conftest import BrokenStream, chunks, completion, digest, sse_body

NINE = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]
KEYS = [
    {"name": "one", "key_sha256": digest("key-one")},
    {"name": "two", "key_sha256": digest("key-two")},
]


def sent(route: respx.Route) -> dict:
    return orjson.loads(route.calls.last.request.content)


def stream_events(text: str) -> list[dict]:
    """Parse an SSE body; every event's ``event:`` line must equal its data's ``type``."""
    out = []
    for block in text.strip().split("\n\n"):
        lines = [line for line in block.splitlines() if not line.startswith(":")]
        if not lines:
            continue
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        data = orjson.loads(lines[1][6:])
        assert data["type"] == lines[0][7:]
        out.append(data)
    return out


def streamed(upstream: respx.MockRouter, *events: dict, done: bool = True) -> respx.Route:
    return upstream.post("/chat/completions").respond(
        content=sse_body(*events, done=done), headers={"content-type": "text/event-stream"}
    )


@pytest.fixture
def keyed(make_app):
    """A server with two keys allowed every profile; ``keyed.get(..., headers=AS_TWO)``."""
    with TestClient(make_app(keys=KEYS), raise_server_exceptions=False) as c:
        c.headers["Authorization"] = "Bearer key-one"
        yield c


AS_TWO = {"Authorization": "Bearer key-two"}


# -- translation down ------------------------------------------------------------------


def test_input_string_and_instructions_follow_the_persona(client: TestClient, upstream) -> None:
    route = upstream.post("/chat/completions").respond(json=completion("Hi"))
    body = {
        "model": "alpha",
        "input": "hello",
        "instructions": "Answer in French.",
        "max_output_tokens": 50,
        "temperature": 0.3,
        "top_p": 0.9,
        "metadata": {"ticket": "T-1"},
        "seed": 7,
        "user": "u-1",
        "tools": [{"type": "web_search"}],
        "reasoning": {"effort": "low"},
        "include": ["message.output_text.logprobs"],
        "truncation": "auto",
    }
    r = client.post("/v1/responses", json=body)
    assert r.status_code == 200 and r.headers["x-hermes-profile"] == "alpha"
    assert route.calls.last.request.headers["authorization"] == "Bearer sk-alpha-secret"
    assert sent(route) == {
        "model": "model-alpha",
        "messages": [
            {"role": "system", "content": "You are ALPHA-PERSONA.\n\nAnswer in French."},
            {"role": "user", "content": "hello"},
        ],
        "stream": False,
        "max_tokens": 50,
        "temperature": 0.3,
        "top_p": 0.9,
        "seed": 7,
        "user": "u-1",
    }
    answer = r.json()
    assert answer["metadata"] == {"ticket": "T-1"} and answer["instructions"] == "Answer in French."
    assert (answer["temperature"], answer["top_p"], answer["max_output_tokens"]) == (0.3, 0.9, 50)


def test_input_items_of_every_role_and_part_kind(client, upstream) -> None:
    route = upstream.post("/chat/completions").respond(json=completion())
    items = [
        {"role": "developer", "content": "Be terse."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "b"}]},
        {"role": "system", "content": [{"type": "input_text", "text": "Use SI units."}]},
        {"role": "user", "content": [{"type": "input_text", "text": "c1"}, {"type": "input_text", "text": "c2"}]},
    ]
    r = client.post("/v1/responses", json={"model": "beta", "input": items, "instructions": "INSTR"})
    assert r.status_code == 200, r.text
    assert sent(route)["messages"] == [
        {"role": "system", "content": "You are BETA-PERSONA.\n\nINSTR\n\nBe terse.\n\nUse SI units."},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c1\nc2"},
    ]


def test_text_format_becomes_response_format(client, upstream) -> None:
    route = upstream.post("/chat/completions").respond(json=completion('{"a": 1}'))
    fmt = {"type": "json_schema", "name": "thing", "schema": {"type": "object"}, "strict": True}
    r = client.post("/v1/responses", json={"model": "alpha", "input": "x", "text": {"format": fmt}})
    assert sent(route)["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "thing", "schema": {"type": "object"}, "strict": True},
    }
    assert r.json()["text"] == {"format": fmt}
    client.post("/v1/responses", json={"model": "alpha", "input": "x", "text": {"format": {"type": "json_object"}}})
    assert sent(route)["response_format"] == {"type": "json_object"}


def test_prefix_route_and_default_profile(client, upstream) -> None:
    route = upstream.post("/chat/completions").respond(json=completion())
    r = client.post("/p/gamma/v1/responses", json={"input": "x"})
    assert r.json()["model"] == "gamma" and sent(route)["model"] == "model-gamma"
    r = client.post("/v1/responses", json={"model": "hermes-agent", "input": "x"})
    assert r.json()["model"] == "default"


# -- translation back --------------------------------------------------------------------


def test_the_response_object_and_usage_mapping(client, upstream) -> None:
    usage = {
        "prompt_tokens": 20,
        "completion_tokens": 8,
        "total_tokens": 28,
        "prompt_tokens_details": {"cached_tokens": 12},
        "completion_tokens_details": {"reasoning_tokens": 5},
    }
    upstream.post("/chat/completions").respond(json=completion("Bonjour", usage=usage))
    answer = client.post("/v1/responses", json={"model": "alpha", "input": "hi"}).json()
    assert answer["id"].startswith("resp_") and answer["object"] == "response"
    assert (answer["status"], answer["model"], answer["error"], answer["incomplete_details"]) == (
        "completed",
        "alpha",
        None,
        None,
    )
    (message,) = answer["output"]
    assert message["id"].startswith("msg_") and (message["type"], message["role"], message["status"]) == (
        "message",
        "assistant",
        "completed",
    )
    assert message["content"] == [{"type": "output_text", "text": "Bonjour", "annotations": [], "logprobs": []}]
    assert answer["usage"] == {
        "input_tokens": 20,
        "input_tokens_details": {"cached_tokens": 12},
        "output_tokens": 8,
        "output_tokens_details": {"reasoning_tokens": 5},
        "total_tokens": 28,
    }
    assert answer["store"] is True and answer["previous_response_id"] is None


def test_length_finish_is_incomplete(client, upstream) -> None:
    cut = completion("It was a dark and")
    cut["choices"][0]["finish_reason"] = "length"
    upstream.post("/chat/completions").respond(json=cut)
    answer = client.post("/v1/responses", json={"model": "alpha", "input": "story", "max_output_tokens": 5}).json()
    assert answer["status"] == "incomplete"
    assert answer["incomplete_details"] == {"reason": "max_output_tokens"}
    assert answer["output"][0]["status"] == "incomplete"
    assert answer["output"][0]["content"][0]["text"] == "It was a dark and"


def test_no_usage_from_the_provider_is_null(client, upstream) -> None:
    upstream.post("/chat/completions").respond(json=completion(usage=None))
    assert client.post("/v1/responses", json={"model": "alpha", "input": "x"}).json()["usage"] is None


# -- the event stream ------------------------------------------------------------------


def test_stream_sends_the_nine_events_in_order(client, upstream) -> None:
    route = streamed(upstream, *chunks("one two three", usage=True))
    with client.stream("POST", "/v1/responses", json={"model": "alpha", "input": "x", "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    assert "[DONE]" not in text
    assert sent(route)["stream"] is True and sent(route)["stream_options"] == {"include_usage": True}
    events = stream_events(text)
    types = [e["type"] for e in events]
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert types == NINE[:4] + ["response.output_text.delta"] * 3 + NINE[5:]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert "".join(d["delta"] for d in deltas) == "one two three "
    created, final = events[0]["response"], events[-1]["response"]
    assert created["status"] == "in_progress" and created["output"] == []
    assert final["id"] == created["id"] and final["status"] == "completed"
    item_id = events[2]["item"]["id"]
    assert all(e.get("item_id", item_id) == item_id and e.get("output_index", 0) == 0 for e in events)
    text_done, part_done, item_done = events[-4:-1]
    assert text_done["text"] == part_done["part"]["text"] == "one two three "
    assert item_done["item"]["status"] == "completed" and final["output"] == [item_done["item"]]
    assert final["usage"]["total_tokens"] == 7 and final["usage"]["input_tokens"] == 5


def test_stream_without_provider_usage_completes_with_null_usage(client, upstream) -> None:
    streamed(upstream, *chunks("a b"))  # llama.cpp sends no usage chunk
    events = stream_events(client.post("/v1/responses", json={"model": "alpha", "input": "x", "stream": True}).text)
    assert events[-1]["type"] == "response.completed" and events[-1]["response"]["usage"] is None


def test_stream_cut_at_the_limit_completes_with_status_incomplete(client, upstream) -> None:
    cut = chunks("a b")
    cut[-1]["choices"][0]["finish_reason"] = "length"
    streamed(upstream, *cut)
    events = stream_events(client.post("/v1/responses", json={"model": "alpha", "input": "x", "stream": True}).text)
    assert [e["type"] for e in events] == NINE[:4] + ["response.output_text.delta"] * 2 + NINE[5:]
    final = events[-1]["response"]
    assert final["status"] == "incomplete" and final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert events[-2]["item"]["status"] == "incomplete" and final["output"] == [events[-2]["item"]]


def test_streamed_response_is_stored_before_the_final_event(client, upstream) -> None:
    streamed(upstream, *chunks("stored words"))
    events = stream_events(client.post("/v1/responses", json={"model": "alpha", "input": "x", "stream": True}).text)
    final = events[-1]["response"]
    assert client.get(f"/v1/responses/{final['id']}").json() == final


@pytest.mark.parametrize(
    ("response", "code"),
    [
        pytest.param(
            lambda: httpx.Response(200, stream=BrokenStream(sse_body(*chunks("a b")[:2], done=False))),
            "upstream_unavailable",
            id="reset",
        ),
        pytest.param(
            lambda: httpx.Response(200, content=sse_body(*chunks("a"), done=False)), "upstream_error", id="cut"
        ),
        pytest.param(
            lambda: httpx.Response(200, content=sse_body({"error": {"message": "overloaded"}})),
            "upstream_error",
            id="error-event",
        ),
    ],
)
def test_failure_after_the_first_byte_is_response_failed(client, upstream, response, code) -> None:
    upstream.post("/chat/completions").mock(side_effect=lambda request: response())
    r = client.post("/v1/responses", json={"model": "alpha", "input": "x", "stream": True})
    assert r.status_code == 200
    events = stream_events(r.text)
    assert [e["type"] for e in events[:2]] == NINE[:2]  # items appear with the provider's first words
    last = events[-1]
    assert last["type"] == "response.failed" and last["sequence_number"] == len(events) - 1
    assert last["response"]["status"] == "failed" and last["response"]["error"]["code"] == code
    assert last["response"]["error"]["message"]
    assert "sk-alpha-secret" not in r.text
    stored = client.get(f"/v1/responses/{last['response']['id']}").json()
    assert stored["status"] == "failed" and stored["error"]["code"] == code


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_failure_before_the_first_byte_is_plain_json(client, upstream, stream) -> None:
    upstream.post("/chat/completions").respond(status_code=503)
    r = client.post("/v1/responses", json={"model": "alpha", "input": "x", "stream": stream})
    assert r.status_code == 502 and r.headers["content-type"] == "application/json"
    assert r.json()["error"]["code"] == "upstream_unavailable"


# -- validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        pytest.param({}, "input", id="missing-input"),
        pytest.param({"input": []}, "input", id="empty-list"),
        pytest.param({"input": 5}, "input", id="input-number"),
        pytest.param({"input": ["hi"]}, "input[0]", id="item-string"),
        pytest.param(
            {"input": [{"role": "user", "content": "a"}, {"type": "function_call", "name": "f", "arguments": "{}"}]},
            "input[1]",
            id="function-call-without-call-id",
        ),
        pytest.param({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]", id="unknown-item-reference"),
        pytest.param({"input": [{"role": "tool", "content": "a"}]}, "input[0].role", id="bad-role"),
        pytest.param({"input": [{"role": "user", "content": 3}]}, "input[0].content", id="content-number"),
        pytest.param(
            {
                "input": [
                    {
                        "role": "user",
                        "content": [{"type": "input_text", "text": "a"}, {"type": "input_image", "image_url": "x"}],
                    }
                ]
            },
            "input[0].content[1]",
            id="image-part",
        ),
        pytest.param({"input": "x", "instructions": 1}, "instructions", id="instructions-number"),
        pytest.param({"input": "x", "previous_response_id": 1}, "previous_response_id", id="previous-number"),
        pytest.param({"input": "x", "store": "yes"}, "store", id="store-string"),
        pytest.param({"input": "x", "stream": "yes"}, "stream", id="stream-string"),
        pytest.param({"input": "x", "max_output_tokens": 0}, "max_output_tokens", id="max-tokens-zero"),
        pytest.param({"input": "x", "max_output_tokens": "5"}, "max_output_tokens", id="max-tokens-string"),
        pytest.param({"input": "x", "max_output_tokens": True}, "max_output_tokens", id="max-tokens-bool"),
        pytest.param({"input": "x", "temperature": 3}, "temperature", id="temperature-range"),
        pytest.param({"input": "x", "top_p": "high"}, "top_p", id="top-p-string"),
        pytest.param({"input": "x", "metadata": {"a": 1}}, "metadata", id="metadata-value"),
        pytest.param({"input": "x", "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", id="metadata-17"),
        pytest.param({"input": "x", "text": {"format": {"type": "xml"}}}, "text.format", id="text-format"),
        pytest.param({"input": "x", "text": {"format": {"type": "json_schema"}}}, "text.format", id="schema-missing"),
        pytest.param({"input": "x", "background": True}, "background", id="background"),
        pytest.param({"input": "x", "conversation": "conv_1"}, "conversation", id="conversation"),
        pytest.param({"input": "x", "prompt": {"id": "pmpt_1"}}, "prompt", id="prompt"),
    ],
)
def test_bad_fields_are_400_naming_the_field(client, upstream, body, param) -> None:
    route = upstream.post("/chat/completions").respond(json=completion())
    r = client.post("/v1/responses", json={"model": "alpha", **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "invalid_value", param)
    assert not route.called


def test_unsupported_item_message_names_the_item_type(client, upstream) -> None:
    items = [{"type": "computer_call_output", "call_id": "c", "output": {"type": "computer_screenshot"}}]
    error = client.post("/v1/responses", json={"model": "alpha", "input": items}).json()["error"]
    assert "input[0]" in error["message"] and "computer_call_output" in error["message"]


def test_malformed_json_and_unknown_profile(client) -> None:
    r = client.post("/v1/responses", content=b"{", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = client.post("/v1/responses", json={"model": "nobody", "input": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


# -- previous_response_id ----------------------------------------------------------------


def test_previous_response_id_replays_inputs_and_outputs_not_instructions(client, upstream) -> None:
    route = upstream.post("/chat/completions")
    route.side_effect = [
        httpx.Response(200, json=completion("A1")),
        httpx.Response(200, json=completion("A2")),
        httpx.Response(200, json=completion("A3")),
    ]
    first = client.post("/v1/responses", json={"model": "alpha", "input": "Q1", "instructions": "OLD RULES"}).json()
    second = client.post(
        "/v1/responses",
        json={"model": "alpha", "input": [{"role": "user", "content": "Q2"}], "previous_response_id": first["id"]},
    ).json()
    assert second["previous_response_id"] == first["id"]
    third = client.post(
        "/v1/responses",
        json={"model": "alpha", "input": "Q3", "previous_response_id": second["id"], "instructions": "NEW RULES"},
    )
    assert third.status_code == 200
    assert sent(route)["messages"] == [
        {"role": "system", "content": "You are ALPHA-PERSONA.\n\nNEW RULES"},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "A2"},
        {"role": "user", "content": "Q3"},
    ]


def test_unknown_or_deleted_previous_response_is_404(client, upstream) -> None:
    route = upstream.post("/chat/completions").respond(json=completion())
    r = client.post("/v1/responses", json={"model": "alpha", "input": "x", "previous_response_id": "resp_nope"})
    assert r.status_code == 404
    assert r.json()["error"] | {"message": ""} == {
        "message": "",
        "type": "invalid_request_error",
        "param": "previous_response_id",
        "code": "response_not_found",
    }
    first = client.post("/v1/responses", json={"model": "alpha", "input": "x"}).json()
    assert client.delete(f"/v1/responses/{first['id']}").status_code == 200
    r = client.post("/v1/responses", json={"model": "alpha", "input": "y", "previous_response_id": first["id"]})
    assert r.status_code == 404 and r.json()["error"]["param"] == "previous_response_id"
    assert route.call_count == 1


def test_store_false_is_never_persisted(client, upstream, tmp_path) -> None:
    upstream.post("/chat/completions").respond(json=completion("secret answer"))
    answer = client.post("/v1/responses", json={"model": "alpha", "input": "private", "store": False}).json()
    assert answer["store"] is False
    assert client.get(f"/v1/responses/{answer['id']}").status_code == 404
    r = client.post("/v1/responses", json={"model": "alpha", "input": "y", "previous_response_id": answer["id"]})
    assert r.status_code == 404
    streamed(upstream, *chunks("streamed secret"))
    events = stream_events(
        client.post("/v1/responses", json={"model": "alpha", "input": "p", "store": False, "stream": True}).text
    )
    assert client.get(f"/v1/responses/{events[-1]['response']['id']}").status_code == 404
    files = b"".join(p.read_bytes() for p in (tmp_path / "state").glob("responses.db*"))
    assert b"secret" not in files and b"private" not in files


# -- retrieve, delete, input items, ownership ----------------------------------------------


def test_retrieve_delete_and_input_items(client, upstream) -> None:
    upstream.post("/chat/completions").respond(json=completion("done"))
    items = [{"role": "user", "content": f"m{i}"} for i in range(5)]
    answer = client.post("/v1/responses", json={"model": "beta", "input": items}).json()
    rid = answer["id"]
    got = client.get(f"/v1/responses/{rid}")
    assert got.status_code == 200 and got.json() == answer and got.headers["x-hermes-profile"] == "beta"

    listed = client.get(f"/v1/responses/{rid}/input_items").json()
    assert listed["object"] == "list" and listed["has_more"] is False
    assert [i["content"][0]["text"] for i in listed["data"]] == ["m4", "m3", "m2", "m1", "m0"]
    assert all(i["type"] == "message" and i["role"] == "user" and i["id"].startswith("msg_") for i in listed["data"])
    assert (listed["first_id"], listed["last_id"]) == (listed["data"][0]["id"], listed["data"][-1]["id"])

    page = client.get(f"/v1/responses/{rid}/input_items", params={"order": "asc", "limit": 2}).json()
    assert [i["content"][0]["text"] for i in page["data"]] == ["m0", "m1"] and page["has_more"] is True
    rest = client.get(f"/v1/responses/{rid}/input_items", params={"order": "asc", "after": page["last_id"]}).json()
    assert [i["content"][0]["text"] for i in rest["data"]] == ["m2", "m3", "m4"] and rest["has_more"] is False
    for params, param in [({"limit": 0}, "limit"), ({"limit": "x"}, "limit"), ({"order": "up"}, "order")]:
        bad = client.get(f"/v1/responses/{rid}/input_items", params=params)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == param
    assert client.get(f"/v1/responses/{rid}", params={"stream": "true"}).status_code == 400

    deleted = client.delete(f"/v1/responses/{rid}")
    assert deleted.json() == {"id": rid, "object": "response", "deleted": True}
    for method, path in [("GET", rid), ("DELETE", rid), ("GET", f"{rid}/input_items")]:
        r = client.request(method, f"/v1/responses/{path}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "response_not_found"


def test_another_key_sees_nothing(keyed, upstream) -> None:
    upstream.post("/chat/completions").respond(json=completion())
    rid = keyed.post("/v1/responses", json={"model": "alpha", "input": "mine"}).json()["id"]
    for method, path in [("GET", rid), ("GET", f"{rid}/input_items"), ("DELETE", rid)]:
        r = keyed.request(method, f"/v1/responses/{path}", headers=AS_TWO)
        assert r.status_code == 404 and r.json()["error"]["code"] == "response_not_found", path
    r = keyed.post("/v1/responses", headers=AS_TWO, json={"model": "alpha", "input": "x", "previous_response_id": rid})
    assert r.status_code == 404 and r.json()["error"]["param"] == "previous_response_id"
    assert keyed.get(f"/v1/responses/{rid}").status_code == 200  # still there for its owner
    assert keyed.get(f"/v1/responses/{rid}", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_another_profile_sees_nothing(keyed, upstream) -> None:
    upstream.post("/chat/completions").respond(json=completion())
    rid = keyed.post("/v1/responses", json={"model": "alpha", "input": "mine"}).json()["id"]
    for path in (f"/p/beta/v1/responses/{rid}", f"/p/beta/v1/responses/{rid}/input_items"):
        assert keyed.get(path).json()["error"]["code"] == "response_not_found"
    r = keyed.get(f"/v1/responses/{rid}", headers={"X-Hermes-Profile": "beta"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "response_not_found"
    assert keyed.delete(f"/p/beta/v1/responses/{rid}").status_code == 404
    r = keyed.post("/v1/responses", json={"model": "beta", "input": "x", "previous_response_id": rid})
    assert r.status_code == 404 and r.json()["error"]["param"] == "previous_response_id"
    # Its own profile, named or implied, still finds it; routing headers do not move it.
    assert keyed.get(f"/p/alpha/v1/responses/{rid}").status_code == 200
    implied = keyed.get(f"/v1/responses/{rid}", headers={"X-Hermes-Chat-Id": "anything"})
    assert implied.status_code == 200 and implied.headers["x-hermes-profile"] == "alpha"
    assert keyed.get(f"/p/nobody/v1/responses/{rid}").json()["error"]["code"] == "model_not_found"


def test_a_key_no_longer_allowed_the_profile_gets_403(make_app, upstream) -> None:
    upstream.post("/chat/completions").respond(json=completion())
    with TestClient(make_app(keys=KEYS)) as c:
        rid = c.post(
            "/v1/responses", headers={"Authorization": "Bearer key-one"}, json={"model": "alpha", "input": "x"}
        )
        rid = rid.json()["id"]
    narrowed = [{**KEYS[0], "profiles": ["beta"]}, KEYS[1]]
    with TestClient(make_app(keys=narrowed)) as c:  # same state_dir: the response is still stored
        r = c.get(f"/v1/responses/{rid}", headers={"Authorization": "Bearer key-one"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_found"


class BrokenStore(SQLiteStore):
    """Reads work; every write fails the way a full disk does."""

    async def put_response(self, record):
        raise sqlite3.OperationalError("database or disk is full")

    async def append_session(self, owner, profile, session_id, messages):
        raise sqlite3.OperationalError("database or disk is full")


def test_a_failed_store_write_is_never_acknowledged(make_settings, upstream) -> None:
    async def broken(settings):
        return await BrokenStore.open(settings.state_dir, settings.retention)

    app = create_app(make_settings(), environ={}, transport=httpx.MockTransport(upstream.async_handler), store=broken)
    route = upstream.post("/chat/completions")
    with TestClient(app, raise_server_exceptions=False) as c:
        route.respond(json=completion())
        r = c.post("/v1/responses", json={"model": "alpha", "input": "x"})
        assert r.status_code == 500 and r.json()["error"]["code"] == "server_error"
        assert "disk" not in r.text  # details go to the log only
        route.respond(content=sse_body(*chunks("a b")))
        events = stream_events(c.post("/v1/responses", json={"model": "alpha", "input": "x", "stream": True}).text)
        assert [e["type"] for e in events][-2:] == ["response.output_item.done", "response.failed"]
        assert events[-1]["response"]["error"]["code"] == "server_error"
        chat = c.post(
            "/v1/chat/completions",
            headers={"X-Hermes-Session-Id": "s"},
            json={"model": "alpha", "messages": [{"role": "user", "content": "x"}], "stream": True},
        )
        data = [line[6:] for line in chat.text.splitlines() if line.startswith("data: ")]
        assert data[-1] == "[DONE]" and orjson.loads(data[-2])["error"]["code"] == "server_error"
