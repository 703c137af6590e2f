"""The system message a profile speaks with, as hermes-agent 0.19.0 builds its parts.

Hermes's order: the identity (SOUL.md, or Hermes's default identity when SOUL.md is
missing, empty or unreadable), then the MEMORY block, then the USER PROFILE block, each
only when non-empty (``agent/system_prompt.py``). SOUL.md loses a leading UTF-8 BOM, is
replaced whole by a ``[BLOCKED: …]`` line when it holds a prompt-injection pattern, and is
cut head and tail past its character cap (``agent/prompt_builder.py`` ``load_soul_md``,
``_scan_context_content``, ``_truncate_content``). Each memory entry holding an injection
pattern is replaced by a ``[BLOCKED: …]`` line before the block is rendered
(``tools/memory_tool.py`` ``MemoryStore.load_from_disk``, ``_render_block``): a memory is
written by an agent that may have read untrusted text, so what it wrote must not become
instructions. The client's own system/developer messages, or a Responses
``instructions``, follow after a blank line; the result is one system message at the
head of what goes upstream.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from .threats import scan

# agent/prompt_builder.py DEFAULT_AGENT_IDENTITY (also what `hermes profile create` seeds SOUL.md with).
DEFAULT_IDENTITY = (
    "You are Hermes Agent, an intelligent AI assistant created by Nous Research. "
    "You are helpful, knowledgeable, and direct. You assist users with a wide "
    "range of tasks including answering questions, writing and editing code, "
    "analyzing information, creative work, and executing actions via your tools. "
    "You communicate clearly, admit uncertainty when appropriate, and prioritize "
    "being genuinely useful over being verbose unless otherwise directed below. "
    "Be targeted and efficient in your exploration and investigations."
)
# agent/prompt_builder.py CONTEXT_FILE_MAX_CHARS and the dynamic cap's bounds.
SOUL_CHAR_LIMIT = 20_000
_SOUL_CHAR_CEILING = 500_000
ENTRY_DELIMITER = "\n§\n"
RULE = "═" * 46
MEMORY_CHAR_LIMIT = 2200
USER_CHAR_LIMIT = 1375
SYSTEM_ROLES = frozenset({"system", "developer"})


class Persona(NamedTuple):
    """A rendered persona: the ``text``, and ``notes`` on what was left out of it (a
    blocked SOUL.md or memory entry, a truncated SOUL.md), free of the files' content."""

    text: str
    notes: tuple[str, ...] = ()


def soul_char_limit(context_file_max_chars: object = None, context_length: object = None) -> int:
    """The SOUL.md cap in characters: config.yaml ``context_file_max_chars`` when a positive
    number; else 6 % of ``model.context_length`` tokens at 4 characters each, kept within
    20,000-500,000; else 20,000 (``prompt_builder.py`` ``_get_context_file_max_chars``).
    Hermes also learns the context length from the provider; hermes-api reads only the
    configured one."""
    if isinstance(context_file_max_chars, int | float) and not isinstance(context_file_max_chars, bool):
        if context_file_max_chars > 0:
            return int(context_file_max_chars)
    if isinstance(context_length, int) and not isinstance(context_length, bool) and context_length > 0:
        return max(SOUL_CHAR_LIMIT, min(int(context_length * 4 * 0.06), _SOUL_CHAR_CEILING))
    return SOUL_CHAR_LIMIT


def load_soul(raw: str, *, max_chars: int = SOUL_CHAR_LIMIT, path: str = "SOUL.md") -> Persona:
    """The identity from SOUL.md's text ``raw`` (``prompt_builder.py`` ``load_soul_md``):
    stripped; "" when empty; a leading BOM dropped; the whole text replaced by
    ``[BLOCKED: SOUL.md contained potential prompt injection (<ids>). Content not loaded.]``
    when the context-scope scan finds anything; past ``max_chars`` the first 70 % and the
    last 20 % of the cap with Hermes's marker between, naming ``path`` (the file)."""
    text = raw.strip()
    if not text:
        return Persona("")
    if text.startswith("\ufeff"):
        text = text[1:]
    findings = scan(text, "context")
    if findings:
        ids = ", ".join(findings)
        return Persona(
            f"[BLOCKED: SOUL.md contained potential prompt injection ({ids}). Content not loaded.]",
            (f"SOUL.md is not used: it matches prompt-injection patterns ({ids})",),
        )
    if len(text) <= max_chars:
        return Persona(text)
    head, tail = int(max_chars * 0.7), int(max_chars * 0.2)
    marker = (
        f"\n\n[...truncated SOUL.md: kept {head}+{tail} of {len(text)} chars. The middle is omitted"
        f" — if you need the full instructions, read the complete file with the read_file tool: {path}]\n\n"
    )
    note = f"SOUL.md is cut to {head:,}+{tail:,} of its {len(text):,} characters (the cap is {max_chars:,})"
    return Persona(text[:head] + marker + text[-tail:], (note,))


