"""Hand-written bad input: broken bodies, wrong types for every field the server reads,
and hostile values in every profile selector. Never a 5xx, never another profile, never
a file outside the Hermes home, and the provider is not called."""

from __future__ import annotations

import builtins
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import orjson
import pytest
import respx
import yaml
from starlette.testclient import TestClient

from hermes_api.app import create_app
from hermes_api.settings import Settings

from .conftest import HermesHome, LiveServer, completion, raw_http

USER = [{"role": "user", "content": "hi"}]
ENVELOPE = {"message", "type", "param", "code"}


def expect(r, status: int, code: str, param: str | None = None) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == ENVELOPE and error["code"] == code, error
    if param is not None:
        assert error["param"] == param


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', id="invalid-utf8"),
        pytest.param(b'{"messages": "\xed\xa0\x80"}', id="utf8-surrogate"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="nested-100k"),
        pytest.param(b'{"a": ' * 2000 + b"1" + b"}" * 2000, id="nested-objects-2k"),
        pytest.param(b"", id="empty"),
        pytest.param(b"null", id="null"),
        pytest.param(b'"just a string"', id="string"),
        pytest.param(b'{"messages": []} trailing', id="trailing-garbage"),
        pytest.param(b'{"messages": NaN}', id="nan"),
        pytest.param(b"\x00\x01\x02", id="binary"),
    ],
)
def test_broken_bodies_are_400_invalid_json(client: TestClient, upstream: respx.MockRouter, body: bytes) -> None:
    route = upstream.post("/chat/completions").respond(json=completion())
    expect(client.post("/v1/chat/completions", content=body), 400, "invalid_json")
    assert not route.called


def test_nesting_orjson_reads_but_cannot_write_is_400(client: TestClient, upstream: respx.MockRouter) -> None:
    """Valid JSON 300 levels deep parses (orjson reads 1024) but cannot be sent on
    (orjson writes 254): a 400, not a 500."""
    route = upstream.post("/chat/completions").respond(json=completion())
    body = b'{"messages": [{"role": "user", "content": "hi"}], "extra": ' + b"[" * 300 + b"]" * 300 + b"}"
    for stream in (b"false", b"true"):
        r = client.post("/v1/chat/completions", content=body[:-1] + b', "stream": ' + stream + b"}")
        expect(r, 400, "invalid_json")
    assert not route.called


def test_huge_strings_pass_through(client: TestClient, upstream: respx.MockRouter) -> None:
    route = upstream.post("/chat/completions").respond(json=completion())
    huge = "é" * 3_000_000  # 6 MB of UTF-8, under the 10 MiB default limit
    r = client.post("/v1/chat/completions", json={"model": "alpha", "messages": [{"role": "user", "content": huge}]})
    assert r.status_code == 200
    assert orjson.loads(route.calls.last.request.content)["messages"][-1]["content"] == huge
    r = client.post("/v1/chat/completions", json={"model": "a" * 5_000_000, "messages": USER})
    expect(r, 404, "model_not_found", "model")
    assert "a" * 100 not in r.json()["error"]["message"], "the name is shortened in the message"


WRONG_TYPES = [
    ("model", 5, "model"),
    ("model", ["alpha"], "model"),
    ("model", {"id": "alpha"}, "model"),
    ("model", True, "model"),
    ("messages", None, "messages"),
    ("messages", "hi", "messages"),
    ("messages", {"role": "user"}, "messages"),
    ("messages", [], "messages"),
    ("messages", [1], "messages[0]"),
    ("messages", ["hi"], "messages[0]"),
    ("messages", [{}], "messages[0]"),
    ("messages", [{"role": 1}], "messages[0]"),
    ("messages", [{"role": None, "content": "x"}], "messages[0]"),
    ("messages", [{"role": "user", "content": 5}], "messages[0].content"),
    ("messages", [{"role": "user", "content": {"text": "x"}}], "messages[0].content"),
    ("messages", [{"role": "user", "content": ["x"]}], "messages[0].content"),
    ("messages", [{"role": "system", "content": [1, {"type": "text", "text": "x"}]}], "messages[0].content"),
    ("stream", "yes", "stream"),
    ("stream", 1, "stream"),
    ("stream", {}, "stream"),
    ("stream_options", "usage", "stream_options"),
    ("stream_options", [], "stream_options"),
    ("stream_options", {"include_usage": "yes"}, "stream_options.include_usage"),
    ("stream_options", {"include_usage": 1}, "stream_options.include_usage"),
]


