"""The response store: migrations from a blank database, scoping, chains, retention.

Migrations are tested the simonw/llm way (``tests/test_migrate.py``): from an empty
file, step by step, and again as a no-op. The store runs on its own thread, so the
async methods are driven with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import stat
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from hermes_api.migrations import MIGRATIONS, migrate
from hermes_api.settings import Retention
from hermes_api.store import DB_NAME, SQLiteStore, StoredResponse

T = TypeVar("T")
DAY = 86400.0


class Clock:
    """A settable Unix clock."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(rid: str, *, owner: str = "k1", profile: str = "alpha", at: float = 1_700_000_000.0, **kw: Any):
    return StoredResponse(
        id=rid,
        owner=owner,
        profile=profile,
        created_at=at,
        previous_response_id=kw.get("previous"),
        input_items=[{"id": f"msg_in_{rid}", "type": "message", "role": "user", "content": []}],
        messages=kw.get("messages", [{"role": "user", "content": f"q-{rid}"}, {"role": "assistant", "content": rid}]),
        body={"id": rid, "object": "response"},
    )


def run(make: Callable[[SQLiteStore], Coroutine[Any, Any, T]], store: SQLiteStore) -> T:
    return asyncio.run(make(store))


@pytest.fixture
def open_store(tmp_path: Path) -> Callable[..., SQLiteStore]:
    """Open a store in tmp_path; closed at teardown."""
    opened: list[SQLiteStore] = []

    def make(retention: Retention | None = None, clock: Clock | None = None) -> SQLiteStore:
        store = asyncio.run(SQLiteStore.open(tmp_path / "state", retention or Retention(), clock=clock or Clock()))
        opened.append(store)
        return store

    yield make
    for store in opened:
        asyncio.run(store.aclose())


def columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]


def test_migrations_from_a_blank_database(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "blank.db", isolation_level=None)
    assert migrate(db) == [m.__name__ for m in MIGRATIONS] == ["m001_responses", "m002_session_turns"]
    assert [r[0] for r in db.execute("SELECT name FROM _migrations ORDER BY rowid")] == [
        "m001_responses",
        "m002_session_turns",
    ]
    assert columns(db, "responses") == [
        "seq",
        "id",
        "owner",
        "profile",
        "created_at",
        "previous_response_id",
        "input_items",
        "messages",
        "body",
    ]
    assert columns(db, "session_turns") == ["seq", "owner", "profile", "session_id", "created_at", "messages"]
    assert migrate(db) == []  # a second run changes nothing
    assert db.execute("SELECT count(*) FROM _migrations").fetchone()[0] == 2


