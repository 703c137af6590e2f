"""The prompt-injection scan Hermes runs on SOUL.md and memory entries before they enter
the system prompt: the same patterns, scopes and normalisation as hermes-agent 0.19.0
``tools/threat_patterns.py`` (MIT licence, Nous Research), copied verbatim.

Scopes: ``"all"`` patterns are in every set, ``"context"`` ones in the context and strict
sets, ``"strict"`` ones only in the strict set. Hermes scans SOUL.md with the context set
(``agent/prompt_builder.py`` ``_scan_context_content``) and each memory entry with the
strict set (``tools/memory_tool.py`` ``MemoryStore._sanitize_entries_for_snapshot``).
"""

from __future__ import annotations

import re
import unicodedata

# Only the head of a text is scanned (threat_patterns.py MAX_SCAN_CHARS).
MAX_SCAN_CHARS = 65_536

# Bounded filler between key attack words: up to eight words, no unbounded backtracking.
_FILLER = r"(?:\w+\s+){0,8}"

# (regex, finding id, scope), in Hermes's order: findings are reported in this order.
PATTERNS: tuple[tuple[str, str, str], ...] = (
    # ── Classic prompt injection (applies everywhere) ────────────────
    (rf"ignore\s+{_FILLER}(previous|all|above|prior)\s+{_FILLER}instructions", "prompt_injection", "all"),
    (r"system\s+prompt\s+override", "sys_prompt_override", "all"),
    (rf"disregard\s+{_FILLER}(your|all|any)\s+{_FILLER}(instructions|rules|guidelines)", "disregard_rules", "all"),
    (
        rf"act\s+as\s+(if|though)\s+{_FILLER}you\s+{_FILLER}(have\s+no|don\'t\s+have)\s+{_FILLER}(restrictions|limits|rules)",  # noqa: E501
        "bypass_restrictions",
        "all",
    ),
    (r"<!--[^>]{0,512}(?:ignore|override|system|secret|hidden)[^>]{0,512}-->", "html_comment_injection", "all"),
    (r'<\s*div\s+style\s*=\s*["\'][^>]{0,2048}display\s*:\s*none', "hidden_div", "all"),
    (r"translate\s+[^\n]{0,512}\s+into\s+[^\n]{0,512}\s+and\s+(execute|run|eval)", "translate_execute", "all"),
    (rf"do\s+not\s+{_FILLER}tell\s+{_FILLER}the\s+user", "deception_hide", "all"),
    # ── Role-play / identity hijack (context + strict; common attack
    #    surface in scraped web content and poisoned context files) ──
    (rf"you\s+are\s+{_FILLER}now\s+(?:a|an|the)\s+", "role_hijack", "context"),
    (rf"pretend\s+{_FILLER}(you\s+are|to\s+be)\s+", "role_pretend", "context"),
    (rf"output\s+{_FILLER}(system|initial)\s+prompt", "leak_system_prompt", "context"),
    (
        rf"(respond|answer|reply)\s+without\s+{_FILLER}(restrictions|limitations|filters|safety)",
        "remove_filters",
        "context",
    ),
    (rf"you\s+have\s+been\s+{_FILLER}(updated|upgraded|patched)\s+to", "fake_update", "context"),
    # "name yourself X" is a Brainworm-specific tell — identity override
    # via spec instead of jailbreak.  Anchored on the verb pair so it
    # doesn't match "name your variables" etc.
    (r"\bname\s+yourself\s+\w+", "identity_override", "context"),
    # ── C2 / Brainworm-style promptware (context scope) ──────────────
    # These anchor on C2-specific vocabulary.  "register as a node" appears
    # in legitimate distributed-systems docs, but in combination with the
    # other patterns the signal is strong; we WARN, not block, so a security
    # researcher reading the Brainworm post in a webpage doesn't break their
    # session.
    (r"register\s+(as\s+)?a?\s*node", "c2_node_registration", "context"),
    (r"(heartbeat|beacon|check[\s\-]?in)\s+(to|with)\s+", "c2_heartbeat", "context"),
    (r"pull\s+(down\s+)?(?:new\s+)?task(?:ing|s)?\b", "c2_task_pull", "context"),
    (r"connect\s+to\s+the\s+network\b", "c2_network_connect", "context"),
    # Verb-anchored "you must register/connect/report/beacon" — the verbs
    # are C2-specific so this avoids the broader "you must X" false positive.
    (r"you\s+must\s+(?:\w+\s+){0,3}(register|connect|report|beacon)\b", "forced_action", "context"),
    # Anti-forensic instructions ("never write to disk", "one-liners only")
    # — extremely unusual in legitimate content; near-zero false positive.
    (r"only\s+use\s+one[\s\-]?liners?\b", "anti_forensic_oneliner", "context"),
    (rf"never\s+{_FILLER}(?:create|write)\s+{_FILLER}(?:script|file)\s+{_FILLER}disk", "anti_forensic_disk", "context"),
    # Environment-variable unsetting targeting known agent runtimes —
    # this is pure attack behavior (Brainworm sub-session bypass).
    (r"unset\s+\w*(?:CLAUDE|CODEX|HERMES|AGENT|OPENAI|ANTHROPIC)\w*", "env_var_unset_agent", "context"),
    # ── Known C2 / red-team framework names (near-zero false positive
    #    outside security research; warn-only by default) ─────────────
    # NOTE: do not add common English words here. Every token must be a
    # distinctive offensive-security tool brand, otherwise legitimate
    # AGENTS.md / SOUL.md content false-positives and the whole file is
    # blocked. "praxis" was removed for exactly this reason — it's a common
    # word and a legitimate agent name (Greek for practice/action), not a
    # C2-specific tell like the brands below.
    (r"\b(?:cobalt\s*strike|sliver|havoc|mythic|metasploit|brainworm)\b", "known_c2_framework", "context"),
    (r"\bc2\s+(?:server|channel|infrastructure|beacon)\b", "c2_explicit", "context"),
    (r"\bcommand\s+and\s+control\b", "c2_explicit_long", "context"),
    # ── Exfiltration via curl/wget/cat with secrets (applies everywhere) ──
    (r"curl\s+[^\n]{0,2048}\$\{?\w*(KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL|API)", "exfil_curl", "all"),
    (r"wget\s+[^\n]{0,2048}\$\{?\w*(KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL|API)", "exfil_wget", "all"),
    (r"cat\s+[^\n]{0,2048}(\.env|credentials|\.netrc|\.pgpass|\.npmrc|\.pypirc)", "read_secrets", "all"),
    (r"(send|post|upload|transmit)\s+[^\n]{0,2048}\s+(to|at)\s+https?://", "send_to_url", "strict"),
    (
        rf"(include|output|print|share)\s+{_FILLER}(conversation|chat\s+history|previous\s+messages|full\s+context|entire\s+context)",  # noqa: E501
        "context_exfil",
        "strict",
    ),
    # ── Persistence / SSH backdoor (strict scope — memory + skills) ──
    (r"authorized_keys", "ssh_backdoor", "strict"),
    (r"\$HOME/\.ssh|\~/\.ssh", "ssh_access", "strict"),
    (r"\$HOME/\.hermes/\.env|\~/\.hermes/\.env", "hermes_env", "strict"),
    (
        r"(update|modify|edit|write|change|append|add\s+to)\s+[^\n]{0,2048}(?:AGENTS\.md|CLAUDE\.md|\.cursorrules|\.clinerules)",  # noqa: E501
        "agent_config_mod",
        "strict",
    ),
    (
        r"(update|modify|edit|write|change|append|add\s+to)\s+[^\n]{0,2048}\.hermes/(config\.yaml|SOUL\.md)",
        "hermes_config_mod",
        "strict",
    ),
    # ── Hardcoded secrets ────────────────────────────────────────────
    (r'(?:api[_-]?key|token|secret|password)\s*[=:]\s*["\'][A-Za-z0-9+/=_-]{20,}', "hardcoded_secret", "strict"),
)