@pytest.mark.parametrize(("field", "value", "param"), WRONG_TYPES, ids=[f"{f}={v!r}"[:40] for f, v, _ in WRONG_TYPES])
def test_wrong_types_for_every_field_read(client: TestClient, upstream: respx.MockRouter, field, value, param) -> None:
    route = upstream.post("/chat/completions").respond(json=completion())
    body = {"model": "alpha", "messages": USER, field: value}
    expect(client.post("/v1/chat/completions", json=body), 400, "invalid_value", param)
    assert not route.called


HOSTILE_NAMES = [
    "..",
    "../alpha",
    "alpha/../beta",
    "./alpha",
    "/etc/passwd",
    "..%2falpha",
    "%2e%2e",
    "alpha%00",
    "ALPHA",
    "alpha ",
    " alpha",
    "alpha\n",
    "alpha\x00",
    "al\u0000pha",
    "alpha\u202e",
    "ａｌｐｈａ",  # fullwidth
    "outside",
    "profiles/alpha",
    "a" * 65,
]


@pytest.fixture
def guarded(home: HermesHome, make_app) -> TestClient:
    """A valid profile directory outside the home's profiles/ that no name may reach."""
    home.add("outside")  # written to <home>/profiles/outside ...
    (home.root / "profiles" / "outside").rename(home.root.parent / "outside")  # ... then moved out
    with TestClient(make_app(), raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=[repr(n)[:30] for n in HOSTILE_NAMES])
def test_hostile_model_names_are_404(guarded: TestClient, upstream: respx.MockRouter, name: str) -> None:
    route = upstream.post("/chat/completions").respond(json=completion())
    expect(guarded.post("/v1/chat/completions", json={"model": name, "messages": USER}), 404, "model_not_found")
    assert not route.called


# A newline cannot be sent in a header at all (test_raw_control_characters_in_headers...).
HEADER_NAMES = [n for n in HOSTILE_NAMES if "\n" not in n]


@pytest.mark.parametrize("name", HEADER_NAMES, ids=[repr(n)[:30] for n in HEADER_NAMES])
def test_hostile_header_names_are_400_or_404(guarded: TestClient, upstream: respx.MockRouter, name: str) -> None:
    route = upstream.post("/chat/completions").respond(json=completion())
    value = name.encode("utf-8")
    r = guarded.post("/v1/chat/completions", headers=[(b"x-hermes-profile", value)], json={"messages": USER})
    assert r.status_code in (400, 404), r.text
    assert r.json()["error"]["code"] in ("invalid_header", "model_not_found")
    assert not route.called


@pytest.fixture(scope="module")
def guarded_live(tmp_path_factory) -> Iterator[LiveServer]:
    """``guarded`` on a real socket, for bytes an HTTP client would refuse or rewrite."""
    home = HermesHome(tmp_path_factory.mktemp("guarded") / "hermes")
    for name in ("default", "alpha", "beta", "outside"):
        home.add(name)
    (home.root / "profiles" / "outside").rename(home.root.parent / "outside")
    config = home.root.parent / "hermes-api.yaml"
    config.write_text(yaml.safe_dump({"hermes_home": str(home.root), "expose": "*"}))
    with LiveServer(create_app(Settings.load(config, {}), environ={})) as server:
        yield server


