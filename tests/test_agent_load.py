"""The agent runtime under load: hundreds of concurrent turns over several agent profiles
and keys never cross profiles or keys, and a profile's turns share its one worker.

Every profile gets its own marks, all of the form ``ISO-<KIND>-<profile>-...``: its
persona (SOUL.md), a memory entry, a ``.env`` secret that only its terminal tool can
print, and the tag of every turn sent to it (with the key's name). The scripted provider
repeats the marks of the system prompt it got in each answer (``[[reveal:ISO-]]``), so an
answer shows what the agent was told; the terminal profiles' tools print their working
directory, ``$HERMES_HOME`` and the secret. Then every answer, every upstream request,
every row of ``responses.db`` and every row of every profile's ``state.db`` is searched
for another profile's marks and paths, and every session for another key's turns.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
import secrets
import sqlite3
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from hermes_api.app import create_app
from hermes_api.settings import Settings

from .conftest import HermesHome, LiveServer, ScriptedUpstream, add_agent_profile, worker_environ
from .test_agent import events
from .test_agent_faults import worker_pids

PROFILES = ("amber", "birch", "cedar", "dune")
TERMINAL = ("amber", "birch")  # with the terminal toolset
KEYS = {name: f"sk-load-{name}-{secrets.token_hex(8)}" for name in ("kilo", "lima", "mike")}
TURNS = 216
SESSION = "shared-conversation"  # the same X-Hermes-Session-Id from every key, on every profile
MARK = re.compile(r"ISO-([A-Z]+)-([a-z]+)-([\w-]+)")
COMMAND = 'pwd; echo "$HERMES_HOME"; echo "$PROFILE_SECRET"'
LOAD_TIMEOUT = 900.0  # seconds for the whole load; each turn's own client timeout


@dataclass(frozen=True)
class Plan:
    """One turn of the load: where it goes, how it is asked, what it runs."""

    index: int
    profile: str
    key: str
    api: str  # "chat" | "responses"
    stream: bool
    session: bool  # sends X-Hermes-Session-Id (chat only)
    tool: str | None  # "memory" | "terminal" | None

    @property
    def tag(self) -> str:
        return f"ISO-TURN-{self.profile}-{self.key}-{self.index}"

    def text(self) -> str:
        text = f"{self.tag} [[reveal:ISO-]]"
        if self.tool == "memory":
            entry = f"ISO-MEMADD-{self.profile}-{self.key}-{self.index}"
            args = {"action": "add", "target": "memory", "content": entry}
            text += f" [[tool:memory {json.dumps(args)}]]"
        elif self.tool == "terminal":
            text += f" [[tool:terminal {json.dumps({'command': COMMAND})}]]"
        return text


def plans() -> list[Plan]:
    """``TURNS`` turns, the same every run: every profile with every key, both APIs
    streamed and not, sessions, memory turns on every profile and terminal turns on the
    terminal profiles."""
    rng = random.Random(9)
    out = []
    for i in range(TURNS):
        profile, key = PROFILES[i % len(PROFILES)], list(KEYS)[(i // len(PROFILES)) % len(KEYS)]
        api = rng.choice(("chat", "responses"))
        tool = "memory" if i % 9 == 0 else "terminal" if profile in TERMINAL and i % 3 == 1 else None
        out.append(Plan(i, profile, key, api, rng.random() < 0.5, api == "chat" and rng.random() < 0.5, tool))
    return out


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory, scripted: ScriptedUpstream) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("load")
    home = HermesHome(root / "hermes")
    add_agent_profile(home, "default", scripted)
    marks = {}
    for name in PROFILES:
        marks[name] = {kind: f"ISO-{kind}-{name}-{secrets.token_hex(4)}" for kind in ("PERSONA", "MEMORY", "SECRET")}
        add_agent_profile(
            home, name, scripted, soul=f"You are {marks[name]['PERSONA']}.", memory=[marks[name]["MEMORY"]],
            env={"PROFILE_SECRET": marks[name]["SECRET"]}, config={"security": {"tirith_enabled": False}},
        )  # fmt: skip
    config = {
        "hermes_home": str(home.root),
        "state_dir": str(root / "state"),
        "expose": ["default", *PROFILES],
        "keys": [{"name": name, "key_env": f"K_{name.upper()}"} for name in KEYS],
        "agent": {
            "profiles": list(PROFILES),
            "turn_timeout": LOAD_TIMEOUT,
            "per_profile": {name: {"toolsets": ["memory", "terminal"]} for name in TERMINAL},
        },
    }
    path = root / "hermes-api.yaml"
    path.write_text(yaml.safe_dump(config))
    environ = worker_environ(root, **{f"K_{name.upper()}": key for name, key in KEYS.items()})
    server = LiveServer(create_app(Settings.load(path, environ), environ=environ)).__enter__()
    try:
        yield {"server": server, "home": home, "root": root, "marks": marks, "upstream": scripted}
    finally:
        server.__exit__()
    assert not any(worker_pids(home.dir(p)) for p in PROFILES), "a worker outlived the server"


# -- the load ----------------------------------------------------------------------------


async def run_turn(client: httpx.AsyncClient, plan: Plan) -> tuple[Plan, httpx.Response]:
    headers = {"Authorization": f"Bearer {KEYS[plan.key]}"}
    if plan.session:
        headers["X-Hermes-Session-Id"] = SESSION
    if plan.api == "chat":
        body = {"model": plan.profile, "messages": [{"role": "user", "content": plan.text()}], "stream": plan.stream}
        return plan, await client.post("/v1/chat/completions", json=body, headers=headers)
    body = {"model": plan.profile, "input": plan.text(), "stream": plan.stream}
    return plan, await client.post("/v1/responses", json=body, headers=headers)


def answer_text(plan: Plan, r: httpx.Response) -> str:
    """What the client was answered, as one text: the content (streamed: the deltas
    joined), and for the Responses API every output item (tool calls included)."""
    if plan.api == "chat" and not plan.stream:
        return r.json()["choices"][0]["message"]["content"]
    if plan.api == "chat":
        chunks = [json.loads(d) for _, d in events(r) if d != "[DONE]"]
        assert not [c for c in chunks if "error" in c], r.text
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    final = r.json() if not plan.stream else json.loads(events(r)[-1][1])
    if plan.stream:
        assert final["type"] == "response.completed", r.text[-500:]
        final = final["response"]
    return json.dumps(final["output"])


def load(url: str, work: list[Plan]) -> tuple[list[tuple[Plan, httpx.Response]], float]:
    """Every turn of ``work`` at once; the answers and the seconds it took."""

    async def everything() -> list[tuple[Plan, httpx.Response]]:
        limits = httpx.Limits(max_connections=len(work) + 10, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=url, timeout=LOAD_TIMEOUT, limits=limits) as client:
            async with asyncio.timeout(LOAD_TIMEOUT):
                return await asyncio.gather(*(run_turn(client, p) for p in work))

    started = time.monotonic()
    answers = asyncio.run(everything())
    return answers, time.monotonic() - started


# -- what each text may carry --------------------------------------------------------------


def foreign(text: str, profile: str, home: HermesHome) -> list[str]:
    """What in ``text`` belongs to a profile other than ``profile``: its marks, the path of
    its home (its working directory and ``$HERMES_HOME`` are under it)."""
    found = [m.group(0) for m in MARK.finditer(text) if m.group(2) != profile]
    found += [str(home.dir(p)) for p in PROFILES if p != profile and str(home.dir(p)) in text]
    return found


def turn_keys(text: str) -> set[str]:
    """The keys whose turns ``text`` holds (by the tags of those turns)."""
    return {m.group(3).split("-")[0] for m in MARK.finditer(text) if m.group(1) == "TURN"}


def table_rows(db_path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(table, row)`` for every row of every table of the SQLite database at ``db_path``."""
    db = sqlite3.connect(db_path)
    db.row_factory = sqlite3.Row
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for row in db.execute(f'SELECT * FROM "{table}"'):
                yield table, {k: row[k] for k in row.keys()}
    finally:
        db.close()