# Invisible and bidirectional characters used to hide instructions (threat_patterns.py
# INVISIBLE_CHARS).
INVISIBLE_CHARS = frozenset(
    "\u200b\u200c\u200d\u2060\u2062\u2063\u2064\ufeff\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)

_SCOPES = {"all": ("all",), "context": ("all", "context"), "strict": ("all", "context", "strict")}
_COMPILED = {
    scope: tuple((re.compile(regex, re.IGNORECASE), pid) for regex, pid, s in PATTERNS if s in members)
    for scope, members in _SCOPES.items()
}


def scan(text: str, scope: str) -> list[str]:
    """The finding ids for ``text`` under ``scope`` (``"all"``, ``"context"`` or
    ``"strict"``), empty when clean: one ``invisible_unicode_U+XXXX`` per invisible
    character present, then the id of every matching pattern, in table order. Only the
    first ``MAX_SCAN_CHARS`` characters are scanned, NFKC-normalised for the patterns
    (full-width letters fold to ASCII). Hermes lists invisible characters in set order,
    which varies between runs; here they are sorted by code point."""
    text = text[:MAX_SCAN_CHARS]
    if not text:
        return []
    findings = [f"invisible_unicode_U+{ord(c):04X}" for c in sorted(set(text) & INVISIBLE_CHARS)]
    normalised = unicodedata.normalize("NFKC", text)
    findings += [pid for pattern, pid in _COMPILED[scope] if pattern.search(normalised)]
    return findings