def raw_get(port: int, path: bytes, headers: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    return raw_http(port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + headers + b"\r\n")


@pytest.mark.parametrize(
    "path",
    [
        b"/p/../v1/models",
        b"/p/%2e%2e/v1/models",
        b"/p/alpha%2f..%2fbeta/v1/models",
        b"/p/alpha%00/v1/models",
        b"/p/alpha%0a/v1/models",
        b"/p/ALPHA/v1/models",
        b"/p/outside/v1/models",
        b"/p/%2e%2e%2foutside/v1/models",
        b"/p/../outside/v1/models",
        b"/p/alpha/../beta/v1/models",
        b"/p//v1/models",
        b"/v1/models/..%2Foutside",
        b"/v1/models/../outside",
        b"/v1/models/%2e%2e",
        b"/v1/models/alpha%0a",
        b"/v1/models/alpha%0d",
        b"/v1/models/alpha%00",
        b"/p/alpha/v1/models/alpha%0a",
    ],
)
def test_hostile_prefixes_and_model_paths(guarded_live, path: bytes) -> None:
    status, headers, body = raw_get(guarded_live.port, path)
    assert status == 404, (path, body)
    assert orjson.loads(body)["error"]["code"] in ("model_not_found", "not_found")
    assert "x-hermes-profile" not in headers


@pytest.mark.parametrize("header", ["x-hermes-profile", "x-hermes-chat-id", "x-hermes-user-id", "x-hermes-thread-id"])
@pytest.mark.parametrize(
    "value",
    [b"a\x01b", b"a\x7fb", b"\xc2\x85", b"\xff\xfe", b"x" * 300, b"\x1b[31mred", b"\xe2\x80\xae"],
    ids=["ctl-01", "del", "c1-nel", "not-utf8", "too-long", "ansi", "rtl-override"],
)
def test_routing_header_values_are_checked(guarded_live, header: str, value: bytes) -> None:
    status, _, body = raw_get(guarded_live.port, b"/v1/models", header.encode() + b": " + value + b"\r\n")
    if value == b"\xe2\x80\xae":  # printable as far as the rule goes: just not a profile (or a route)
        assert status in (200, 404) and (status == 200 or orjson.loads(body)["error"]["code"] == "model_not_found")
        return
    assert status == 400, (value, body)
    error = orjson.loads(body)["error"]
    # ASCII control characters never get past the HTTP parser; the rest is the server's rule.
    assert (error["code"], error["param"]) in (("invalid_header", header), ("invalid_http", None)), error


def test_raw_control_characters_in_headers_never_reach_a_profile(guarded_live) -> None:
    """Bytes httpx would not send: uvicorn or the server refuses them."""
    body = b'{"messages": [{"role": "user", "content": "hi"}]}'
    for value in (b"alpha\x00", b"al\rpha", b"alpha\x0b", b"\x00"):
        status, _, answer = raw_http(
            guarded_live.port,
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nX-Hermes-Profile: " + value + b"\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body,
        )
        assert status == 400, (value, answer[:300])
        assert orjson.loads(answer)["error"]["code"] in ("invalid_http", "invalid_header")


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def test_no_file_outside_the_home_is_ever_read(home: HermesHome, make_app, monkeypatch, tmp_path: Path) -> None:
    """Whatever is asked, the server stats and opens nothing outside the Hermes home
    (with ``expose: "*"``, unknown names looking at the listing, and the sweep
    re-checking profiles continually, so it does look at files),
    and creates no file but in the state_dir (response ids are looked up, never paths)."""
    home.add("outside")
    (home.root / "profiles" / "outside").rename(home.root.parent / "outside")
    guarded = TestClient(make_app(expose="*", reload_interval=0.0001, default_profile="alpha"))
    guarded.__enter__()
    touched: list[str] = []

    def spy(real):
        def wrapper(path, *args, **kwargs):
            if isinstance(path, (str, Path)):
                touched.append(os.fspath(path))
            return real(path, *args, **kwargs)

        return wrapper

    state = tmp_path / "state"
    before = files_under(tmp_path) - files_under(state)
    monkeypatch.setattr(os, "stat", spy(os.stat))
    monkeypatch.setattr(builtins, "open", spy(builtins.open))
    monkeypatch.setattr(os, "scandir", spy(os.scandir))
    for name in HOSTILE_NAMES:
        guarded.post("/v1/chat/completions", json={"model": name, "messages": USER})
        guarded.get(f"/p/{quote(name, safe='')}/v1/models")
        guarded.get(f"/v1/models/{quote(name, safe='')}")
        guarded.post("/v1/responses", json={"model": name, "input": "hi"})
        guarded.get(f"/p/{quote(name, safe='')}/v1/responses/resp_x")
    for hostile in [*hostile_ids("resp_" + "0" * 32), "../../outside/SOUL.md", "../state/responses.db"]:
        for path in (
            f"/v1/responses/{quote(hostile, safe='')}",
            f"/v1/responses/{quote(hostile, safe='')}/input_items",
        ):
            assert guarded.get(path).status_code == 404
        assert guarded.delete(f"/v1/responses/{quote(hostile, safe='')}").status_code == 404
        r = guarded.post("/v1/responses", json={"input": "hi", "previous_response_id": hostile})
        assert r.status_code == 404
    monkeypatch.undo()
    guarded.__exit__(None, None, None)
    root = home.root.resolve()
    assert touched, "the spies saw the server look at its profiles"
    resolved = [Path(p).resolve() for p in touched]
    # Other tests' directories are other servers' (a module fixture's sweep goes on meanwhile).
    others, ours = tmp_path.parent.resolve(), tmp_path.resolve()
    resolved = [p for p in resolved if ours in p.parents or others not in p.parents]
    outside = [p for p in resolved if p != root and root not in p.parents and "site-packages" not in p.parts]
    assert outside == []
    assert (state / "responses.db").exists()
    assert files_under(tmp_path) - files_under(state) == before, "no file was made outside the state_dir"


# -- the Responses API ------------------------------------------------------------------

TEXT = [{"type": "input_text", "text": "x"}]
RESPONSES_WRONG_TYPES = [
    ("input", None, "input"),
    ("input", 5, "input"),
    ("input", True, "input"),
    ("input", {"role": "user", "content": "x"}, "input"),
    ("input", [], "input"),
    ("input", [5], "input[0]"),
    ("input", ["hi"], "input[0]"),
    ("input", [None], "input[0]"),
    ("input", [[{"role": "user", "content": "x"}]], "input[0]"),
    ("input", [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}], "input[0]"),
    ("input", [{"type": None, "role": "user", "content": "x"}], "input[0]"),
    ("input", [{"type": 5, "role": "user", "content": "x"}], "input[0]"),
    ("input", [{"type": "input_text", "text": "x"}], "input[0]"),
    ("input", [{"content": "x"}], "input[0].role"),
    ("input", [{"role": "bot", "content": "x"}], "input[0].role"),
    ("input", [{"role": "USER", "content": "x"}], "input[0].role"),
    ("input", [{"role": 5, "content": "x"}], "input[0].role"),
    ("input", [{"role": ["user"], "content": "x"}], "input[0].role"),
    ("input", [{"role": "user"}], "input[0].content"),
    ("input", [{"role": "user", "content": None}], "input[0].content"),
    ("input", [{"role": "user", "content": 5}], "input[0].content"),
    ("input", [{"role": "user", "content": {"type": "input_text", "text": "x"}}], "input[0].content"),
    ("input", [{"role": "user", "content": [5]}], "input[0].content[0]"),
    ("input", [{"role": "user", "content": ["x"]}], "input[0].content[0]"),
    ("input", [{"role": "user", "content": [{"text": "x"}]}], "input[0].content[0]"),
    ("input", [{"role": "user", "content": [{"type": "input_text"}]}], "input[0].content[0]"),
    ("input", [{"role": "user", "content": [{"type": "input_text", "text": 5}]}], "input[0].content[0]"),
    ("input", [{"role": "user", "content": [{"type": "input_text", "text": None}]}], "input[0].content[0]"),
    ("input", [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}], "input[0].content[0]"),
    ("input", [{"role": "user", "content": "ok"}, {"role": "user", "content": [*TEXT, {"type": "input_file"}]}],
     "input[1].content[1]"),
    ("instructions", 5, "instructions"),
    ("instructions", True, "instructions"),
    ("instructions", ["be brief"], "instructions"),
    ("instructions", {"text": "be brief"}, "instructions"),
    ("previous_response_id", 5, "previous_response_id"),
    ("previous_response_id", True, "previous_response_id"),
    ("previous_response_id", ["resp_x"], "previous_response_id"),
    ("previous_response_id", {"id": "resp_x"}, "previous_response_id"),
    ("store", "yes", "store"),
    ("store", "false", "store"),
    ("store", 0, "store"),
    ("store", [], "store"),
    ("stream", "yes", "stream"),
    ("stream", 1, "stream"),
    ("stream", {}, "stream"),
    ("max_output_tokens", "5", "max_output_tokens"),
    ("max_output_tokens", 1.5, "max_output_tokens"),
    ("max_output_tokens", 0, "max_output_tokens"),
    ("max_output_tokens", -1, "max_output_tokens"),
    ("max_output_tokens", True, "max_output_tokens"),
    ("max_output_tokens", [5], "max_output_tokens"),
    ("temperature", "1", "temperature"),
    ("temperature", 2.5, "temperature"),
    ("temperature", -0.1, "temperature"),
    ("temperature", True, "temperature"),
    ("temperature", [1], "temperature"),
    ("top_p", "0.5", "top_p"),
    ("top_p", 1.5, "top_p"),
    ("top_p", -1, "top_p"),
    ("top_p", False, "top_p"),
    ("metadata", "x", "metadata"),
    ("metadata", ["a", "b"], "metadata"),
    ("metadata", 5, "metadata"),
    ("metadata", {"a": 1}, "metadata"),
    ("metadata", {"a": None}, "metadata"),
    ("metadata", {"a": {"b": "c"}}, "metadata"),
    ("metadata", {"k" * 65: "v"}, "metadata"),
    ("metadata", {"a": "v" * 513}, "metadata"),
    ("metadata", {f"k{i}": "v" for i in range(17)}, "metadata"),
    ("text", "json", "text"),
    ("text", ["json"], "text"),
    ("text", 5, "text"),
    ("text", {"format": "json_object"}, "text.format"),
    ("text", {"format": None}, "text.format"),
    ("text", {"format": {}}, "text.format"),
    ("text", {"format": {"type": "xml"}}, "text.format"),
    ("text", {"format": {"type": "json_schema"}}, "text.format"),
    ("text", {"format": {"type": "json_schema", "name": 5, "schema": {}}}, "text.format"),
    ("text", {"format": {"type": "json_schema", "name": "n", "schema": "{}"}}, "text.format"),
    ("background", True, "background"),
    ("conversation", "conv_1", "conversation"),
    ("prompt", {"id": "pmpt_1"}, "prompt"),
    ("input", [{"type": "function_call", "call_id": 5, "name": "f", "arguments": "{}"}], "input[0]"),
    ("input", [{"type": "function_call", "call_id": "c", "name": None, "arguments": "{}"}], "input[0]"),
    ("input", [{"type": "function_call", "call_id": "c", "name": "f", "arguments": None}], "input[0]"),
    ("input", [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}], "input[0]"),
    ("input", [{"type": "function_call_output", "call_id": "c", "output": "x"}], "input[0]"),
    ("input", [{"type": "function_call_output", "output": "x"}], "input[0]"),
    ("input", [{"type": "function_call_output", "call_id": "c", "output": None}], "input[0]"),
    ("input", [{"type": "function_call_output", "call_id": "c", "output": ["x"]}], "input[0]"),
    ("input", [{"type": "item_reference"}], "input[0]"),
    ("input", [{"type": "item_reference", "id": 5}], "input[0]"),
    ("input", [{"type": "item_reference", "id": "msg_unknown"}], "input[0]"),
    ("tools", "lookup", "tools"),
    ("tools", {"type": "function", "name": "f"}, "tools"),
    ("tools", [5], "tools[0]"),
    ("tools", [{"name": "f"}], "tools[0]"),
    ("tools", [{"type": 5, "name": "f"}], "tools[0]"),
    ("tools", [{"type": "function"}], "tools[0].name"),
    ("tools", [{"type": "function", "name": 5}], "tools[0].name"),
    ("tools", [{"type": "function", "name": "a" * 65}], "tools[0].name"),
    ("tools", [{"type": "function", "name": "f\n"}], "tools[0].name"),
    ("tools", [{"type": "function", "name": "f", "description": 5}], "tools[0]"),
    ("tools", [{"type": "function", "name": "f", "parameters": []}], "tools[0]"),
    ("tools", [{"type": "function", "name": "f", "strict": "yes"}], "tools[0]"),
    ("tool_choice", 5, "tool_choice"),
    ("tool_choice", "any", "tool_choice"),
    ("tool_choice", "required", "tool_choice"),
    ("tool_choice", {"type": "function"}, "tool_choice"),
    ("tool_choice", {"type": "function", "name": "f"}, "tool_choice"),
    ("tool_choice", {"type": "allowed_tools", "mode": "maybe", "tools": []}, "tool_choice"),
    ("tool_choice", {"name": "f"}, "tool_choice"),
    ("parallel_tool_calls", "true", "parallel_tool_calls"),
    ("parallel_tool_calls", 1, "parallel_tool_calls"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("field", "value", "param"),
    RESPONSES_WRONG_TYPES,
    ids=[f"{f}={v!r}"[:50] for f, v, _ in RESPONSES_WRONG_TYPES],
)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_responses_wrong_types_for_every_field_read(
    client: TestClient, upstream: respx.MockRouter, field, value, param, stream: bool
) -> None:
    route = upstream.post("/chat/completions").respond(json=completion())
    body = {"model": "alpha", "input": "hi", "stream": stream, field: value}
    expect(client.post("/v1/responses", json=body), 400, "invalid_value", param)
    assert not route.called


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("where", ["text", "text.format", "forwarded", "tools", "reasoning", "tool-output"])
def test_responses_nesting_orjson_cannot_write_is_400(
    client: TestClient, upstream: respx.MockRouter, stream: bool, where: str
) -> None:
    """A structure 300 levels deep in a field echoed in the response object (``text``,
    a tool's ``parameters``), stored as sent (input items) or forwarded to the provider:
    a 400 before anything is sent upstream or stored, never a 500 or a stream cut after
    its first byte."""
    route = upstream.post("/chat/completions").respond(json=completion())
    deep = b"[" * 300 + b"]" * 300
    extra = {
        "text": b'"text": {"format": {"type": "text"}, "x": ' + deep + b"}",
        "text.format": b'"text": {"format": {"type": "json_object", "x": ' + deep + b"}}",
        "forwarded": b'"extra": ' + deep,
        "tools": b'"tools": [{"type": "function", "name": "f", "parameters": {"x": ' + deep + b"}}]",
        "reasoning": b'"input": [{"type": "reasoning", "summary": ' + deep + b'}, "hi"]',
        "tool-output": b'"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},'
        b' {"type": "function_call_output", "call_id": "c", "output": [{"type": "input_text", "text": "x", "y": '
        + deep
        + b"}]}]",
    }[where]
    body = b'{"model": "alpha", "input": "hi", "stream": ' + (b"true" if stream else b"false") + b", " + extra + b"}"
    expect(client.post("/v1/responses", content=body), 400, "invalid_json")
    assert not route.called


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"input": "\xff\xfe"}', id="invalid-utf8"),
        pytest.param(b'{"input": "hi", "previous_response_id": "resp_\xff"}', id="invalid-utf8-id"),
        pytest.param(b'{"input": "hi", "previous_response_id": "\\ud800"}', id="lone-surrogate-id"),
        pytest.param(b'{"input": [{"role": "user", "content": "\xed\xa0\x80"}]}', id="utf8-surrogate"),
        pytest.param(b'{"input": "hi", "temperature": 1e400}', id="float-overflow"),
        pytest.param(b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", id="nested-100k"),
        pytest.param(b'{"input": "hi"} trailing', id="trailing-garbage"),
        pytest.param(b'["input", "hi"]', id="array"),
    ],
)
def test_responses_broken_bodies_are_400_invalid_json(
    client: TestClient, upstream: respx.MockRouter, body: bytes
) -> None:
    route = upstream.post("/chat/completions").respond(json=completion())
    expect(client.post("/v1/responses", content=body), 400, "invalid_json")
    assert not route.called


