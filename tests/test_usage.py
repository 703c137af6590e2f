"""Usage records: one row per turn, with the provider's own token figures, and
``hermes-api usage``. Rows are read straight from the store's database, as an operator's
tools would; the TestClient returns once the app is done, row included."""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from hermes_api import cli
from hermes_api.app import create_app
from hermes_api.store import open_store

from .conftest import BrokenStream, FakeUpstream, HermesHome, chunks, completion, digest, sse_body

KEYS = [{"name": "team", "key_sha256": digest("key-team")}, {"name": "bot", "key_sha256": digest("key-bot")}]
TEAM = {"Authorization": "Bearer key-team"}
USER = [{"role": "user", "content": "hi"}]
HEADER = ["TURNS", "FAILED", "INPUT", "TOKENS", "OUTPUT", "TOKENS", "NO", "USAGE", "SECONDS"]  # after the group's
COLUMNS = (
    "key_name, profile, model, operation, stream, request_id, status, error, input_tokens, output_tokens, duration"
)


def usage_rows(state: Path) -> list[dict[str, Any]]:
    """The usage table as it is now (rows are written within ~100 ms of each answer,
    and at the latest when the server stops: ``wait_for_rows`` while it runs)."""
    db = sqlite3.connect(state / "responses.db")
    try:
        names = [c.strip() for c in COLUMNS.split(",")]
        return [dict(zip(names, row, strict=True)) for row in db.execute(f"SELECT {COLUMNS} FROM usage ORDER BY seq")]
    finally:
        db.close()


def body_for(operation: str, stream: bool) -> tuple[str, dict[str, Any]]:
    if operation == "create_response":
        return "/v1/responses", {"model": "alpha", "input": "hi", "stream": stream}
    return "/v1/chat/completions", {"model": "alpha", "messages": USER, "stream": stream}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("operation", ["create_chat_completion", "create_response"])
def test_every_kind_of_turn_records_the_providers_figures(make_app, upstream, tmp_path, operation, stream) -> None:
    route = upstream.post("/chat/completions")
    route.respond(content=sse_body(*chunks("a b", usage=True))) if stream else route.respond(json=completion())
    path, body = body_for(operation, stream)
    with TestClient(make_app(keys=KEYS)) as c:
        r = c.post(path, json=body, headers=TEAM)
    assert r.status_code == 200
    [row] = usage_rows(tmp_path / "state")
    tokens = (5, 2) if stream else (9, 3)
    assert row | {"duration": None} == {
        "key_name": "team",
        "profile": "alpha",
        "model": "model-alpha",
        "operation": operation,
        "stream": int(stream),
        "request_id": r.headers["x-request-id"],
        "status": 200,
        "error": None,
        "input_tokens": tokens[0],
        "output_tokens": tokens[1],
        "duration": None,
    }
    assert row["duration"] > 0


def test_a_chat_stream_asks_the_provider_for_usage_but_the_client_gets_it_only_if_asked(
    client, upstream, tmp_path
) -> None:
    route = upstream.post("/chat/completions").respond(content=sse_body(*chunks("a b", usage=True)))
    r = client.post("/v1/chat/completions", json={"model": "alpha", "messages": USER, "stream": True})
    assert orjson.loads(route.calls.last.request.content)["stream_options"] == {"include_usage": True}
    assert '"usage"' not in r.text
    [row] = wait_for_rows(tmp_path / "state", 1)
    assert (row["input_tokens"], row["output_tokens"]) == (5, 2)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_provider_that_sends_no_usage_leaves_the_tokens_unknown(client, upstream, tmp_path, stream) -> None:
    answer = completion()
    del answer["usage"]
    route = upstream.post("/chat/completions")
    route.respond(content=sse_body(*chunks("a b"))) if stream else route.respond(json=answer)
    assert client.post("/v1/responses", json={"model": "alpha", "input": "x", "stream": stream}).status_code == 200
    [row] = wait_for_rows(tmp_path / "state", 1)
    assert (row["status"], row["error"], row["input_tokens"], row["output_tokens"]) == (200, None, None, None)


@pytest.mark.parametrize(
    ("operation", "stream", "answer", "status", "code"),
    [
        pytest.param("create_chat_completion", False, httpx.Response(500), 502, "upstream_unavailable", id="chat-5xx"),
        pytest.param("create_response", True, httpx.Response(503), 502, "upstream_unavailable", id="responses-5xx"),
        pytest.param(
            "create_chat_completion",
            True,
            httpx.Response(200, stream=BrokenStream(sse_body(*chunks("a")[:2], done=False))),
            200,
            "upstream_unavailable",
            id="chat-reset-after-first-byte",
        ),
        pytest.param(
            "create_response",
            True,
            httpx.Response(200, content=sse_body(*chunks("a"), done=False)),
            200,
            "upstream_error",
            id="responses-cut-after-first-byte",
        ),
    ],
)
def test_a_failed_turn_is_recorded_with_its_status_and_code(
    client, upstream, tmp_path, operation, stream, answer, status, code
) -> None:
    upstream.post("/chat/completions").mock(return_value=answer)
    path, body = body_for(operation, stream)
    assert client.post(path, json=body).status_code == status
    [row] = wait_for_rows(tmp_path / "state", 1)
    assert (row["status"], row["error"], row["input_tokens"], row["key_name"]) == (status, code, None, "anonymous")


