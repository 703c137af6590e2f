"""An Open WebUI connection with ``api_type: responses`` against hermes-api.

Open WebUI 0.12.4 keeps ``api_type`` in the connection's config (Admin Settings →
Connections → the connection → API type "Responses"; saved by ``POST
/openai/config/update`` as ``OPENAI_API_CONFIGS["<idx>"].api_type``, or set at start with
the ``OPENAI_API_CONFIGS`` environment variable). Such a connection sends
``POST <base>/responses`` with the chat turned into ``input`` items and the system
message into ``instructions`` (``convert_to_responses_payload`` in
``open_webui/routers/openai.py``), and turns the answer back into a chat completion
(``convert_responses_result``).

hermes-api serves ``POST /v1/responses`` on every profile: a 404 there fails these tests
(it never skips them). They expect the profile's turn to reach its provider as a chat
completion (the providers hermes-api serves speak Chat Completions).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import PROFILES, WEBUI_KEY, Stack
from .stack import OpenWebUIClient

pytestmark = pytest.mark.e2e


def assert_responses_api_served(hermes_url: str) -> None:
    """``POST /v1/responses`` answers 200 for the connection's key: a 404 (no such
    route) is a failure, not a reason to skip."""
    r = httpx.post(
        f"{hermes_url}/v1/responses",
        headers={"Authorization": f"Bearer {WEBUI_KEY}"},
        json={"model": "alpha", "input": "ping", "store": False, "max_output_tokens": 8},
        timeout=30,
    )
    assert r.status_code == 200, f"POST /v1/responses answered {r.status_code}: {r.text[:300]}"


@pytest.fixture
def responses_connection(recorded_stack: Stack) -> Iterator[OpenWebUIClient]:
    """Connection 0 switched to ``api_type: responses`` (restored afterwards)."""
    assert_responses_api_served(recorded_stack.hermes_url)
    client = recorded_stack.client
    saved = client.connections()
    client.set_connections({**saved, "OPENAI_API_CONFIGS": {"0": {"enable": True, "api_type": "responses"}}})
    try:
        yield client
    finally:
        client.set_connections(saved)


@pytest.mark.parametrize("profile", ["alpha", "beta"])
def test_responses_connection_chats_with_a_profile(recorded_stack: Stack, responses_connection, profile: str) -> None:
    before = len(recorded_stack.upstream.chats())
    r = responses_connection.chat(profile, f"hello over responses, {profile}")
    assert r.status_code == 200, r.text
    content = r.json()["choices"][0]["message"]["content"]
    assert content.strip() == f"pong from {PROFILES[profile]}: hello over responses, {profile}"
    received = recorded_stack.upstream.chats()[before:]
    assert [e.body["model"] for e in received] == [PROFILES[profile]]
    assert received[0].system.startswith(f"You are {profile.upper()}-PERSONA.")


def test_responses_connection_in_the_browser(
    recorded_stack: Stack, responses_connection, tmp_path: Path, artifacts: Path
) -> None:
    browser = pytest.importorskip("e2e.browser", reason="needs the e2e extra: pip install -e '.[e2e]'")
    with browser.chromium_page(tmp_path / "chromium-profile") as page:
        browser.open_chat(page, recorded_stack.webui_url)
        browser.open_model_selector(page)
        browser.pick_model(page, "alpha")
        browser.send_message(page, "Hello over the Responses API")
        browser.wait_for_text(page, f"pong from {PROFILES['alpha']}: Hello over the Responses API")
        page.screenshot(path=artifacts / "openwebui-responses.png")