def test_responses_huge_numbers_are_400(client: TestClient, upstream: respx.MockRouter) -> None:
    """orjson reads an integer past 64 bits as a float: not an integer."""
    route = upstream.post("/chat/completions").respond(json=completion())
    body = b'{"input": "hi", "max_output_tokens": 99999999999999999999999}'
    expect(client.post("/v1/responses", content=body), 400, "invalid_value", "max_output_tokens")
    assert not route.called


@pytest.fixture
def stored_id(guarded: TestClient, upstream: respx.MockRouter) -> str:
    """A response stored by ``guarded`` (profile alpha) before the hostile requests."""
    upstream.post("/chat/completions").respond(json=completion("stored"))
    r = guarded.post("/v1/responses", json={"model": "alpha", "input": [*USER, {"role": "user", "content": "two"}]})
    assert r.status_code == 200
    return r.json()["id"]


LIST_PARAMS = [
    ("limit=0", "limit"),
    ("limit=101", "limit"),
    ("limit=-1", "limit"),
    ("limit=1.5", "limit"),
    ("limit=1e2", "limit"),
    ("limit=", "limit"),
    ("limit=x", "limit"),
    ("limit=%C2%B2", "limit"),  # "²": str.isdigit() says yes, int() says no
    ("limit=%EF%BC%91", "limit"),  # fullwidth "１"
    ("limit=%00", "limit"),
    ("limit=" + "9" * 5000, "limit"),
    ("order=up", "order"),
    ("order=ASC", "order"),
    ("order=", "order"),
    ("order=asc%00", "order"),
    ("after=nope", "after"),
    ("after=%00", "after"),
    ("after=..%2F..", "after"),
    ("after=" + "m" * 5000, "after"),
    ("after=%ff", "after"),
]


