"""Upstream faults against a real misbehaving provider process (``fakeupstream.py``).

hermes-api runs under uvicorn with its real aiohttp pool. Every fault gives exactly the
docs/contract.md §5 error: JSON with its status before the first byte, or
``data: {"error": ...}`` then ``data: [DONE]`` and a closed body after it (for the
Responses API, a last ``response.failed`` event); and the server goes on serving (a
normal request succeeds after each one).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest
import yaml

from hermes_api.app import create_app
from hermes_api.settings import Settings
from hermes_api.store import open_store

from .conftest import FakeUpstream, HermesHome, LiveServer

ENVELOPE = {"message", "type", "param", "code"}
BEHAVIOURS = [
    "ok",
    "refused",
    "blackhole",
    "hang",
    "status-500",
    "status-503",
    "status-429",
    "status-401",
    "status-403",
    "status-404",
    "status-405",
    "notjson",
    "cut",
    "reset",
    "stall",
    "slow-2500",
    "deep",
]
# Server-wide; "patient" and "ok" have their own, longer ones (per_profile), so a loaded
# machine cannot turn their answers into timeouts.
READ_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def server(fake_upstream: FakeUpstream, tmp_path_factory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("faults")
    home = HermesHome(root / "hermes")
    for behaviour in BEHAVIOURS:
        home.add(
            behaviour,
            model={"default": f"m-{behaviour}", "provider": "custom", "base_url": fake_upstream.base_url(behaviour)},
        )
    home.add("patient", model={"default": "m", "provider": "custom", "base_url": fake_upstream.base_url("slow-2500")})
    config = root / "hermes-api.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "hermes_home": str(home.root),
                "expose": "*",
                "default_profile": "ok",
                "timeouts": {"connect": READ_TIMEOUT, "read": READ_TIMEOUT},
                "per_profile": {
                    "patient": {"timeouts": {"read": 10}},
                    "ok": {"timeouts": {"connect": 5, "read": 10}},
                },
            }
        )
    )
    with LiveServer(create_app(Settings.load(config, {}), environ={})) as live:
        yield live


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=20) as c:
        yield c


def chat(client: httpx.Client, profile: str, stream: bool, tag: str = "hi") -> httpx.Response:
    return client.post(
        "/v1/chat/completions",
        json={"model": profile, "messages": [{"role": "user", "content": tag}], "stream": stream},
    )


def events(response: httpx.Response) -> list[Any]:
    """The ``data:`` payloads of an SSE body, ``[DONE]`` as a string; comments dropped."""
    out = []
    for block in response.text.split("\n\n"):
        data = [line[6:] for line in block.splitlines() if line.startswith("data: ")]
        if data:
            payload = "\n".join(data)
            out.append(payload if payload == "[DONE]" else orjson.loads(payload))
    return out


def assert_serving(client: httpx.Client) -> None:
    """A normal request, streamed and not, still succeeds."""
    r = chat(client, "ok", False, "after")
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "ok after"
    streamed = events(chat(client, "ok", True, "after"))
    assert streamed[-1] == "[DONE]" and "error" not in streamed[-2]


# (profile, stream) -> (status before the first byte, or None for an in-stream error), type, code
FAULTS = [
    ("refused", 502, "upstream_error", "upstream_unavailable", None),
    ("blackhole", 504, "upstream_error", "upstream_timeout", None),
    ("hang", 504, "upstream_error", "upstream_timeout", None),
    ("status-500", 502, "upstream_error", "upstream_unavailable", None),
    ("status-503", 502, "upstream_error", "upstream_unavailable", None),
    ("status-429", 429, "rate_limit_error", "rate_limit_exceeded", None),
    ("status-401", 502, "upstream_error", "upstream_auth_failed", None),
    ("status-403", 502, "upstream_error", "upstream_auth_failed", None),
    ("status-404", 502, "upstream_error", "upstream_misconfigured", None),
    ("status-405", 502, "upstream_error", "upstream_misconfigured", None),
    ("notjson", 502, "upstream_error", "upstream_error", None),
    ("cut", 502, "upstream_error", "upstream_error", None),
    ("reset", 502, "upstream_error", "upstream_unavailable", None),
    ("stall", 504, "upstream_error", "upstream_timeout", None),
    ("slow-2500", 504, "upstream_error", "upstream_timeout", None),
    ("deep", 502, "upstream_error", "upstream_error", None),
]
# Streams whose provider said 200 fail after the first byte: the in-stream form.
IN_STREAM = {"notjson", "cut", "reset", "stall", "slow-2500", "deep"}
# Retrying cannot help (the profile's key, base_url or model is wrong): the OpenAI SDK
# is told not to (x-should-retry: false); it retries every other 5xx.
NOT_RETRIED = {"upstream_auth_failed", "upstream_misconfigured"}


def fault_cases(skip: frozenset[str] = frozenset()) -> Iterator[Any]:
    """Each fault of ``FAULTS`` but ``skip``, non-streamed and streamed."""
    for profile, status, type_, code, _ in FAULTS:
        if profile in skip:
            continue
        yield pytest.param(profile, False, status, type_, code, id=f"plain-{profile}")
        yield pytest.param(profile, True, None if profile in IN_STREAM else status, type_, code, id=f"stream-{profile}")


@pytest.mark.parametrize(("profile", "stream", "status", "type_", "code"), list(fault_cases()))
def test_fault_gives_the_error_of_the_table_and_the_server_survives(
    client: httpx.Client, profile: str, stream: bool, status: int | None, type_: str, code: str
) -> None:
    r = chat(client, profile, stream)
    if status is not None:
        assert r.status_code == status, r.text
        assert r.headers["content-type"] == "application/json"
        error = r.json()["error"]
    else:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        got = events(r)
        assert got[-1] == "[DONE]", "the stream must end with [DONE]"
        assert all("error" not in e for e in got[:-2]), "exactly one error, just before [DONE]"
        error = got[-2]["error"]
    assert set(error) == ENVELOPE and (error["type"], error["code"]) == (type_, code), error
    assert r.headers["x-hermes-profile"] == profile
    if code == "rate_limit_exceeded":
        assert r.headers["retry-after"] == "7"
    if status is not None:
        assert r.headers.get("x-should-retry") == ("false" if code in NOT_RETRIED else None)
    assert_serving(client)


# "deep" is no fault here: of a chunk only its text is sent on.
@pytest.mark.parametrize(("profile", "stream", "status", "type_", "code"), list(fault_cases(skip=frozenset({"deep"}))))
def test_responses_fault_gives_the_error_of_the_table_or_response_failed(
    client: httpx.Client, profile: str, stream: bool, status: int | None, type_: str, code: str
) -> None:
    """The same faults through ``/v1/responses``: the §5 JSON error before the first
    byte; after it, ``response.failed`` with ``error.code`` as the last event of a
    closed stream, that failed response stored; and the server survives."""
    r = client.post("/v1/responses", json={"model": profile, "input": "hi", "stream": stream})
    assert r.headers["x-hermes-profile"] == profile
    if status is not None:
        assert r.status_code == status and r.headers["content-type"] == "application/json", r.text
        error = r.json()["error"]
        assert set(error) == ENVELOPE and (error["type"], error["code"]) == (type_, code), error
    else:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        got = events(r)
        types = [e["type"] for e in got]
        # Output items appear with the provider's first words, if any came.
        assert types[:2] == ["response.created", "response.in_progress"]
        assert types[-1] == "response.failed" and types.count("response.failed") == 1, types
        failed = got[-1]["response"]
        assert failed["status"] == "failed" and failed["error"]["code"] == code and failed["error"]["message"]
        assert client.get(f"/v1/responses/{failed['id']}").json() == failed
    if code == "rate_limit_exceeded":
        assert r.headers["retry-after"] == "7"
    if status is not None:
        assert r.headers.get("x-should-retry") == ("false" if code in NOT_RETRIED else None)
    ok = client.post("/v1/responses", json={"model": "ok", "input": "after"})
    assert ok.status_code == 200 and ok.json()["output"][0]["content"][0]["text"] == "ok after"


@pytest.mark.parametrize(("profile", "retried"), [("status-404", False), ("status-405", False), ("status-500", True)])
def test_the_openai_sdk_retries_only_what_retrying_can_fix(
    server: LiveServer, fake_upstream: FakeUpstream, profile: str, retried: bool
) -> None:
    """A wrong ``base_url`` (the provider's 404 or 405) fails the same way every time:
    one SDK call reaches the provider once. A provider's 500 may pass: the SDK tries
    again (twice, by default)."""
    sdk = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=2)
    for call in (
        lambda: sdk.chat.completions.create(model=profile, messages=[{"role": "user", "content": "hi"}]),
        lambda: sdk.responses.create(model=profile, input="hi"),
    ):
        before = fake_upstream.stats()["requests"]
        with pytest.raises(openai.InternalServerError):
            call()
        assert fake_upstream.stats()["requests"] - before == (3 if retried else 1)


def test_responses_deep_provider_answer_is_read_not_resent(client: httpx.Client) -> None:
    """A provider answer nested deeper than orjson writes (a 502 for chat, which sends
    chunks on) is fine for the Responses API, which sends on only the text."""
    r = client.post("/v1/responses", json={"model": "deep", "input": "hi"})
    assert r.status_code == 200 and r.json()["output"][0]["content"][0]["text"] == "ok hi"
    got = events(client.post("/v1/responses", json={"model": "deep", "input": "hi", "stream": True}))
    assert got[-1]["type"] == "response.completed"
    assert got[-1]["response"]["output"][0]["content"][0]["text"] == "first xok hi"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_read_timeout_per_profile_overrides_the_server_wide_one(client: httpx.Client, stream: bool) -> None:
    """The provider is silent for 2.5 s: over the server-wide read timeout (1 s, see
    the ``slow-2500`` fault) but within ``per_profile.patient.timeouts.read`` (10 s)."""
    r = chat(client, "patient", stream, "late")
    assert r.status_code == 200
    if stream:
        got = events(r)
        assert got[-1] == "[DONE]" and "".join(e["choices"][0]["delta"]["content"] for e in got[:-1]) == "first ok late"
    else:
        assert r.json()["choices"][0]["message"]["content"] == "ok late"


def test_store_failures_are_500_in_the_envelope_and_the_connection_survives(
    fake_upstream: FakeUpstream, home: HermesHome, make_settings, live, caplog
) -> None:
    """A store that refuses every write (a full disk, a broken database): a stored
    response or a chat-session turn that cannot be written is a 500 ``server_error``
    before the first byte, ``response.failed`` / an in-stream error after it; the
    traceback goes to the log, and the connection stays usable (an exception escaping
    to uvicorn would make it close the connection under a keep-alive client)."""

    async def refusing(settings):
        store = await open_store(settings)

        async def refuse(*args: object) -> None:
            raise sqlite3.OperationalError("disk I/O error")

        store.put_response = store.append_session = refuse
        return store

    home.add("ok", model={"default": "m", "provider": "custom", "base_url": fake_upstream.base_url("ok")})
    server = live(create_app(make_settings(expose=["ok"], default_profile="ok"), environ={}, store=refusing))
    session = {"X-Hermes-Session-Id": "s1"}
    chat_body = {"messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=server.url, timeout=20) as client:
        for stream in (False, True):
            r = client.post("/v1/responses", json={"input": "hi", "stream": stream})
            if stream:
                last = [line for line in r.text.splitlines() if line.startswith("data: ")][-1]
                failed = orjson.loads(last[6:])
                assert failed["type"] == "response.failed" and failed["response"]["error"]["code"] == "server_error"
            else:
                assert r.status_code == 500 and r.json()["error"]["code"] == "server_error", r.text
                assert r.headers["x-hermes-profile"] == "ok"
            assert client.get("/v1/models").status_code == 200, "the same connection serves on"
            r = client.post("/v1/chat/completions", json={**chat_body, "stream": stream}, headers=session)
            if stream:
                got = events(r)
                assert got[-1] == "[DONE]" and got[-2]["error"]["code"] == "server_error"
            else:
                assert r.status_code == 500 and set(r.json()["error"]) == ENVELOPE, r.text
            assert client.get("/v1/models").status_code == 200
        # Not stored, not in a session: nothing else goes wrong.
        r = client.post("/v1/responses", json={"input": "hi", "store": False})
        assert r.status_code == 200
    logged = caplog.text
    assert logged.count("could not store response") == 2 and logged.count("could not store the session turn") == 2
    assert "disk I/O error" in logged