def test_a_refused_turn_is_recorded_and_one_that_never_reached_a_profile_is_not(client, tmp_path) -> None:
    assert client.post("/v1/chat/completions", json={"model": "alpha", "messages": "no"}).status_code == 400
    assert client.post("/v1/chat/completions", json={"model": "nobody", "messages": USER}).status_code == 404
    assert client.post("/v1/responses", content=b"{not json").status_code == 400
    rows = wait_for_rows(tmp_path / "state", 1)
    assert [(r["profile"], r["status"], r["error"]) for r in rows] == [("alpha", 400, "invalid_value")]


def test_usage_rows_are_ordered_by_their_ids_as_by_their_arrival(make_app, upstream, tmp_path) -> None:
    # Time-ordered ids keep the store's unique index on `id` growing at its end.
    upstream.post("/chat/completions").respond(json=completion())
    with TestClient(make_app()) as c:
        for _ in range(5):
            assert c.post("/v1/chat/completions", json={"model": "alpha", "messages": USER}).status_code == 200
    db = sqlite3.connect(tmp_path / "state" / "responses.db")
    try:
        ids = [row[0] for row in db.execute("SELECT id FROM usage ORDER BY created_at, seq")]
    finally:
        db.close()
    assert len(ids) == 5 == len(set(ids)) and ids == sorted(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_record_usage_false_records_nothing(make_app, upstream, tmp_path) -> None:
    upstream.post("/chat/completions").respond(json=completion())
    with TestClient(make_app(record_usage=False)) as c:
        assert c.post("/v1/chat/completions", json={"model": "alpha", "messages": USER}).status_code == 200
    assert usage_rows(tmp_path / "state") == []


def test_a_usage_write_that_fails_is_logged_and_the_answer_stands(make_settings, upstream, caplog) -> None:
    async def failing(settings):
        store = await open_store(settings)

        def refuse(db: object, groups: object) -> None:  # the commit of the usage rows fails
            raise sqlite3.OperationalError("disk I/O error")

        store._insert_rows = refuse
        return store

    upstream.post("/chat/completions").respond(json=completion("fine"))
    app = create_app(make_settings(), environ={}, transport=httpx.MockTransport(upstream.async_handler), store=failing)
    with caplog.at_level(logging.ERROR, logger="hermes_api"), TestClient(app) as c:
        r = c.post("/v1/chat/completions", json={"model": "alpha", "messages": USER})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "fine"
    assert f"could not record the usage of request {r.headers['x-request-id']}" in caplog.text


def test_usage_command_prints_a_table_by_key_profile_and_day(make_app, upstream, tmp_path, capsys) -> None:
    upstream.post("/chat/completions").respond(json=completion())
    with TestClient(make_app(keys=KEYS)) as c:
        for key, model in [("key-team", "alpha"), ("key-team", "beta"), ("key-bot", "alpha")]:
            c.post(
                "/v1/chat/completions",
                json={"model": model, "messages": USER},
                headers={"Authorization": f"Bearer {key}"},
            )
    upstream.post("/chat/completions").respond(500)
    with TestClient(make_app(keys=KEYS)) as c:
        c.post(
            "/v1/chat/completions",
            json={"model": "beta", "messages": USER},
            headers={"Authorization": "Bearer key-bot"},
        )
    config = ["--config", str(tmp_path / "hermes-api.yaml")]
    assert cli.main(["usage", *config], {}) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert lines[0] == ["KEY", *HEADER]
    assert [line[:7] for line in lines[1:]] == [
        ["bot", "2", "1", "9", "3", "1", lines[1][6]],
        ["team", "2", "0", "18", "6", "0", lines[2][6]],
        ["TOTAL", "4", "1", "27", "9", "1", lines[3][6]],
    ]
    assert cli.main(["usage", *config, "--by", "profile", "--since", "1h"], {}) == 0
    assert [line.split()[:2] for line in capsys.readouterr().out.splitlines()[1:]] == [
        ["alpha", "2"],
        ["beta", "2"],
        ["TOTAL", "4"],
    ]
    assert cli.main(["usage", *config, "--by", "day", "--since", "2999-01-01"], {}) == 0
    assert capsys.readouterr().out.split() == ["DAY", *HEADER]  # nothing since then: the header alone
    with pytest.raises(SystemExit):
        cli.main(["usage", *config, "--since", "yesterday"], {})
    assert "is not like 24h, 7d or 2025-06-01" in capsys.readouterr().err


def test_since_reads_durations_and_dates() -> None:
    now = 1_700_000_000.0
    assert cli.since("90m", now) == now - 5400
    assert cli.since("7d", now) == now - 7 * 86400
    assert cli.since("2023-11-14") == 1_699_920_000.0
    assert cli.since("2023-11-14T01:00:00+01:00") == 1_699_920_000.0


# -- a live server under a mixed load ----------------------------------------------------


def counting_upstream(reported: list[tuple[int, int]]) -> Starlette:
    """A provider whose usage figures are random, and which sends none for a third of
    the turns; ``reported`` gets every (prompt, completion) pair it did send."""

    async def chat(request: Request):
        body = orjson.loads(await request.body())
        usage = None
        if random.random() < 2 / 3:
            usage = {"prompt_tokens": random.randint(1, 500), "completion_tokens": random.randint(1, 500)}
            reported.append((usage["prompt_tokens"], usage["completion_tokens"]))
        await asyncio.sleep(random.uniform(0, 0.01))
        base = {"id": "c", "created": 1, "model": body["model"]}
        if not body.get("stream"):
            message = {"role": "assistant", "content": "ok"}
            answer = {**base, "object": "chat.completion", "choices": [{"index": 0, "message": message}]}
            return JSONResponse(answer | ({"usage": usage} if usage else {}))
        assert body["stream_options"]["include_usage"] is True

        async def events() -> AsyncIterator[bytes]:
            delta = {"index": 0, "delta": {"content": "ok"}, "finish_reason": "stop"}
            yield b"data: " + orjson.dumps({**base, "object": "chat.completion.chunk", "choices": [delta]}) + b"\n\n"
            if usage:
                last = {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
                yield b"data: " + orjson.dumps(last) + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def wait_for_rows(state: Path, count: int) -> list[dict[str, Any]]:
    """The rows, once ``count`` are there (a live server writes each after its answer)."""
    deadline = time.monotonic() + 10
    while len(rows := usage_rows(state)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return rows


def test_token_totals_equal_the_providers_over_a_mixed_load(make_settings, home: HermesHome, live, tmp_path) -> None:
    random.seed(7)
    reported: list[tuple[int, int]] = []
    provider = live(counting_upstream(reported))
    for name in ("alpha", "beta"):
        home.add(name, model={"default": f"m-{name}", "provider": "custom", "base_url": provider.url + "/v1"})
    server = live(create_app(make_settings(keys=KEYS), environ={}))
    sent = 240

    async def one(client: httpx.AsyncClient, i: int) -> None:
        path, body = body_for(random.choice(["create_chat_completion", "create_response"]), i % 2 == 0)
        body["model"] = random.choice(["alpha", "beta"])
        key = random.choice(["key-team", "key-bot"])
        r = await client.post(path, json=body, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text

    async def run_all() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            await asyncio.gather(*(one(client, i) for i in range(sent)))

    asyncio.run(run_all())
    rows = wait_for_rows(tmp_path / "state", sent)
    assert len(rows) == sent and {r["status"] for r in rows} == {200} and {r["error"] for r in rows} == {None}
    known = [r for r in rows if r["input_tokens"] is not None]
    assert len(known) == len(reported)
    assert sum(r["input_tokens"] for r in known) == sum(p for p, _ in reported)
    assert sum(r["output_tokens"] for r in known) == sum(c for _, c in reported)
    assert all(r["output_tokens"] is None for r in rows if r["input_tokens"] is None)
    print(f"\n{sent} turns, {len(reported)} with usage: {sum(p + c for p, c in reported)} tokens, all recorded")


def test_a_stream_the_client_leaves_is_recorded_as_disconnected(
    fake_upstream: FakeUpstream, home: HermesHome, make_settings, live, tmp_path
) -> None:
    home.add("forever", model={"default": "m", "provider": "custom", "base_url": fake_upstream.base_url("forever")})
    server = live(create_app(make_settings(expose=["forever"], default_profile="forever"), environ={}))
    body = {"messages": [{"role": "user", "content": "usage-gone"}], "stream": True}
    with httpx.Client(base_url=server.url, timeout=10) as client:
        with client.stream("POST", "/v1/chat/completions", json=body) as r:
            next(r.iter_bytes())
    [row] = wait_for_rows(tmp_path / "state", 1)
    assert (row["status"], row["error"], row["stream"]) == (200, "client_disconnected", 1)


@pytest.mark.parametrize("where", ["finish chunk", "every chunk"])
def test_a_stream_s_usage_is_its_last_chunk_s_wherever_the_provider_puts_it(client, upstream, tmp_path, where) -> None:
    """Providers that put the usage on the chunk that finishes the answer (no chunk of its
    own), or a running total on every chunk: the row has the last chunk's figures."""
    parts = chunks("a b c")
    for n, part in enumerate(parts, start=1):
        if where == "every chunk" or n == len(parts):
            part["usage"] = {"prompt_tokens": 11, "completion_tokens": n, "total_tokens": 11 + n}
    upstream.post("/chat/completions").respond(content=sse_body(*parts))
    r = client.post("/v1/chat/completions", json={"model": "alpha", "messages": USER, "stream": True})
    assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
    [row] = wait_for_rows(tmp_path / "state", 1)
    assert (row["input_tokens"], row["output_tokens"]) == (11, len(parts))