@pytest.mark.parametrize(("query", "param"), LIST_PARAMS, ids=[q[:30] for q, _ in LIST_PARAMS])
def test_input_items_list_params_are_checked(guarded: TestClient, stored_id: str, query: str, param: str) -> None:
    expect(guarded.get(f"/v1/responses/{stored_id}/input_items?{query}"), 400, "invalid_value", param)
    r = guarded.get(f"/v1/responses/{stored_id}/input_items?limit=1&order=asc")
    assert r.status_code == 200 and len(r.json()["data"]) == 1 and r.json()["has_more"]


# Response ids a client may send; "REAL" is replaced by a stored response's id, so near
# misses of a real id are tried too.
HOSTILE_IDS = [
    "..",
    "../REAL",
    "REAL/..",
    "./REAL",
    "/etc/passwd",
    "..%2fREAL",
    "%2e%2e",
    "REAL%00",
    "REAL%0A",
    "REAL\n",
    "REAL\r\n",
    "REAL\x00",
    "REAL\x1b[31m",
    "\x00",
    "REAL ",
    " REAL",
    "REAL\u202e",
    "REAL.upper",
    "REAL*",
    "%",
    "_",
    "' OR '1'='1",
    "REAL' --",
    "resp_x%0A",
    "ｒｅｓｐ",  # fullwidth
    "r" * 5000,
]


