"""The response store: migrations from a blank database, scoping, chains, retention, usage.

Migrations are tested the simonw/llm way (``tests/test_migrate.py``): from an empty
database, step by step, and again as a no-op. Every other test runs against each
backend through the ``backend`` fixture, on one event loop per test (anyio's plugin).
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from hermes_api.settings import Retention, StoreConfig
from hermes_api.store import Quota, StoredResponse, UsageRecord, UsageSummary, UsageTotals
from hermes_api.store.migrations import MIGRATIONS, migrate, migrate_async
from hermes_api.store.sqlite import DB_NAME, SQLiteStore

pytestmark = pytest.mark.anyio

DAY = 86400.0
T0 = 1_700_000_000.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    """A settable Unix clock."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(rid: str, *, owner: str = "k1", profile: str = "alpha", at: float = T0, **kw: Any) -> StoredResponse:
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


def turn(uid: str, *, key: str = "team", profile: str = "alpha", at: float = T0, **kw: Any) -> UsageRecord:
    values: dict[str, Any] = {"stream": 0, "status": 200, "input_tokens": 10, "output_tokens": 5, "duration": 0.5} | kw
    return UsageRecord(
        id=uid,
        created_at=at,
        key_name=key,
        profile=profile,
        model=f"model-{profile}",
        operation="create_chat_completion",
        request_id=f"req_{uid}",
        **values,
    )


class Backend:
    """How a test opens stores of one kind on one database, and looks inside it."""

    name: str

    async def open(self, retention: Retention, clock: Clock) -> Any:
        raise NotImplementedError

    async def rows(self, sql: str) -> list[tuple[Any, ...]]:
        raise NotImplementedError


class SQLiteBackend(Backend):
    name = "sqlite"

    def __init__(self, state: Path) -> None:
        self.state = state

    async def open(self, retention: Retention, clock: Clock) -> SQLiteStore:
        return await SQLiteStore.open(self.state, retention, clock=clock)

    async def rows(self, sql: str) -> list[tuple[Any, ...]]:
        db = sqlite3.connect(self.state / DB_NAME)
        try:
            return db.execute(sql).fetchall()
        finally:
            db.close()


class PostgreSQLBackend(Backend):
    name = "postgresql"

    def __init__(self, url: str) -> None:
        self.url = url

    async def open(self, retention: Retention, clock: Clock) -> Any:
        from hermes_api.store.postgresql import PostgreSQLStore

        return await PostgreSQLStore.open(StoreConfig(url=self.url, pool_size=4), retention, clock=clock)

    async def rows(self, sql: str) -> list[tuple[Any, ...]]:
        async with await psycopg.AsyncConnection.connect(self.url) as conn:
            return await (await conn.execute(sql)).fetchall()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each store test runs on SQLite and on PostgreSQL (a database of its own)."""
    if request.param == "postgresql":
        return PostgreSQLBackend(request.getfixturevalue("postgres_url"))
    return SQLiteBackend(tmp_path / "state")


@pytest.fixture
async def open_store(backend: Backend) -> AsyncIterator[Callable[..., Any]]:
    """Open a store on the test's database (any number of times); closed at teardown."""
    opened: list[Any] = []

    async def make(retention: Retention | None = None, clock: Clock | None = None) -> Any:
        store = await backend.open(retention or Retention(), clock or Clock())
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.aclose()


# -- migrations ---------------------------------------------------------------------------


def columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]


NAMES = ["m001_responses", "m002_session_turns", "m003_usage", "m004_usage_delegation"]
USAGE_COLUMNS = [
    "seq",
    "id",
    "created_at",
    "key_name",
    "profile",
    "model",
    "operation",
    "stream",
    "request_id",
    "status",
    "error",
    "input_tokens",
    "output_tokens",
    "duration",
    "delegated_by",
    "caller_request_id",
]


