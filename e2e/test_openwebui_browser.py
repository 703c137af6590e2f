"""Open WebUI in headless Chromium (Playwright), against hermes-api and a recording upstream.

Screenshots go to ``e2e/artifacts/`` (``$HERMES_E2E_ARTIFACTS``), the CI artifact folder:

- ``openwebui-model-dropdown.png``: the model selector open, offering exactly the two
  profiles the key may use;
- ``openwebui-answer.png``: the conversation after picking ``beta`` and sending a
  message, the upstream's answer rendered;
- ``openwebui-forbidden-error.png``: a profile the key may not use, typed in as a model
  id by an admin, and the error Open WebUI shows for it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import ALLOWED, PROFILES, Stack
from .test_openwebui_api import manual_model_ids

pytestmark = pytest.mark.e2e
browser = pytest.importorskip("e2e.browser", reason="needs the e2e extra: pip install -e '.[e2e]'")


@pytest.fixture
def page(recorded_stack: Stack, tmp_path: Path):
    with browser.chromium_page(tmp_path / "chromium-profile") as page:
        browser.open_chat(page, recorded_stack.webui_url)
        yield page


def test_pick_a_profile_and_chat(recorded_stack: Stack, page, artifacts: Path) -> None:
    upstream = recorded_stack.upstream
    offered = browser.open_model_selector(page)
    page.screenshot(path=artifacts / "openwebui-model-dropdown.png")
    assert sorted(offered) == ALLOWED
    browser.pick_model(page, "beta")
    before = len(upstream.chats())
    browser.send_message(page, "Hello from Chromium")
    expected = f"pong from {PROFILES['beta']}: Hello from Chromium"
    browser.wait_for_text(page, expected)
    text, _ = browser.wait_for_reply(page)
    page.screenshot(path=artifacts / "openwebui-answer.png")
    assert text.strip() == expected
    received = upstream.chats()[before:]
    assert [e.body["model"] for e in received] == [PROFILES["beta"]]
    assert received[0].system.startswith("You are BETA-PERSONA.")
    # The browser UI sends Open WebUI's built-in tools with every chat; they pass through.
    tools = received[0].body.get("tools") or []
    assert len(tools) >= 10 and all(t["type"] == "function" for t in tools)


def test_forbidden_profile_shows_an_error(recorded_stack: Stack, page, artifacts: Path) -> None:
    upstream = recorded_stack.upstream
    with manual_model_ids(recorded_stack.client, [*ALLOWED, "gamma"]):
        page.reload(wait_until="domcontentloaded")
        page.locator("#chat-input").wait_for(state="visible")
        assert "gamma" in browser.open_model_selector(page)
        browser.pick_model(page, "gamma")
        before = len(upstream.chats())
        browser.send_message(page, "Hello gamma")
        browser.wait_for_text(page, "may not use the model")
        page.screenshot(path=artifacts / "openwebui-forbidden-error.png")
    assert len(upstream.chats()) == before