def test_migrations_step_by_step_keep_the_data(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    assert migrate(db, MIGRATIONS[:1]) == ["m001_responses"]
    assert "session_turns" not in {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    db.execute(
        "INSERT INTO responses (id, owner, profile, created_at, input_items, messages, body)"
        " VALUES ('resp_old', 'k', 'p', 1, '[]', '[]', '{}')"
    )
    assert migrate(db) == ["m002_session_turns"]
    assert db.execute("SELECT id FROM responses").fetchall() == [("resp_old",)]


def test_a_failing_migration_leaves_nothing_behind(tmp_path: Path) -> None:
    def m003_broken(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("boom")

    db = sqlite3.connect(tmp_path / "b.db", isolation_level=None)
    with pytest.raises(RuntimeError):
        migrate(db, [*MIGRATIONS, m003_broken])
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "half_done" not in tables and "session_turns" in tables
    assert db.execute("SELECT count(*) FROM _migrations WHERE name = 'm003_broken'").fetchone()[0] == 0


def test_the_database_is_private_wal_and_full_sync(open_store, tmp_path: Path) -> None:
    open_store()
    path = tmp_path / "state" / DB_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_responses_are_scoped_by_owner_and_profile(open_store) -> None:
    store = open_store()
    run(lambda s: s.put_response(record("resp_1")), store)
    assert run(lambda s: s.get_response("k1", "resp_1"), store).profile == "alpha"
    assert run(lambda s: s.get_response("k1", "resp_1", "alpha"), store).body == {"id": "resp_1", "object": "response"}
    assert run(lambda s: s.get_response("k2", "resp_1"), store) is None
    assert run(lambda s: s.get_response("k1", "resp_1", "beta"), store) is None
    assert run(lambda s: s.conversation("k2", "alpha", "resp_1"), store) is None
    assert run(lambda s: s.conversation("k1", "beta", "resp_1"), store) is None
    assert run(lambda s: s.delete_response("k2", "alpha", "resp_1"), store) is False
    assert run(lambda s: s.delete_response("k1", "beta", "resp_1"), store) is False
    assert run(lambda s: s.delete_response("k1", "alpha", "resp_1"), store) is True
    assert run(lambda s: s.get_response("k1", "resp_1"), store) is None
    assert run(lambda s: s.delete_response("k1", "alpha", "resp_1"), store) is False


def test_a_chain_replays_every_turn_in_order(open_store) -> None:
    store = open_store()
    run(lambda s: s.put_response(record("r1")), store)
    run(lambda s: s.put_response(record("r2", previous="r1")), store)
    run(lambda s: s.put_response(record("r3", previous="r2")), store)
    chain = run(lambda s: s.conversation("k1", "alpha", "r3"), store)
    assert [m["content"] for m in chain] == ["q-r1", "r1", "q-r2", "r2", "q-r3", "r3"]
    # A deleted link: the chain starts after the gap.
    run(lambda s: s.delete_response("k1", "alpha", "r2"), store)
    chain = run(lambda s: s.conversation("k1", "alpha", "r3"), store)
    assert [m["content"] for m in chain] == ["q-r3", "r3"]


def test_retention_by_count_keeps_the_newest(open_store) -> None:
    store = open_store(Retention(max_age_days=None, max_responses=3, max_session_turns=2))
    for i in range(5):
        run(lambda s, i=i: s.put_response(record(f"r{i}")), store)
        run(lambda s, i=i: s.append_session("k1", "alpha", "chat", [{"role": "user", "content": f"t{i}"}]), store)
    kept = [i for i in range(5) if run(lambda s, i=i: s.get_response("k1", f"r{i}"), store)]
    assert kept == [2, 3, 4]
    assert [m["content"] for m in run(lambda s: s.session_messages("k1", "alpha", "chat"), store)] == ["t3", "t4"]


def test_retention_by_age_hides_and_then_deletes(open_store, tmp_path: Path) -> None:
    clock = Clock()
    store = open_store(Retention(max_age_days=30, max_responses=None), clock)
    run(lambda s: s.put_response(record("old", at=clock.now)), store)
    run(lambda s: s.append_session("k1", "alpha", "chat", [{"role": "user", "content": "old"}]), store)
    clock.now += 29 * DAY
    run(lambda s: s.put_response(record("new", at=clock.now)), store)
    assert run(lambda s: s.get_response("k1", "old"), store) is not None
    clock.now += 2 * DAY  # "old" is 31 days old now, "new" 2 days
    assert run(lambda s: s.get_response("k1", "old"), store) is None  # expired: never served
    assert run(lambda s: s.conversation("k1", "alpha", "old"), store) is None
    assert run(lambda s: s.session_messages("k1", "alpha", "chat"), store) == []
    run(lambda s: s.prune(), store)
    db = sqlite3.connect(tmp_path / "state" / DB_NAME)
    assert db.execute("SELECT id FROM responses").fetchall() == [("new",)]
    assert db.execute("SELECT count(*) FROM session_turns").fetchone()[0] == 0
    db.close()


def test_retention_applies_when_the_store_opens(open_store, tmp_path: Path) -> None:
    store = open_store(Retention(max_responses=None))
    for i in range(4):
        run(lambda s, i=i: s.put_response(record(f"r{i}")), store)
    asyncio.run(store.aclose())
    reopened = open_store(Retention(max_responses=1))
    assert [i for i in range(4) if run(lambda s, i=i: s.get_response("k1", f"r{i}"), reopened)] == [3]


def test_sessions_are_scoped_and_ordered(open_store) -> None:
    store = open_store()
    for owner, profile, text in [
        ("k1", "alpha", "a1"),
        ("k2", "alpha", "x"),
        ("k1", "beta", "y"),
        ("k1", "alpha", "a2"),
    ]:
        run(
            lambda s, o=owner, p=profile, t=text: s.append_session(o, p, "chat", [{"role": "user", "content": t}]),
            store,
        )
    assert [m["content"] for m in run(lambda s: s.session_messages("k1", "alpha", "chat"), store)] == ["a1", "a2"]
    assert run(lambda s: s.session_messages("k1", "alpha", "other"), store) == []


def test_find_items_by_id_within_owner_profile_and_retention(open_store) -> None:
    clock = Clock()
    store = open_store(Retention(max_age_days=1), clock)

    async def put(rid: str, owner: str = "k1", profile: str = "alpha", at: float = clock.now) -> None:
        item = {"id": f"fc_{rid}", "type": "function_call", "call_id": f"call_{rid}", "name": "f", "arguments": "{}"}
        stored = record(rid, owner=owner, profile=profile, at=at)
        await store.put_response(dataclasses.replace(stored, body={"id": rid, "output": [item]}))

    async def scenario(s: SQLiteStore) -> list[dict]:
        for n in range(450):  # more ids than one statement takes
            await put(f"r{n}")
        await put("other-key", owner="k2")
        await put("other-profile", profile="beta")
        await put("old", at=clock.now - 2 * DAY)
        ids = [f"fc_r{n}" for n in range(450)] + ["msg_in_r7", "fc_r7", "fc_other-key", "fc_other-profile", "fc_old"]
        return [await s.find_items("k1", "alpha", ids), await s.find_items("k2", "alpha", ["fc_r1", "fc_other-key"])]

    mine, theirs = run(scenario, store)
    assert set(mine) == {f"fc_r{n}" for n in range(450)} | {"msg_in_r7"}
    assert mine["fc_r3"]["call_id"] == "call_r3" and mine["msg_in_r7"]["type"] == "message"
    assert set(theirs) == {"fc_other-key"}