def parse_entries(raw: str) -> list[str]:
    """Entries of a MEMORY.md / USER.md file: split on ``\\n§\\n``, stripped, empty ones
    dropped, duplicates dropped keeping the first (``MemoryStore.load_from_disk``)."""
    if not raw.strip():
        return []
    entries = (e.strip() for e in raw.split(ENTRY_DELIMITER))
    return list(dict.fromkeys(e for e in entries if e))


def sanitize_entries(entries: Sequence[str], filename: str) -> tuple[list[str], tuple[str, ...]]:
    """``entries`` as they enter the prompt, and notes: each entry the strict-scope scan
    flags is replaced by Hermes's placeholder (``MemoryStore._sanitize_entries_for_snapshot``);
    entries already starting ``[BLOCKED:`` pass unchanged. ``filename`` is ``MEMORY.md``
    or ``USER.md``, as the placeholder names it. The note counts the blocked entries and
    names their patterns, never their text."""
    kept, blocked = [], []
    for entry in entries:
        findings = [] if entry.startswith("[BLOCKED:") else scan(entry, "strict")
        if findings:
            ids = ", ".join(findings)
            blocked.append(ids)
            entry = (
                f"[BLOCKED: {filename} entry contained threat pattern(s): {ids}. "
                "Removed from system prompt; use memory(action=remove) to delete the original.]"
            )
        kept.append(entry)
    if not blocked:
        return kept, ()
    many = "entries are" if len(blocked) > 1 else "entry is"
    return kept, (f"{len(blocked)} {filename} {many} not used: prompt-injection patterns ({'; '.join(blocked)})",)


def render_block(kind: str, entries: Sequence[str], limit: int) -> str:
    """One memory block: a rule, the header with usage, a rule, the entries
    (``MemoryStore._render_block``). ``kind`` is ``"memory"`` or ``"user"``; ``limit`` in
    characters. Hermes 0.19 renders a block past its budget whole, at 100 %, with no
    marker. Returns "" for no entries."""
    if not entries:
        return ""
    content = ENTRY_DELIMITER.join(entries)
    current = len(content)
    pct = min(100, int(current / limit * 100)) if limit > 0 else 0
    title = "USER PROFILE (who the user is)" if kind == "user" else "MEMORY (your personal notes)"
    return f"{RULE}\n{title} [{pct}% — {current:,}/{limit:,} chars]\n{RULE}\n{content}"


def render_persona(
    soul: str,
    memory_entries: Sequence[str] = (),
    user_entries: Sequence[str] = (),
    *,
    memory_char_limit: int = MEMORY_CHAR_LIMIT,
    user_char_limit: int = USER_CHAR_LIMIT,
    soul_char_limit: int = SOUL_CHAR_LIMIT,
    soul_path: str = "SOUL.md",
) -> Persona:
    """SOUL.md's text (``load_soul``; the default identity when it gives ""), then the
    MEMORY and USER PROFILE blocks of the sanitised entries, joined by blank lines.
    Disabled memory is passed as no entries."""
    identity = load_soul(soul, max_chars=soul_char_limit, path=soul_path)
    memory, memory_notes = sanitize_entries(memory_entries, "MEMORY.md")
    user, user_notes = sanitize_entries(user_entries, "USER.md")
    parts = [
        identity.text or DEFAULT_IDENTITY,
        render_block("memory", memory, memory_char_limit),
        render_block("user", user, user_char_limit),
    ]
    return Persona("\n\n".join(p for p in parts if p), identity.notes + memory_notes + user_notes)


def build_persona(
    soul: str, memory_entries: Sequence[str] = (), user_entries: Sequence[str] = (), **limits: Any
) -> str:
    """``render_persona``'s text."""
    return render_persona(soul, memory_entries, user_entries, **limits).text


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