def test_migrations_from_a_blank_database(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "blank.db", isolation_level=None)
    assert migrate(db) == [m.__name__ for m in MIGRATIONS] == NAMES
    assert [r[0] for r in db.execute("SELECT name FROM _migrations ORDER BY rowid")] == NAMES
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
    assert columns(db, "usage") == USAGE_COLUMNS
    assert migrate(db) == []  # a second run changes nothing
    assert db.execute("SELECT count(*) FROM _migrations").fetchone()[0] == len(NAMES)


def test_migrations_step_by_step_keep_the_data(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    assert migrate(db, MIGRATIONS[:1]) == ["m001_responses"]
    assert "session_turns" not in {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    db.execute(
        "INSERT INTO responses (id, owner, profile, created_at, input_items, messages, body)"
        " VALUES ('resp_old', 'k', 'p', 1, '[]', '[]', '{}')"
    )
    assert migrate(db) == ["m002_session_turns", "m003_usage", "m004_usage_delegation"]
    assert db.execute("SELECT id FROM responses").fetchall() == [("resp_old",)]


def test_a_failing_migration_leaves_nothing_behind(tmp_path: Path) -> None:
    def m999_broken(sql: Any) -> list[str]:
        return ["CREATE TABLE half_done (x INTEGER)", "THIS IS NOT SQL"]

    db = sqlite3.connect(tmp_path / "b.db", isolation_level=None)
    with pytest.raises(sqlite3.OperationalError):
        migrate(db, [*MIGRATIONS, m999_broken])
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "half_done" not in tables and "usage" in tables
    assert db.execute("SELECT count(*) FROM _migrations WHERE name = 'm999_broken'").fetchone()[0] == 0


async def pg_tables(conn: psycopg.AsyncConnection) -> set[str]:
    cursor = await conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {row[0] for row in await cursor.fetchall()}


async def pg_columns(conn: psycopg.AsyncConnection, table: str) -> list[str]:
    cursor = await conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = %s ORDER BY ordinal_position", (table,)
    )
    return [row[0] for row in await cursor.fetchall()]


async def test_postgresql_migrations_from_a_blank_database_step_by_step(postgres_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        assert await migrate_async(conn, MIGRATIONS[:1]) == ["m001_responses"]
        assert await pg_tables(conn) == {"_migrations", "responses"}
        await conn.execute(
            "INSERT INTO responses (id, owner, profile, created_at, input_items, messages, body)"
            " VALUES ('resp_old', 'k', 'p', 1, '[]', '[]', '{}')"
        )
        assert await migrate_async(conn) == NAMES[1:]
        assert await migrate_async(conn) == []
        cursor = await conn.execute("SELECT name FROM _migrations ORDER BY applied_at, name")
        assert [row[0] for row in await cursor.fetchall()] == NAMES
        assert await pg_columns(conn, "usage") == USAGE_COLUMNS
        assert await (await conn.execute("SELECT id FROM responses")).fetchall() == [("resp_old",)]


async def test_postgresql_schema_matches_sqlite(postgres_url: str, tmp_path: Path) -> None:
    """One list of migrations: the same tables and columns, in the same order, on both."""
    lite = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    migrate(lite)
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await migrate_async(conn)
        for table in ("responses", "session_turns", "usage", "_migrations"):
            assert await pg_columns(conn, table) == columns(lite, table), table


async def test_a_failing_postgresql_migration_leaves_nothing_behind(postgres_url: str) -> None:
    def m004_broken(sql: Any) -> list[str]:
        return ["CREATE TABLE half_done (x INTEGER)", "THIS IS NOT SQL"]

    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.SyntaxError):
            await migrate_async(conn, [*MIGRATIONS, m004_broken])
        assert "half_done" not in await pg_tables(conn) and "usage" in await pg_tables(conn)
        found = await conn.execute("SELECT count(*) FROM _migrations WHERE name = 'm004_broken'")
        assert await found.fetchone() == (0,)


async def test_replicas_starting_together_apply_each_migration_once(postgres_url: str) -> None:
    async def one() -> list[str]:
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
            return await migrate_async(conn)

    results = await asyncio.gather(*(one() for _ in range(4)))
    assert sorted(name for applied in results for name in applied) == NAMES


async def test_the_sqlite_database_is_private_and_wal(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path / "state", Retention())
    await store.aclose()
    path = tmp_path / "state" / DB_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


# -- responses and sessions -------------------------------------------------------------


async def test_responses_are_scoped_by_owner_and_profile(open_store) -> None:
    store = await open_store()
    await store.put_response(record("resp_1"))
    assert (await store.get_response("k1", "resp_1")).profile == "alpha"
    assert (await store.get_response("k1", "resp_1", "alpha")).body == {"id": "resp_1", "object": "response"}
    assert await store.get_response("k2", "resp_1") is None
    assert await store.get_response("k1", "resp_1", "beta") is None
    assert await store.conversation("k2", "alpha", "resp_1") is None
    assert await store.conversation("k1", "beta", "resp_1") is None
    assert await store.delete_response("k2", "alpha", "resp_1") is False
    assert await store.delete_response("k1", "beta", "resp_1") is False
    assert await store.delete_response("k1", "alpha", "resp_1") is True
    assert await store.get_response("k1", "resp_1") is None
    assert await store.delete_response("k1", "alpha", "resp_1") is False


async def test_a_stored_response_reads_back_exactly(open_store) -> None:
    store = await open_store()
    original = record("resp_x", previous="resp_w", messages=[{"role": "user", "content": "ünï ✓ \u2028"}])
    await store.put_response(original)
    assert await store.get_response("k1", "resp_x") == original


async def test_a_chain_replays_every_turn_in_order(open_store) -> None:
    store = await open_store()
    await store.put_response(record("r1"))
    await store.put_response(record("r2", previous="r1"))
    await store.put_response(record("r3", previous="r2"))
    chain = await store.conversation("k1", "alpha", "r3")
    assert [m["content"] for m in chain] == ["q-r1", "r1", "q-r2", "r2", "q-r3", "r3"]
    # A deleted link: the chain starts after the gap.
    await store.delete_response("k1", "alpha", "r2")
    chain = await store.conversation("k1", "alpha", "r3")
    assert [m["content"] for m in chain] == ["q-r3", "r3"]


async def test_a_duplicate_id_fails_alone_and_stores_nothing(open_store) -> None:
    store = await open_store()
    await store.put_response(record("dup"))
    results = await asyncio.gather(
        store.put_response(record("dup", owner="k2")), store.put_response(record("other")), return_exceptions=True
    )
    assert isinstance(results[0], Exception) and results[1] is None
    assert await store.get_response("k2", "dup") is None
    assert (await store.get_response("k1", "other")).id == "other"


async def test_concurrent_writes_are_all_committed(open_store) -> None:
    store = await open_store(Retention(max_responses=None, max_session_turns=None))
    await asyncio.gather(
        *(store.put_response(record(f"c{i}")) for i in range(100)),
        *(store.append_session("k1", "alpha", "s", [{"role": "user", "content": f"t{i}"}]) for i in range(100)),
    )
    assert all([await store.get_response("k1", f"c{i}") for i in range(100)])
    assert len(await store.session_messages("k1", "alpha", "s")) == 100


async def test_retention_by_count_keeps_the_newest(open_store) -> None:
    store = await open_store(Retention(max_age_days=None, max_responses=3, max_session_turns=2))
    for i in range(5):
        await store.put_response(record(f"r{i}"))
        await store.append_session("k1", "alpha", "chat", [{"role": "user", "content": f"t{i}"}])
    kept = [i for i in range(5) if await store.get_response("k1", f"r{i}")]
    assert kept == [2, 3, 4]
    assert [m["content"] for m in await store.session_messages("k1", "alpha", "chat")] == ["t3", "t4"]


async def test_retention_by_age_hides_and_then_deletes(open_store, backend: Backend) -> None:
    clock = Clock()
    store = await open_store(Retention(max_age_days=30, max_responses=None), clock)
    await store.put_response(record("old", at=clock.now))
    await store.append_session("k1", "alpha", "chat", [{"role": "user", "content": "old"}])
    await store.record_usage(turn("u-old", at=clock.now))
    clock.now += 29 * DAY
    await store.put_response(record("new", at=clock.now))
    assert await store.get_response("k1", "old") is not None
    clock.now += 2 * DAY  # "old" is 31 days old now, "new" 2 days
    assert await store.get_response("k1", "old") is None  # expired: never served
    assert await store.conversation("k1", "alpha", "old") is None
    assert await store.session_messages("k1", "alpha", "chat") == []
    assert await store.usage_since("team", 0) == UsageTotals()
    await store.prune()
    assert await backend.rows("SELECT id FROM responses") == [("new",)]
    assert await backend.rows("SELECT count(*) FROM session_turns") == [(0,)]
    assert await backend.rows("SELECT count(*) FROM usage") == [(0,)]


async def test_retention_applies_when_the_store_opens(open_store) -> None:
    store = await open_store(Retention(max_responses=None))
    for i in range(4):
        await store.put_response(record(f"r{i}"))
    await store.aclose()
    reopened = await open_store(Retention(max_responses=1))
    assert [i for i in range(4) if await reopened.get_response("k1", f"r{i}")] == [3]


async def test_sessions_are_scoped_and_ordered(open_store) -> None:
    store = await open_store()
    turns = [("k1", "alpha", "a1"), ("k2", "alpha", "x"), ("k1", "beta", "y"), ("k1", "alpha", "a2")]
    for owner, profile, text in turns:
        await store.append_session(owner, profile, "chat", [{"role": "user", "content": text}])
    assert [m["content"] for m in await store.session_messages("k1", "alpha", "chat")] == ["a1", "a2"]
    assert await store.session_messages("k1", "alpha", "other") == []


async def test_two_stores_on_one_database_see_each_other(open_store) -> None:
    """What workers and replicas rely on: a write through one is read through the other."""
    first, second = await open_store(), await open_store()
    await first.put_response(record("shared"))
    await second.append_session("k1", "alpha", "s", [{"role": "user", "content": "from the second"}])
    await second.record_usage(turn("u1"))
    assert (await second.get_response("k1", "shared")).id == "shared"
    assert await first.session_messages("k1", "alpha", "s") == [{"role": "user", "content": "from the second"}]
    assert (await first.usage_since("team", T0)).requests == 1
    assert await second.delete_response("k1", "alpha", "shared") is True
    assert await first.get_response("k1", "shared") is None


# -- usage ------------------------------------------------------------------------------


async def test_usage_totals_per_key_and_profile_since_a_time(open_store) -> None:
    store = await open_store()
    await store.record_usage(turn("u1", at=T0 - 120))
    await store.record_usage(turn("u2", at=T0 - 30, input_tokens=7, output_tokens=3))
    await store.record_usage(turn("u3", at=T0 - 20, profile="beta", input_tokens=1, output_tokens=1))
    await store.record_usage(turn("u4", at=T0 - 10, input_tokens=None, output_tokens=None, status=502))
    await store.record_usage(turn("other", at=T0 - 5, key="someone-else"))
    assert await store.usage_since("team", T0 - 60) == UsageTotals(3, 8, 4, T0 - 30)
    assert await store.usage_since("team", T0 - 60, "alpha") == UsageTotals(2, 7, 3, T0 - 30)
    assert await store.usage_since("team", 0) == UsageTotals(4, 18, 9, T0 - 120)
    assert await store.usage_since("nobody", 0) == UsageTotals()


async def test_usage_keeps_what_the_provider_did_not_say_as_unknown(open_store, backend: Backend) -> None:
    store = await open_store()
    await store.record_usage(turn("u1", input_tokens=None, output_tokens=None, error="upstream_timeout", status=504))
    rows = await backend.rows("SELECT input_tokens, output_tokens, status, error FROM usage")
    assert rows == [(None, None, 504, "upstream_timeout")]


async def test_usage_rows_of_every_shape_committed_together_read_back_as_given(open_store, backend: Backend) -> None:
    """A turn with every field, one the provider gave no figures for, a failed one and a
    delegated one, queued into one commit (on SQLite, the common ones bind fewer
    parameters): each row reads back exactly as it was recorded."""
    store = await open_store()
    records = [
        turn("plain", stream=1),
        turn("no-figures", input_tokens=None, output_tokens=None),
        turn("failed", status=502, error="upstream_unavailable", stream=True),
        turn("delegated", delegated_by="coder", caller_request_id="req_caller"),
        turn("plain-2", input_tokens=0, output_tokens=0, duration=0.0),
    ]
    await asyncio.gather(*(store.record_usage(r) for r in records))
    rows = await backend.rows(f"SELECT {', '.join(UsageRecord._fields)} FROM usage ORDER BY seq")
    assert sorted(rows) == sorted(tuple(int(v) if isinstance(v, bool) else v for v in r) for r in records)


async def test_start_usage_then_record_completes_one_row(open_store, backend: Backend) -> None:
    store = await open_store()
    started = turn("u1", status=None, input_tokens=None, output_tokens=None, duration=None)
    assert await store.start_usage(started, [Quota(since=T0 - 60, max_requests=1)]) is None
    assert await store.usage_since("team", T0 - 60) == UsageTotals(1, 0, 0, T0)  # in flight counts
    await store.record_usage(turn("u1", input_tokens=4, output_tokens=2))
    assert await backend.rows("SELECT id, status, input_tokens, output_tokens FROM usage") == [("u1", 200, 4, 2)]


async def test_start_usage_refuses_once_a_quota_is_spent_even_concurrently(open_store) -> None:
    """50 turns at once against a bound of 10 requests a minute: exactly 10 start."""
    store = await open_store()
    quota = Quota(since=T0 - 60, max_requests=10)
    results = await asyncio.gather(*(store.start_usage(turn(f"u{i}", status=None), [quota]) for i in range(50)))
    assert results.count(None) == 10 and results.count(quota) == 40
    assert (await store.usage_since("team", T0 - 60)).requests == 10
    # Another key, and the same key for another profile under a per-profile quota, are not affected.
    assert await store.start_usage(turn("x", key="other"), [quota]) is None
    per_profile = Quota(since=T0 - 60, max_requests=1, profile="beta")
    assert await store.start_usage(turn("b1", profile="beta"), [per_profile]) is None
    assert await store.start_usage(turn("b2", profile="beta"), [per_profile]) == per_profile


async def test_start_usage_refuses_once_tokens_are_spent(open_store) -> None:
    store = await open_store()
    quota = Quota(since=T0 - DAY, max_tokens=20)
    await store.record_usage(turn("u1", input_tokens=12, output_tokens=7))  # 19: one more may start
    assert await store.start_usage(turn("u2", status=None), [quota]) is None
    await store.record_usage(turn("u2", input_tokens=1, output_tokens=1))  # 21
    assert await store.start_usage(turn("u3", status=None), [quota]) == quota


async def test_usage_summary_by_key_profile_and_day(open_store) -> None:
    store = await open_store()
    await store.record_usage(turn("u1", at=T0, input_tokens=3, output_tokens=2, duration=1.0))
    await store.record_usage(turn("u2", at=T0 + 1, profile="beta", input_tokens=None, output_tokens=None))
    await store.record_usage(turn("u3", at=T0 + DAY, key="bot", status=502, error="upstream_unavailable"))
    await store.record_usage(turn("u4", at=T0 - DAY, key="bot"))  # before "since"
    assert await store.usage_summary(T0, "key") == [
        UsageSummary("bot", 1, 1, 10, 5, 0, 0.5),
        UsageSummary("team", 2, 0, 3, 2, 1, 1.5),
    ]
    assert [(s.group, s.requests) for s in await store.usage_summary(T0, "profile")] == [("alpha", 2), ("beta", 1)]
    # 1_700_000_000 is 2023-11-14 22:13:20 UTC.
    assert [(s.group, s.requests) for s in await store.usage_summary(T0, "day")] == [
        ("2023-11-14", 2),
        ("2023-11-15", 1),
    ]


async def test_find_items_by_id_within_owner_profile_and_retention(open_store) -> None:
    clock = Clock()
    store = await open_store(Retention(max_age_days=1), clock)

    async def put(rid: str, owner: str = "k1", profile: str = "alpha", at: float = clock.now) -> None:
        item = {"id": f"fc_{rid}", "type": "function_call", "call_id": f"call_{rid}", "name": "f", "arguments": "{}"}
        stored = record(rid, owner=owner, profile=profile, at=at)
        await store.put_response(dataclasses.replace(stored, body={"id": rid, "output": [item]}))

    for n in range(450):  # more ids than one statement could take as variables
        await put(f"r{n}")
    await put("other-key", owner="k2")
    await put("other-profile", profile="beta")
    await put("old", at=clock.now - 2 * DAY)
    ids = [f"fc_r{n}" for n in range(450)] + ["msg_in_r7", "fc_r7", "fc_other-key", "fc_other-profile", "fc_old"]
    mine = await store.find_items("k1", "alpha", ids)
    theirs = await store.find_items("k2", "alpha", ["fc_r1", "fc_other-key"])
    assert set(mine) == {f"fc_r{n}" for n in range(450)} | {"msg_in_r7"}
    assert mine["fc_r3"]["call_id"] == "call_r3" and mine["msg_in_r7"]["type"] == "message"
    assert set(theirs) == {"fc_other-key"}


async def test_a_postgresql_outage_is_store_unavailable_and_passes_by_itself(caplog) -> None:
    """A stopped server: every call fails at once with StoreUnavailableError (503), nothing
    half-written; started again, the same store object works without being reopened."""
    from hermes_api.errors import StoreUnavailableError
    from hermes_api.store.postgresql import PostgreSQLStore

    from .conftest import PostgresCluster

    cluster = PostgresCluster()
    try:
        url = cluster.create_database("outage")
        store = await PostgreSQLStore.open(StoreConfig(url=url, pool_size=2, timeout=3), Retention(), clock=Clock())
        await store.put_response(record("before"))
        await asyncio.to_thread(cluster.stop)
        for call in (store.put_response(record("during")), store.get_response("k1", "before"), store.prune()):
            with pytest.raises(StoreUnavailableError):
                await call
        await asyncio.to_thread(cluster.start)
        for _ in range(300):  # the pool reconnects with a backoff of 1, 2, 4 ... s
            try:
                found = await store.get_response("k1", "before")
                break
            except StoreUnavailableError:
                await asyncio.sleep(0.1)
        assert found is not None and await store.get_response("k1", "during") is None
        await store.put_response(record("after"))
        await store.aclose()
    finally:
        cluster.remove()
    log = caplog.text
    assert "the response store (PostgreSQL) is unreachable" in log and "reachable again" in log
    assert PostgresCluster.PASSWORD not in log


async def test_usage_rows_committed_together_fail_alone(tmp_path: Path) -> None:
    """Rows that share a commit (one multi-row INSERT on SQLite): one that the database
    refuses fails its own caller only; the others are stored."""
    store = await SQLiteStore.open(tmp_path / "state", Retention(), clock=Clock())
    db = sqlite3.connect(tmp_path / "state" / DB_NAME)
    db.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON usage WHEN NEW.request_id = 'req_bad'"
        " BEGIN SELECT RAISE(ABORT, 'no'); END"
    )
    db.commit()
    db.close()
    results = await asyncio.gather(
        *(store.record_usage(turn(uid)) for uid in ("a", "bad", "b")), return_exceptions=True
    )
    assert results[0] is None and isinstance(results[1], sqlite3.IntegrityError) and results[2] is None
    assert (await store.usage_since("team", 0)).requests == 2
    await store.aclose()
