"""Open WebUI 0.12.4 → hermes-api → a recording upstream, through Open WebUI's own HTTP API.

The key Open WebUI holds may use two of the three exposed profiles. Open WebUI must list
exactly those two; a chat with each must reach that profile (its persona and upstream
model are what the upstream received) and come back; the third fails visibly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import orjson
import pytest

from .conftest import ALLOWED, PROFILES, Stack
from .stack import OpenWebUIClient

pytestmark = pytest.mark.e2e


@contextmanager
def manual_model_ids(client: OpenWebUIClient, model_ids: list[str]) -> Iterator[None]:
    """Give connection 0 a fixed list of model ids, as an admin may type them in
    Admin Settings → Connections ("Model IDs"); Open WebUI then lists them without asking
    hermes-api. Restores the connection settings afterwards."""
    saved = client.connections()
    client.set_connections({**saved, "OPENAI_API_CONFIGS": {"0": {"enable": True, "model_ids": model_ids}}})
    try:
        yield
    finally:
        client.set_connections(saved)


def test_model_list_is_exactly_the_keys_profiles(recorded_stack: Stack) -> None:
    assert recorded_stack.client.model_ids() == ALLOWED


def sse_text(body: str) -> str:
    text = ""
    for line in body.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            event = orjson.loads(line[6:])
            for choice in event.get("choices") or []:
                text += (choice.get("delta") or {}).get("content") or ""
    return text


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
@pytest.mark.parametrize("profile", ALLOWED)
def test_chat_reaches_the_profile_and_comes_back(recorded_stack: Stack, profile: str, stream: bool) -> None:
    upstream = recorded_stack.upstream
    before = len(upstream.chats())
    r = recorded_stack.client.chat(profile, f"hello {profile}", stream=stream)
    assert r.status_code == 200, r.text
    expected = f"pong from {PROFILES[profile]}: hello {profile}"
    if stream:
        assert sse_text(r.text).strip() == expected
    else:
        assert r.json()["choices"][0]["message"]["content"] == expected
        assert r.json()["model"] == profile
    received = upstream.chats()[before:]
    assert len(received) == 1
    assert received[0].body["model"] == PROFILES[profile]
    assert received[0].system.startswith(f"You are {profile.upper()}-PERSONA.")
    assert received[0].body["messages"][-1] == {"role": "user", "content": f"hello {profile}"}


def test_profile_outside_the_key_is_a_visible_error(recorded_stack: Stack) -> None:
    client, upstream = recorded_stack.client, recorded_stack.upstream
    before = len(upstream.chats())
    # Not in Open WebUI's model list: Open WebUI itself refuses it.
    r = client.chat("gamma", "hello gamma")
    assert r.status_code == 400 and r.json() == {"detail": "Model not found"}
    # Typed in by an admin as a model id: hermes-api refuses it and Open WebUI shows why.
    with manual_model_ids(client, [*ALLOWED, "gamma"]):
        assert client.model_ids() == [*ALLOWED, "gamma"]
        r = client.chat("gamma", "hello gamma")
    assert r.status_code == 403
    error = r.json()["error"]
    assert error["code"] == "model_not_found" and "may not use the model `gamma`" in error["message"]
    assert len(upstream.chats()) == before, "nothing may reach the upstream"


def test_identity_headers_route_a_shared_model_id(recorded_stack: Stack) -> None:
    """With ENABLE_FORWARD_USER_INFO_HEADERS, Open WebUI sends X-OpenWebUI-User-Email; the
    key is trusted, and routes send admin@localhost to beta when the model id names no
    profile (the alias hermes-agent). An explicit profile id still wins."""
    client, upstream = recorded_stack.client, recorded_stack.upstream
    with manual_model_ids(client, ["hermes-agent", "alpha"]):
        routed = client.chat("hermes-agent", "who am I")
        assert routed.status_code == 200, routed.text
        assert upstream.chats()[-1].body["model"] == "upstream-beta"
        assert routed.json()["choices"][0]["message"]["content"] == "pong from upstream-beta: who am I"
        explicit = client.chat("alpha", "who am I")
        assert explicit.status_code == 200 and upstream.chats()[-1].body["model"] == "upstream-alpha"
