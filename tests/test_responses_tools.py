"""Function tools through /v1/responses against a mocked chat-only provider: the tool
fields and call items on the way down, function_call items and their events on the way
back, the stored chain, the 400s (nothing stored, nothing sent)."""

from __future__ import annotations

import sqlite3

import httpx
import pytest
from starlette.testclient import TestClient

from .conftest import completion, tool_call, tool_chunks, tool_completion
from .test_responses import AS_TWO, KEYS, sent, stream_events, streamed

FN = {"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}
CALL = {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": "{}"}
OUTPUT = {"type": "function_call_output", "call_id": "call_1", "output": "found"}


def stored_count(tmp_path) -> int:
    db = sqlite3.connect(tmp_path / "state" / "responses.db")
    try:
        return db.execute("SELECT count(*) FROM responses").fetchone()[0]
    finally:
        db.close()


# -- tools and tool_choice -------------------------------------------------------------------


def test_function_tools_go_upstream_with_only_the_fields_set(client: TestClient, upstream) -> None:
    route = upstream.post("/chat/completions").respond(json=completion())
    tools = [
        {"type": "function", "name": "bare"},
        {"type": "function", "name": "full", "description": "d", "parameters": {"type": "object"}, "strict": False},
        {"type": "web_search_preview"},
        {"type": "code_interpreter", "container": {"type": "auto"}},
        {"type": "image_generation"},
        {"type": "computer_use_preview", "display_width": 1, "display_height": 1, "environment": "linux"},
        {"type": "mcp", "server_label": "x", "server_url": "https://mcp.example"},
        {"type": "something_new"},
    ]
    answer = client.post("/v1/responses", json={"model": "alpha", "input": "x", "tools": tools}).json()
    assert sent(route)["tools"] == [
        {"type": "function", "function": {"name": "bare"}},
        {"type": "function", "function": {"name": "full", "description": "d", "parameters": {"type": "object"},
                                          "strict": False}},
    ]  # fmt: skip
    assert answer["tools"] == [
        {"type": "function", "name": "bare", "description": None, "parameters": None, "strict": None},
        {"type": "function", "name": "full", "description": "d", "parameters": {"type": "object"}, "strict": False},
    ]


@pytest.mark.parametrize(
    ("tools", "choice", "upstream_fields", "echo"),
    [
        pytest.param([{"type": "web_search"}], None, {}, "auto", id="hosted-only"),
        pytest.param([], "none", {}, "none", id="none-without-tools"),
        pytest.param(
            [FN, {**FN, "name": "other"}],
            {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "other"},
                                                                    {"type": "web_search"}]},
            {"tools": [{"type": "function", "function": {"name": "other", "parameters": FN["parameters"]}}],
             "tool_choice": "required"},
            {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "other"}]},
            id="allowed-tools",
        ),
    ],
)  # fmt: skip
def test_tool_choice_without_a_chat_twin(client, upstream, tools, choice, upstream_fields, echo) -> None:
    route = upstream.post("/chat/completions").respond(json=completion())
    body = {"model": "alpha", "input": "x", "tools": tools, **({"tool_choice": choice} if choice else {})}
    answer = client.post("/v1/responses", json=body).json()
    payload = sent(route)
    assert {k: payload[k] for k in ("tools", "tool_choice", "parallel_tool_calls") if k in payload} == upstream_fields
    assert answer["tool_choice"] == echo


# -- input items -----------------------------------------------------------------------------


def test_call_items_become_tool_calls_and_tool_messages(client, upstream) -> None:
    route = upstream.post("/chat/completions").respond(json=completion("done"))
    items = [
        {"role": "user", "content": "look up two things"},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "thinking"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Sure."}]},
        {**CALL, "id": "fc_a", "status": "completed"},
        {**CALL, "call_id": "call_2", "arguments": '{"q": 2}'},
        {"type": "function_call_output", "call_id": "call_2",
         "output": [{"type": "input_text", "text": "two"}, {"type": "input_image", "image_url": "data:,"}]},
        OUTPUT,
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I cannot say more."}]},
        {"role": "user", "content": "thanks"},
    ]  # fmt: skip
    answer = client.post("/v1/responses", json={"model": "alpha", "input": items, "tools": [FN]}).json()
    assert sent(route)["messages"][1:] == [
        {"role": "user", "content": "look up two things"},
        {"role": "assistant", "content": "Sure.",
         "tool_calls": [tool_call("call_1", "lookup", "{}"), tool_call("call_2", "lookup", '{"q": 2}')]},
        {"role": "tool", "tool_call_id": "call_2", "content": "two"},
        {"role": "tool", "tool_call_id": "call_1", "content": "found"},
        {"role": "assistant", "content": "I cannot say more."},
        {"role": "user", "content": "thanks"},
    ]  # fmt: skip
    listed = client.get(f"/v1/responses/{answer['id']}/input_items", params={"order": "asc"}).json()["data"]
    assert [i["type"] for i in listed] == [
        "message", "reasoning", "message", "function_call", "function_call", "function_call_output",
        "function_call_output", "message", "message",
    ]  # fmt: skip
    assert listed[3] == {**CALL, "id": "fc_a", "status": "completed"} and listed[1]["id"] == "rs_1"
    assert listed[4]["id"].startswith("fc_") and listed[6]["id"].startswith("fco_")


