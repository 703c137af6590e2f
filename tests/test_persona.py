"""The system prompt is rendered exactly as Hermes renders it (DESIGN.md §1)."""

from __future__ import annotations

from hermes_api.persona import (
    DEFAULT_IDENTITY,
    build_persona,
    parse_entries,
    render_block,
    with_persona,
)

RULE = "═" * 46


def test_memory_block_matches_hermes_render() -> None:
    entries = ["Likes tea.", "Works nights."]
    content = "Likes tea.\n§\nWorks nights."
    assert render_block("memory", entries, 2200) == (
        f"{RULE}\nMEMORY (your personal notes) [{int(len(content) / 2200 * 100)}% — "
        f"{len(content)}/2,200 chars]\n{RULE}\n{content}"
    )


def test_user_block_header_and_thousands_separators() -> None:
    block = render_block("user", ["x" * 1200], 1375)
    assert block.splitlines()[1] == "USER PROFILE (who the user is) [87% — 1,200/1,375 chars]"


def test_over_budget_marker_and_render_cap() -> None:
    block = render_block("memory", ["y" * 5000], 1000)
    assert "⚠ OVER BUDGET" in block.splitlines()[1]
    assert "[100% — 5,000/1,000 chars" in block.splitlines()[1]
    # Past max(2 x limit, 4000) chars the middle is cut, as Hermes does.
    assert "chars truncated — memory over budget" in block
    assert len(block) < 5000


def test_empty_entries_render_nothing() -> None:
    assert render_block("memory", [], 2200) == ""


def test_parse_entries_strips_and_dedupes() -> None:
    assert parse_entries("  a \n§\n\n§\nb\n§\na\n") == ["a", "b"]
    assert parse_entries("   \n") == []
    # A § inside an entry is not a delimiter; only "\n§\n" is.
    assert parse_entries("price: 5§ each\n§\nnext") == ["price: 5§ each", "next"]


def test_persona_order_soul_memory_user() -> None:
    persona = build_persona("  I am Soul.  ", ["m1"], ["u1"])
    soul, memory, user = persona.split("\n\n")
    assert soul == "I am Soul."
    assert memory.startswith(RULE + "\nMEMORY (your personal notes)") and memory.endswith("m1")
    assert user.startswith(RULE + "\nUSER PROFILE (who the user is)") and user.endswith("u1")


def test_empty_soul_gets_default_identity() -> None:
    assert build_persona("  \n") == DEFAULT_IDENTITY
    assert build_persona("", [], ["u"]).startswith(DEFAULT_IDENTITY + "\n\n" + RULE)


def test_huge_soul_is_cut_head_and_tail() -> None:
    persona = build_persona("H" * 15000 + "T" * 15000)
    assert persona.startswith("H" * 14000) and persona.endswith("T" * 4000)
    assert "[... SOUL.md truncated ...]" in persona


def test_with_persona_merges_client_system_messages_after_persona() -> None:
    messages = [
        {"role": "system", "content": "Client rule 1."},
        {"role": "user", "content": "hi"},
        {"role": "developer", "content": [{"type": "text", "text": "Client rule 2."}]},
        {"role": "assistant", "content": "hello"},
    ]
    out = with_persona("PERSONA", messages)
    assert out[0] == {"role": "system", "content": "PERSONA\n\nClient rule 1.\n\nClient rule 2."}
    assert out[1:] == [messages[1], messages[3]]


def test_with_persona_without_client_system() -> None:
    out = with_persona("PERSONA", [{"role": "user", "content": "hi"}])
    assert out == [{"role": "system", "content": "PERSONA"}, {"role": "user", "content": "hi"}]
