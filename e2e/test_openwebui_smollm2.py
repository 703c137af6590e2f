"""Open WebUI → hermes-api → a recording proxy → llama.cpp on the real SmolLM2-135M.

The browser UI sends Open WebUI's default built-in tools (~36 definitions) with every
chat; the recording proxy in front of llama.cpp shows they passed through hermes-api.
Measured (``artifacts/figures.json``): Open WebUI's startup time to healthy, and the
chat round trip through Open WebUI → hermes-api → SmolLM2, by Open WebUI's API and in
the browser (Enter pressed → answer rendered). Screenshot: ``openwebui-smollm2.png``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import need
from .recorder import RecordingUpstream
from .stack import OPEN_WEBUI_BIN, OpenWebUIClient, hermes_api, open_webui, record_figure, write_home

pytestmark = pytest.mark.e2e
PROFILES = {"researcher": "smollm2", "family": "smollm2"}
KEY = "e2e-smollm2-key-0123456789"
ROUND_TRIPS = 5  # after one warm-up request (Open WebUI's first chat loads lazily)


class RealStack:
    def __init__(self, proxy: RecordingUpstream, client: OpenWebUIClient, webui_url: str, hermes_url: str) -> None:
        self.proxy, self.client, self.webui_url, self.hermes_url = proxy, client, webui_url, hermes_url


@pytest.fixture(scope="module")
def real_stack(llama: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealStack]:
    need(OPEN_WEBUI_BIN.exists(), f"Open WebUI is not installed at {OPEN_WEBUI_BIN}")
    work = tmp_path_factory.mktemp("smollm2")
    with RecordingUpstream(forward_to=llama) as proxy:
        home = write_home(work / "home", proxy.url, PROFILES, max_tokens=48)
        config = {
            "hermes_home": str(home),
            "expose": sorted(PROFILES),
            "default_profile": "researcher",
            "keys": [{"name": "webui", "key_env": "E2E_KEY", "profiles": "*"}],
        }
        with hermes_api(work, config, {"E2E_KEY": KEY}) as hermes:
            with open_webui(work, hermes.url + "/v1", KEY) as webui:  # type: ignore[attr-defined]
                record_figure("open_webui_startup_seconds_smollm2_stack", round(webui.startup_seconds or 0, 2))
                client = OpenWebUIClient(webui.url)  # type: ignore[attr-defined]
                try:
                    yield RealStack(proxy, client, webui.url, hermes.url)  # type: ignore[attr-defined]
                finally:
                    client.close()


def test_chat_round_trip_through_open_webui_api(real_stack: RealStack) -> None:
    """The same request through Open WebUI and straight to hermes-api, interleaved, so
    the figures show what Open WebUI adds on a machine whose load varies."""
    assert real_stack.client.model_ids() == sorted(PROFILES)
    body = {"messages": [{"role": "user", "content": "Say hello in five words."}], "temperature": 0, "max_tokens": 24}
    via_webui, direct = [], []
    warm_up = real_stack.client.chat("researcher", "Hi", max_tokens=4)
    assert warm_up.status_code == 200, warm_up.text
    for _ in range(ROUND_TRIPS):
        started = time.monotonic()
        r = real_stack.client.chat("researcher", body["messages"][0]["content"], temperature=0, max_tokens=24)
        via_webui.append(time.monotonic() - started)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "researcher"
        assert r.json()["choices"][0]["message"]["content"].strip()
        started = time.monotonic()
        d = httpx.post(
            f"{real_stack.hermes_url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {KEY}"},
            json={"model": "researcher", **body},
            timeout=120,
        )
        direct.append(time.monotonic() - started)
        assert d.status_code == 200 and d.json()["model"] == "researcher"
    sent = real_stack.proxy.chats()[-2]
    assert sent.body["model"] == "smollm2" and sent.system.startswith("You are RESEARCHER-PERSONA.")
    assert real_stack.proxy.statuses[-1] == 200
    record_figure("chat_round_trip_seconds_api_median", round(statistics.median(via_webui), 3))
    record_figure("chat_round_trip_seconds_api_all", [round(s, 3) for s in via_webui])
    record_figure("chat_round_trip_seconds_direct_hermes_median", round(statistics.median(direct), 3))


def test_browser_chat_with_builtin_tools(real_stack: RealStack, tmp_path: Path, artifacts: Path) -> None:
    browser = pytest.importorskip("e2e.browser", reason="needs the e2e extra: pip install -e '.[e2e]'")
    before = len(real_stack.proxy.chats())
    with browser.chromium_page(tmp_path / "chromium-profile") as page:
        browser.open_chat(page, real_stack.webui_url)
        assert sorted(browser.open_model_selector(page)) == sorted(PROFILES)
        browser.pick_model(page, "family")
        sent_at = browser.send_message(page, "Hello! Who are you?")
        text, done_at = browser.wait_for_reply(page, timeout=180)
        page.screenshot(path=artifacts / "openwebui-smollm2.png")
    record_figure("chat_round_trip_seconds_browser", round(done_at - sent_at, 3))
    assert text.strip()
    received = real_stack.proxy.chats()[before:]
    assert received, "the chat never reached llama.cpp"
    chat = received[0]
    assert chat.body["model"] == "smollm2" and chat.system.startswith("You are FAMILY-PERSONA.")
    tools = chat.body.get("tools") or []
    names = {t["function"]["name"] for t in tools}
    record_figure("builtin_tools_passed_through", len(tools))
    assert len(tools) >= 10 and "get_current_timestamp" in names, sorted(names)
    assert real_stack.proxy.statuses[-1] == 200
