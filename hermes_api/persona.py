"""The system message a profile speaks with (DESIGN.md §1).

Hermes's order: SOUL.md (or a short default identity), then the MEMORY block, then the
USER PROFILE block, each only when non-empty, rendered as Hermes renders them
(hermes-agent ``tools/memory_tool.py``, ``MemoryStore._render_block``). The client's
own system/developer messages, or a Responses ``instructions``, follow after a blank
line; the result is one system message at the head of what goes upstream.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

DEFAULT_IDENTITY = (
    "You are Hermes Agent, an intelligent AI assistant created by Nous Research. "
    "You are helpful, knowledgeable, and direct."
)
SOUL_CHAR_LIMIT = 20_000
ENTRY_DELIMITER = "\n§\n"
RULE = "═" * 46
MEMORY_CHAR_LIMIT = 2200
USER_CHAR_LIMIT = 1375
SYSTEM_ROLES = frozenset({"system", "developer"})


def parse_entries(raw: str) -> list[str]:
    """Entries of a MEMORY.md / USER.md file: split on ``\\n§\\n``, stripped, empty ones
    dropped, duplicates dropped keeping the first (``MemoryStore.load_from_disk``)."""
    if not raw.strip():
        return []
    entries = (e.strip() for e in raw.split(ENTRY_DELIMITER))
    return list(dict.fromkeys(e for e in entries if e))


def render_block(kind: str, entries: Sequence[str], limit: int) -> str:
    """One memory block: a rule, the header with usage, a rule, the entries.

    ``kind`` is ``"memory"`` or ``"user"``; ``limit`` in characters. Like Hermes, a file
    grown past twice its limit (at least 4000 chars) is cut head and tail so it cannot
    fill the context window. Returns "" for no entries.
    """
    if not entries:
        return ""
    content = ENTRY_DELIMITER.join(entries)
    current = len(content)
    pct = min(100, int(current / limit * 100)) if limit > 0 else 0
    cap = max(limit * 2, 4000)
    if current > cap:
        head, tail = int(cap * 0.7), int(cap * 0.2)
        omitted = current - head - tail
        content = (
            content[:head] + f"\n\n[... {omitted:,} chars truncated — memory over budget "
            f"({current:,}/{limit:,}); consolidate via memory(action=remove/replace) ...]\n\n" + content[-tail:]
        )
    over = " ⚠ OVER BUDGET" if current > limit else ""
    title = "USER PROFILE (who the user is)" if kind == "user" else "MEMORY (your personal notes)"
    header = f"{title} [{pct}% — {current:,}/{limit:,} chars{over}]"
    return f"{RULE}\n{header}\n{RULE}\n{content}"


def build_persona(
    soul: str,
    memory_entries: Sequence[str] = (),
    user_entries: Sequence[str] = (),
    *,
    memory_char_limit: int = MEMORY_CHAR_LIMIT,
    user_char_limit: int = USER_CHAR_LIMIT,
) -> str:
    """SOUL.md text (stripped; cut head and tail past ``SOUL_CHAR_LIMIT`` chars, as
    Hermes's ``load_soul_md`` does; the default identity when empty), then the MEMORY and
    USER PROFILE blocks, joined by blank lines. Disabled memory is passed as no entries."""
    soul = soul.strip()
    if len(soul) > SOUL_CHAR_LIMIT:
        head, tail = int(SOUL_CHAR_LIMIT * 0.7), int(SOUL_CHAR_LIMIT * 0.2)
        soul = f"{soul[:head]}\n\n[... SOUL.md truncated ...]\n\n{soul[-tail:]}"
    parts = [soul or DEFAULT_IDENTITY]
    parts.append(render_block("memory", memory_entries, memory_char_limit))
    parts.append(render_block("user", user_entries, user_char_limit))
    return "\n\n".join(p for p in parts if p)


def content_text(content: Any) -> str:
    """The text of a message ``content``: a string, or the ``text`` of its text parts
    (``{"type": "text" | "input_text" | "output_text", "text": ...}``) joined by newlines."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def system_prompt(persona: str, client_texts: Iterable[str]) -> str:
    """The persona, then the client's own system texts after a blank line each."""
    return "\n\n".join([persona, *(t for t in client_texts if t.strip())])


def with_persona(persona: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` with one system message at the head: the persona, then the text of
    every client ``system``/``developer`` message in order; the other messages follow
    unchanged, in order."""
    client_texts = [content_text(m.get("content")) for m in messages if m["role"] in SYSTEM_ROLES]
    rest = [m for m in messages if m["role"] not in SYSTEM_ROLES]
    return [{"role": "system", "content": system_prompt(persona, client_texts)}, *rest]
