"""How tools the server ran (``turns.ToolEvent``) are shown to a chat-completions client.

Never as ``tool_calls``: a client would run them again (Open WebUI runs every
``delta.tool_calls`` it gets). By default a chat answer shows nothing of them (the
stream's keep-alive pings cover long tool runs). ``X-Hermes-Tool-Display`` asks for more:

- ``hermes``: Hermes's own ``event: hermes.tool.progress`` SSE events, with the payload
  Hermes's API server sends (hermes-agent 0.19 ``gateway/platforms/api_server.py``
  ``_on_tool_start``). Off by default: the OpenAI SDK's usual loop
  (``chunk.choices[0]...``) raises ``TypeError`` on an event without ``choices``.
- ``openwebui``: each finished tool as an Open WebUI tool block in the answer text
  (``<details type="tool_calls" done="true" ...>``), which Open WebUI 0.12 renders as a
  "View Result from <tool>" row with the arguments and the output, and other clients
  show as text. Open WebUI sends the blocks back in the history; ``strip_blocks``
  removes them before a turn.

For the Responses API the same header picks the output items (``response_objects``).
"""

from __future__ import annotations

import html
import re
from typing import Literal

import orjson

from .errors import InvalidHeaderError
from .turns import ToolEvent

HEADER = "x-hermes-tool-display"
ToolDisplay = Literal["none", "hermes", "openwebui"]
DISPLAYS: tuple[ToolDisplay, ...] = ("none", "hermes", "openwebui")
MAX_BLOCK_OUTPUT = 10_000  # characters of a tool's output in a block (Open WebUI cuts at 10,000 too)
_BLOCK = re.compile(r'\n?<details type="tool_calls"[^>]*>\n.*?</details>\n*', re.DOTALL)


def tool_display(value: str | None) -> ToolDisplay:
    """The display asked for by the header's ``value`` (absent: ``none``). Raises
    ``InvalidHeaderError`` for anything else, so a typo does not go unnoticed."""
    if value is None or value == "":
        return "none"
    display = value.strip().lower()
    if display not in DISPLAYS:
        raise InvalidHeaderError(f"The {HEADER} header must be one of {', '.join(DISPLAYS)}.", param=HEADER)
    return display  # type: ignore[return-value]


def progress_event(event: ToolEvent) -> bytes:
    """The ``hermes.tool.progress`` SSE event for ``event``, as Hermes sends it."""
    if event.status == "running":
        data = {"tool": event.name, "emoji": event.emoji, "label": event.label, "toolCallId": event.call_id,
                "status": "running"}  # fmt: skip
    else:
        data = {"tool": event.name, "toolCallId": event.call_id, "status": "completed"}
    return b"event: hermes.tool.progress\ndata: " + orjson.dumps(data) + b"\n\n"


def details_block(event: ToolEvent) -> str:
    """Open WebUI's block for a finished tool: on a line of its own, every attribute and
    the body HTML-escaped (a raw quote or ``>`` would end the tag, a raw ``</details>``
    the block), ``done="true"`` (a running block could never be updated)."""
    output = event.output or ""
    if len(output) > MAX_BLOCK_OUTPUT:
        output = output[:MAX_BLOCK_OUTPUT] + f"\n[... {len(output) - MAX_BLOCK_OUTPUT} characters cut]"
    attrs = " ".join(
        f'{name}="{html.escape(value, quote=True)}"'
        for name, value in (("id", event.call_id), ("name", event.name), ("arguments", event.arguments))
    )
    return (
        f'\n<details type="tool_calls" done="true" {attrs}>\n'
        f"<summary>Tool Executed</summary>\n{html.escape(output, quote=True)}\n</details>\n\n"
    )


def strip_blocks(text: str) -> str:
    """``text`` without the tool blocks ``details_block`` wrote (Open WebUI's own
    ``removeDetails`` does the same for its background tasks)."""
    return _BLOCK.sub("", text) if "<details" in text else text
