"""A bug after the first byte still ends the stream the way clients expect (docs/contract.md §5):
chat with a ``server_error`` event and ``[DONE]``, Responses with ``response.failed``;
the details go to the log, never to the client."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

import httpx
import orjson
from starlette.testclient import TestClient

from hermes_api.app import create_app
from hermes_api.turns.direct import DirectTurns

USER = [{"role": "user", "content": "hi"}]


class BrokenTurns(DirectTurns):
    """One good chunk, then a bug (not an API error) in the middle of the stream."""

    @asynccontextmanager
    async def stream(self, turn):
        async def chunks():
            yield {"id": "c", "created": 1, "model": turn.profile.name,
                   "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]}  # fmt: skip
            raise RuntimeError("internal detail sk-must-not-leak")

        yield chunks()


def test_bugs_mid_stream_end_the_streams_properly(make_settings, upstream, caplog) -> None:
    app = create_app(make_settings(), environ={}, transport=httpx.MockTransport(upstream.async_handler),
                     turn_runner=BrokenTurns)  # fmt: skip
    with TestClient(app) as client, caplog.at_level(logging.ERROR, logger="hermes_api"):
        chat = client.post("/v1/chat/completions", json={"model": "alpha", "messages": USER, "stream": True})
        responses = client.post("/v1/responses", json={"model": "alpha", "input": "hi", "stream": True})
    assert chat.status_code == responses.status_code == 200
    datas = [line[6:] for line in chat.text.splitlines() if line.startswith("data: ")]
    assert orjson.loads(datas[0])["choices"][0]["delta"]["content"] == "Hel"
    assert orjson.loads(datas[-2])["error"]["code"] == "server_error" and datas[-1] == "[DONE]"
    events = [line[7:] for line in responses.text.splitlines() if line.startswith("event: ")]
    assert events[-1] == "response.failed" and "response.output_text.delta" in events
    last = orjson.loads([line[6:] for line in responses.text.splitlines() if line.startswith("data: ")][-1])
    assert last["response"]["status"] == "failed" and last["response"]["error"]["code"] == "server_error"
    assert "sk-must-not-leak" not in chat.text + responses.text
    assert sum("failed after the first byte" in r.getMessage() for r in caplog.records) == 2
