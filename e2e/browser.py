"""Driving Open WebUI in headless Chromium with Playwright (Python).

Debian's chromium (``/usr/bin/chromium``), never a Playwright browser download (that
fails on these machines). Flags and selectors as Open WebUI 0.12.4's front end has them: a fresh
user-data dir, the "What's New" dialog dismissed with "Okay, Let's Go!", the model
picker ``#model-selector-model-button``, the chat box ``#chat-input``; never wait for
"networkidle" (socket.io keeps the network busy).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


@contextmanager
def chromium_page(user_data_dir: Path) -> Iterator[Page]:
    """A page in a fresh headless Chromium profile; the browser closes on the way out."""
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(user_data_dir),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 800},
        )
        try:
            context.set_default_timeout(30_000)
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def open_chat(page: Page, url: str) -> None:
    """Load Open WebUI (signed in automatically with WEBUI_AUTH=false) and close the
    "What's New" dialog that covers the page on a first visit."""
    page.goto(url, wait_until="domcontentloaded")
    page.locator("#chat-input").wait_for(state="visible", timeout=60_000)
    button = page.get_by_role("button", name="Okay, Let's Go!")
    try:
        button.wait_for(state="visible", timeout=10_000)
        button.click()
    except Exception:  # noqa: BLE001 - the dialog is only shown on some first visits
        pass
    button.wait_for(state="hidden", timeout=10_000)


def open_model_selector(page: Page) -> list[str]:
    """Open the model dropdown; the model ids it offers, in order."""
    page.locator("#model-selector-model-button").click()
    options = page.get_by_role("option")
    options.first.wait_for(state="visible")
    labels = [options.nth(i).get_attribute("aria-label") or "" for i in range(options.count())]
    return [label.removeprefix("Select ").removesuffix(" model") for label in labels]


def pick_model(page: Page, model: str) -> None:
    """Click one entry of the open dropdown; the picker then shows its name."""
    page.get_by_role("option", name=f"Select {model} model").click()
    page.locator("#model-selector-model-button").filter(has_text=model).wait_for(state="visible")


def send_message(page: Page, text: str) -> float:
    """Type ``text`` into the chat box and press Enter; the monotonic time of sending."""
    box = page.locator("#chat-input")
    box.click()
    box.fill(text)
    sent = time.monotonic()
    box.press("Enter")
    return sent


def wait_for_text(page: Page, text: str, timeout: float = 60.0) -> float:
    """Wait until ``text`` is rendered in the conversation; the monotonic time it was."""
    page.get_by_text(text, exact=False).last.wait_for(state="visible", timeout=timeout * 1000)
    return time.monotonic()


def wait_for_reply(page: Page, timeout: float = 180.0) -> tuple[str, float]:
    """Wait for the assistant's reply to finish rendering (Open WebUI shows the message
    actions, "Regenerate" among them, once a response is done); its text and the
    monotonic time."""
    done = page.get_by_role("button", name="Regenerate").last
    done.wait_for(state="visible", timeout=timeout * 1000)
    finished = time.monotonic()
    reply = page.locator("#response-content-container").last
    return reply.inner_text(), finished


def open_tool_row(page: Page, tool: str) -> str:
    """Click open the last "View Result from <tool>" row (how Open WebUI shows a tool that
    ran, with its INPUT and OUTPUT); the answer's visible text once the row is open."""
    page.get_by_text(f"View Result from {tool}").last.click()
    page.get_by_text("Output", exact=True).last.wait_for(state="visible")  # shown upper-case by CSS
    return page.locator("#response-content-container").last.inner_text()