def hostile_ids(real: str) -> list[str]:
    out = [i.replace("REAL", real) for i in HOSTILE_IDS]
    return [real.upper() if i == f"{real}.upper" else i for i in out]


@pytest.mark.parametrize("index", range(len(HOSTILE_IDS)), ids=[repr(i)[:30] for i in HOSTILE_IDS])
def test_hostile_response_ids_find_nothing(
    guarded: TestClient, upstream: respx.MockRouter, stored_id: str, index: int
) -> None:
    """In the path of GET/DELETE ``/v1/responses/{id}`` and ``/input_items``, and as
    ``previous_response_id``: a 404 (or, for a path that is not a route, the route's
    404/405), never the stored response, never the provider; the stored one survives."""
    route = upstream.post("/chat/completions").respond(json=completion())
    upstream.reset()  # forget the call that stored the response
    hostile = hostile_ids(stored_id)[index]
    quoted = quote(hostile, safe="")
    for method, path in (
        ("GET", f"/v1/responses/{quoted}"),
        ("GET", f"/v1/responses/{quoted}/input_items"),
        ("GET", f"/p/alpha/v1/responses/{quoted}"),
        ("DELETE", f"/v1/responses/{quoted}"),
    ):
        r = guarded.request(method, path)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"]["code"] in ("response_not_found", "not_found"), r.text
    r = guarded.post("/v1/responses", json={"model": "alpha", "input": "hi", "previous_response_id": hostile})
    expect(r, 404, "response_not_found", "previous_response_id")
    assert len(r.json()["error"]["message"]) < 200 and not any(c in r.json()["error"]["message"] for c in "\x00\n\r")
    assert not route.called
    assert guarded.get(f"/v1/responses/{stored_id}").json()["output"][0]["content"][0]["text"] == "stored"