@pytest.mark.slow
def test_hundreds_of_concurrent_agent_turns_never_cross_profiles_or_keys(loaded: dict[str, Any]) -> None:
    home: HermesHome = loaded["home"]
    marks: dict[str, dict[str, str]] = loaded["marks"]
    work = plans()
    mix = Counter((p.api, p.stream, p.session, p.tool) for p in work)
    assert len(work) >= 200 and len({p.profile for p in work}) >= 4 and len({p.key for p in work}) >= 3
    assert {(api, stream) for api, stream, _, _ in mix} == {(a, s) for a in ("chat", "responses") for s in (0, 1)}
    assert {tool for *_, tool in mix} == {None, "memory", "terminal"} and any(s for _, _, s, _ in mix)
    before = len(loaded["upstream"].requests())

    answers, took = load(loaded["server"].url, work)

    upstream_calls = loaded["upstream"].requests()[before:]
    print(f"\n{len(work)} concurrent agent turns over {len(PROFILES)} profiles and {len(KEYS)} keys: {took:.1f} s, "
          f"{len(upstream_calls)} provider calls")  # fmt: skip
    wrong = [f"{p}: {r.status_code} {r.text[:300]}" for p, r in answers if r.status_code != 200]
    assert not wrong, wrong[:5]
    # One worker per profile served all of its turns, in the profile's own workspace.
    for name in PROFILES:
        (pid,) = worker_pids(home.dir(name))
        assert os.readlink(f"/proc/{pid}/cwd") == str(home.dir(name) / "workspace")

    # The answers: each shows its own profile's persona and memory, and nothing of another.
    for plan, r in answers:
        text, mine = answer_text(plan, r), marks[plan.profile]
        assert mine["PERSONA"] in text and mine["MEMORY"] in text, (plan, text[:500])
        if plan.tool is None:
            assert plan.tag in text, (plan, text[:500])
        if plan.tool == "terminal":
            assert str(home.dir(plan.profile) / "workspace") in text and mine["SECRET"] in text, text[:800]
            # $HERMES_HOME, on its own line of the command's output (a newline, JSON-escaped once or twice)
            assert re.search(re.escape(str(home.dir(plan.profile))) + r"(\n|\\+n)", text), text[:800]
        if plan.tool == "memory":
            assert "success" in text and "entry_count" in text, text[:500]  # the memory tool's result
        assert foreign(text, plan.profile, home) == [] and foreign(r.text, plan.profile, home) == [], plan
        assert turn_keys(r.text) <= {plan.key}, plan

    # What each profile's agent sent its provider: only its own prompt, history and tools.
    assert len(upstream_calls) >= len(work)
    for call in upstream_calls:
        profile = re.fullmatch(r"Bearer sk-(\w+)-upstream-key", call["auth"]).group(1)
        sent = json.dumps(call["body"])
        assert foreign(sent, profile, home) == [] and len(turn_keys(sent)) == 1, sent[:500]

    # Memory: each profile's MEMORY.md has its own entries, every one of them, no other.
    for name in PROFILES:
        memory = (home.dir(name) / "memories" / "MEMORY.md").read_text()
        added = {f"ISO-MEMADD-{p.profile}-{p.key}-{p.index}" for p in work if p.tool == "memory" and p.profile == name}
        assert foreign(memory, name, home) == [] and added <= set(re.findall(r"ISO-MEMADD-[\w-]+", memory))

    # responses.db: one row per Responses turn, each under its own key and profile.
    owners = {hashlib.sha256(key.encode()).hexdigest(): name for name, key in KEYS.items()}
    stored = [row for table, row in table_rows(loaded["root"] / "state" / "responses.db") if table == "responses"]
    assert len(stored) == sum(p.api == "responses" for p in work)
    for row in stored:
        text = json.dumps(row)
        assert foreign(text, row["profile"], home) == [] and turn_keys(text) == {owners[row["owner"]]}, text[:500]
    for table, row in table_rows(loaded["root"] / "state" / "responses.db"):
        if "profile" in row:
            assert foreign(json.dumps(row), row["profile"], home) == [], (table, row)

    # state.db: no row of a profile's database carries another's; no session two keys' turns.
    for name in PROFILES:
        turns: dict[str, set[str]] = defaultdict(set)  # session id -> the tags of the turns in it
        rows = 0
        for table, row in table_rows(home.dir(name) / "state.db"):
            text = json.dumps(row, default=str)
            rows += 1
            assert foreign(text, name, home) == [], (name, table, text[:500])
            if table == "messages" and row["role"] == "user":
                turns[row["session_id"]] |= {m.group(0) for m in MARK.finditer(text) if m.group(1) == "TURN"}
        assert rows > len(work) // len(PROFILES)
        mixed = {sid: tags for sid, tags in turns.items() if len(turn_keys(" ".join(tags))) != 1}
        assert mixed == {}
        # The same X-Hermes-Session-Id from each key: one session per key, all its turns in it.
        for key in KEYS:
            tags = {p.tag for p in work if p.profile == name and p.key == key and p.session}
            holding = [sid for sid, held in turns.items() if tags & held]
            assert tags == set() or (len(holding) == 1 and tags <= turns[holding[0]]), (name, key, holding)