def test_item_references_resolve_to_stored_items(client, upstream) -> None:
    route = upstream.post("/chat/completions")
    route.side_effect = [
        httpx.Response(200, json=tool_completion(("call_9", "lookup", "{}"), content="Looking.")),
        httpx.Response(200, json=completion("found it")),
    ]
    first = client.post("/v1/responses", json={"model": "alpha", "input": "find", "tools": [FN], "store": True}).json()
    message, call = first["output"]
    references = [{"type": "item_reference", "id": message["id"]}, {"type": "item_reference", "id": call["id"]}]
    items = [{"role": "user", "content": "find"}, *references, {**OUTPUT, "call_id": "call_9"}]
    r = client.post("/v1/responses", json={"model": "alpha", "input": items, "tools": [FN]})
    assert r.status_code == 200, r.text
    assert sent(route)["messages"][2:] == [
        {"role": "assistant", "content": "Looking.", "tool_calls": [tool_call("call_9", "lookup", "{}")]},
        {"role": "tool", "tool_call_id": "call_9", "content": "found"},
    ]
    bad = client.post("/v1/responses", headers={"X-Hermes-Profile": "beta"}, json={"input": items, "tools": [FN]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "input[1]"  # another profile's items


def test_item_references_find_nothing_of_another_key(make_app, upstream) -> None:
    upstream.post("/chat/completions").respond(json=tool_completion(("call_9", "lookup", "{}")))
    with TestClient(make_app(keys=KEYS), headers={"Authorization": "Bearer key-one"}) as keyed:
        call = keyed.post("/v1/responses", json={"model": "alpha", "input": "find", "tools": [FN]}).json()["output"][0]
        items = [{"role": "user", "content": "find"}, {"type": "item_reference", "id": call["id"]}]
        r = keyed.post("/v1/responses", headers=AS_TWO, json={"model": "alpha", "input": items, "tools": [FN]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input[1]"
    assert "call_9" not in r.text


# -- the answer: function_call items -----------------------------------------------------------


def test_a_call_without_a_provider_id_gets_one_the_chain_keeps(client, upstream) -> None:
    answer = tool_completion(("", "lookup", "{}"))
    del answer["choices"][0]["message"]["tool_calls"][0]["id"]
    route = upstream.post("/chat/completions")
    route.side_effect = [httpx.Response(200, json=answer), httpx.Response(200, json=completion())]
    first = client.post("/v1/responses", json={"model": "alpha", "input": "x", "tools": [FN]}).json()
    call_id = first["output"][0]["call_id"]
    assert call_id.startswith("call_")
    body = {"model": "alpha", "previous_response_id": first["id"], "input": [{**OUTPUT, "call_id": call_id}]}
    assert client.post("/v1/responses", json=body).status_code == 200
    assert sent(route)["messages"][-2]["tool_calls"][0]["id"] == call_id


def test_stream_events_for_text_then_a_call(client, upstream) -> None:
    up = tool_chunks(("call_1", "lookup", '{"q": "x"}'), size=5, text="Hmm.")
    up.append({**up[0], "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}})
    streamed(upstream, *up)
    events = stream_events(client.post("/v1/responses", json={"model": "alpha", "input": "x", "tools": [FN],
                                                               "stream": True}).text)  # fmt: skip
    assert [(e["type"], e.get("output_index")) for e in events] == [
        ("response.created", None),
        ("response.in_progress", None),
        ("response.output_item.added", 0),
        ("response.content_part.added", 0),
        ("response.output_text.delta", 0),
        ("response.output_text.done", 0),  # OpenAI's order: the text is done before the call begins
        ("response.content_part.done", 0),
        ("response.output_item.done", 0),
        ("response.output_item.added", 1),
        ("response.function_call_arguments.delta", 1),
        ("response.function_call_arguments.delta", 1),
        ("response.function_call_arguments.done", 1),
        ("response.output_item.done", 1),
        ("response.completed", None),
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    call_done = events[-2]["item"]
    assert call_done | {"id": ""} == {"id": "", "type": "function_call", "status": "completed",
                                      "arguments": '{"q": "x"}', "call_id": "call_1", "name": "lookup"}  # fmt: skip
    assert events[8]["item"] == {**call_done, "status": "in_progress", "arguments": ""}
    assert events[-3]["name"] == "lookup" and events[-3]["item_id"] == call_done["id"]
    final = events[-1]["response"]
    assert final["output"] == [events[7]["item"], call_done] and final["usage"]["total_tokens"] == 14
    assert client.get(f"/v1/responses/{final['id']}").json() == final


def test_text_after_a_call_is_a_new_message_item(client, upstream) -> None:
    up = tool_chunks(("call_1", "lookup", '{"q": "x"}'), text="Before.")
    up.insert(-1, {**up[0], "choices": [{"index": 0, "delta": {"content": "After."}, "finish_reason": None}]})
    streamed(upstream, *up)
    events = stream_events(client.post("/v1/responses", json={"model": "alpha", "input": "x", "tools": [FN],
                                                               "stream": True}).text)  # fmt: skip
    final = events[-1]["response"]
    assert [(o["type"], o.get("content", [{}])[0].get("text")) for o in final["output"]] == [
        ("message", "Before."), ("function_call", None), ("message", "After.")
    ]  # fmt: skip
    added = [e["output_index"] for e in events if e["type"] == "response.output_item.added"]
    done = [e["output_index"] for e in events if e["type"] == "response.output_item.done"]
    assert added == [0, 1, 2] and done == [0, 1, 2]


def test_a_stream_cut_at_the_limit_leaves_the_call_incomplete(client, upstream) -> None:
    up = tool_chunks(("call_1", "lookup", '{"q": "a long'), size=4)
    up[-1]["choices"][0]["finish_reason"] = "length"
    streamed(upstream, *up)
    events = stream_events(
        client.post("/v1/responses", json={"model": "alpha", "input": "x", "tools": [FN], "stream": True}).text
    )
    final = events[-1]["response"]
    assert events[-1]["type"] == "response.completed" and final["status"] == "incomplete"
    assert final["output"][0]["status"] == "incomplete" and final["output"][0]["arguments"] == '{"q": "a long'


# -- bad input: a 400 naming the item, nothing stored, nothing sent ---------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        pytest.param({"input": [CALL, {**OUTPUT, "call_id": "call_2"}]}, "input[1]", id="output-for-no-call"),
        pytest.param(
            {"input": [{"role": "user", "content": "a"}, {**OUTPUT, "call_id": "call_x"}, CALL, OUTPUT]},
            "input[1]",
            id="output-before-its-call",
        ),  # fmt: skip
        pytest.param({"input": [{"role": "user", "content": "a"}, CALL]}, "input[1]", id="call-without-output"),
        pytest.param({"input": [CALL, {"role": "user", "content": "b"}, OUTPUT]}, "input[0]", id="user-before-output"),
        pytest.param({"input": [{**CALL, "arguments": {"q": 1}}, OUTPUT]}, "input[0]", id="arguments-object"),
        pytest.param(
            {"input": [{"role": "user", "content": "a"}, {**CALL, "call_id": None}]},
            "input[1]",
            id="call-without-call-id",
        ),  # fmt: skip
        pytest.param({"input": [{**CALL, "name": ""}]}, "input[0]", id="call-without-name"),
        pytest.param({"input": [CALL, {**OUTPUT, "output": 42}]}, "input[1]", id="output-number"),
        pytest.param({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0]", id="hosted-call-item"),
        pytest.param({"input": [{"type": "item_reference", "id": "msg_nope"}]}, "input[0]", id="unknown-reference"),
        pytest.param({"input": "x", "tools": {"type": "function"}}, "tools", id="tools-object"),
        pytest.param({"input": "x", "tools": [FN, "lookup"]}, "tools[1]", id="tool-string"),
        pytest.param({"input": "x", "tools": [{**FN, "name": "look up"}]}, "tools[0].name", id="tool-name"),
        pytest.param({"input": "x", "tools": [{**FN, "parameters": "{}"}]}, "tools[0]", id="parameters-string"),
        pytest.param({"input": "x", "tools": [FN], "tool_choice": "always"}, "tool_choice", id="choice-unknown"),
        pytest.param(
            {"input": "x", "tools": [{"type": "web_search"}], "tool_choice": "required"},
            "tool_choice",
            id="required-without-function-tools",
        ),  # fmt: skip
        pytest.param(
            {"input": "x", "tools": [FN], "tool_choice": {"type": "function", "name": "other"}},
            "tool_choice",
            id="named-not-in-tools",
        ),  # fmt: skip
        pytest.param(
            {"input": "x", "tools": [FN, {"type": "web_search"}], "tool_choice": {"type": "web_search"}},
            "tool_choice",
            id="forced-hosted-tool",
        ),  # fmt: skip
        pytest.param(
            {"input": "x", "tools": [FN], "parallel_tool_calls": "yes"}, "parallel_tool_calls", id="parallel-string"
        ),  # fmt: skip
    ],
)
def test_bad_tool_input_is_a_400_and_nothing_happens(client, upstream, tmp_path, body, param) -> None:
    route = upstream.post("/chat/completions").respond(json=completion())
    r = client.post("/v1/responses", json={"model": "alpha", **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "invalid_value", param)
    assert not route.called and stored_count(tmp_path) == 0


def test_continuing_a_call_without_its_output_is_a_400(client, upstream, tmp_path) -> None:
    route = upstream.post("/chat/completions").respond(json=tool_completion(("call_1", "lookup", "{}")))
    first = client.post("/v1/responses", json={"model": "alpha", "input": "x", "tools": [FN]}).json()
    r = client.post("/v1/responses", json={"model": "alpha", "input": "and?", "previous_response_id": first["id"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    assert "call_1" in r.json()["error"]["message"]
    assert route.call_count == 1 and stored_count(tmp_path) == 1