@pytest.mark.parametrize(
    "path",
    [
        b"/v1/responses/\xff\xfe",
        b"/v1/responses/resp_\xc3\xa9",
        b"/v1/responses/%ff%fe",
        b"/v1/responses/%ff%fe/input_items",
        b"/v1/responses/resp_%c3%28",
        b"/v1/responses/..",
        b"/v1/responses/../models",
        b"/v1/responses/%2e%2e",
        b"/v1/responses/..%2f..%2f..%2fetc%2fpasswd",
        b"/v1/responses/%2e%2e/input_items",
        b"/v1/responses/resp_x%0A",
        b"/v1/responses/resp_x%0D%0A",
        b"/v1/responses/resp_x%00",
        b"/v1/responses/resp_x%0A/input_items",
        b"/v1/responses/resp_x/input_items%0A",
        b"/v1/responses/resp_x/input_items?limit=%C2%B2",
        b"/v1/responses/resp_x/input_items?after=%ff%00",
        b"/p/../v1/responses/resp_x",
        b"/p/%2e%2e/v1/responses/resp_x",
        b"/p/outside/v1/responses/resp_x",
        b"/v1/responses/" + b"r" * 5000,
        b"/v1/responses/" + b"r" * 70_000,
    ],
)
@pytest.mark.parametrize("method", [b"GET", b"DELETE"])
def test_raw_hostile_response_paths(guarded_live, path: bytes, method: bytes) -> None:
    """Bytes an HTTP client would refuse or rewrite (not UTF-8, not percent-encoded,
    ``..`` kept): a clean 4xx in the envelope from the parser or the server, no profile."""
    status, headers, body = raw_http(
        guarded_live.port, method + b" " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert 400 <= status < 500, (path, status, body[:200])
    assert set(orjson.loads(body)["error"]) == ENVELOPE
    assert "x-hermes-profile" not in headers
    assert httpx.get(f"http://127.0.0.1:{guarded_live.port}/health").status_code == 200
