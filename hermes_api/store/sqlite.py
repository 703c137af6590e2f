"""``SQLiteStore``: the response store in one SQLite file in ``state_dir`` (the default).

Durability: WAL with ``synchronous=FULL``, so a write is acknowledged only after its
commit is on disk and survives a killed process or a power cut. One connection lives on
one dedicated thread; every call is queued there and never blocks the event loop.

Writes are committed in groups (``writes.WriteQueue``): the store's thread runs every
write waiting in one ``BEGIN IMMEDIATE`` … ``COMMIT``, each job in its own savepoint (one
that fails is rolled back alone and fails only its caller), the usage rows in one
multi-row ``INSERT``. A commit costs one ``fsync`` (~2-5 ms and ~0.15 ms of CPU on a
virtual disk), so grouping is what lets the store keep up with hundreds of turns a
second. Usage rows are the exception to ``FULL``: a group of nothing but usage rows
commits with ``synchronous=NORMAL`` (SQLite, "WAL mode": it survives a killed process,
the next FULL commit makes it durable, a power cut may lose it), so a chat turn, which
writes nothing else, costs no ``fsync``.

Retention: the count bounds of a table are applied in each commit that wrote to it,
the age bound at most every ``AGE_PRUNE_EVERY`` seconds (reads skip expired rows
meanwhile), and all of them at start and by ``prune()``.

Several processes (``serve --workers``) share the file safely: ``BEGIN IMMEDIATE`` takes
SQLite's write lock, and a process that finds it taken waits up to ``BUSY_TIMEOUT_MS``
for it; readers never wait (WAL).
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from typing import Any, TypeVar

import orjson

from ..context import run_sync
from ..settings import Retention
from . import (
    Message,
    QueuedRow,
    Quota,
    StoredResponse,
    UsageGrouping,
    UsageRecord,
    UsageSummary,
    UsageTotals,
)
from . import queries as q
from .migrations import SQLITE, migrate
from .writes import Job, Rows, WriteQueue

logger = logging.getLogger("hermes_api")

T = TypeVar("T")
ROWS_PER_STATEMENT = 256  # usage rows inserted by one statement (one call: the GIL is released once)
DB_NAME = "responses.db"
BUSY_TIMEOUT_MS = 10_000  # how long a process waits for another's write lock before failing the write
AGE_PRUNE_EVERY = 1.0  # seconds between deletions of expired rows
TABLES = ("responses", "session_turns", "usage")


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


class SQLiteStore:
    """``store.ResponseStore`` in one SQLite file, used from one dedicated thread.

    Open it with ``await SQLiteStore.open(state_dir, retention)``. ``clock`` gives Unix
    seconds (tests pass a fake one). The directory is created private (0700) and the
    database file 0600: it holds conversations.
    """

    def __init__(self, path: Path, retention: Retention, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.retention = retention
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hermes-store")
        self._db: sqlite3.Connection | None = None
        self._writes = WriteQueue(self._executor, self._commit)
        self._synchronous = "FULL"
        self._aged_at = float("-inf")  # time.monotonic() of the last deletion of expired rows

    @classmethod
    async def open(
        cls, state_dir: Path, retention: Retention, *, clock: Callable[[], float] = time.time
    ) -> SQLiteStore:
        """Create or open ``<state_dir>/responses.db``, migrate it, apply retention."""
        store = cls(state_dir / DB_NAME, retention, clock=clock)
        await store._run(store._open)
        return store

    async def _run(self, func: Callable[..., T], *args: object) -> T:
        return await run_sync(func, *args, executor=self._executor)

    def _open(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            logger.warning("the response store at %s cannot use WAL (journal mode %s)", self.path, mode)
        db.execute("PRAGMA synchronous=FULL")
        applied = migrate(db)
        if applied:
            logger.info("response store %s: applied %s", self.path, ", ".join(applied))
        self._db = db
        with self._transaction() as tx:
            self._prune(tx, TABLES, age=True)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``; rolled back if the block raises."""
        db = self._db
        assert db is not None, "the store is closed"
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    async def _write(self, job: Job, table: str | None) -> Any:
        return await self._writes.enqueue(job, table)

    def _commit(self) -> None:
        """One transaction for every write and usage row waiting (on the store's thread)."""
        writes, rows = self._writes.take()
        try:
            self._sync("FULL" if any(p.durable for p in writes) else "NORMAL")
            with self._transaction() as db:
                self._insert_rows(db, rows)
                for p in writes:
                    p.result = self._in_savepoint(db, functools.partial(p.job, db))
                now = time.monotonic()
                age = now - self._aged_at >= AGE_PRUNE_EVERY
                self._prune(db, {p.table for p in writes if p.table} | ({"usage"} if rows else set()), age=age)
                if age:
                    self._aged_at = now
        except Exception as exc:  # BEGIN or COMMIT failed (a full disk, a lock held too long)
            for p in writes:
                p.result = (None, exc)
            for r in rows:
                r.error = exc
        self._writes.settle(writes, rows)

    def _insert_rows(self, db: sqlite3.Connection, groups: list[Rows]) -> None:
        """Usage rows in multi-row INSERTs: one call releases the GIL once, where
        executemany handed it to the busy event loop and back for every row. A common
        row (``writes.Rows``) binds only its first ``queries.USAGE_COMMON`` fields:
        sqlite3 sends every parameter that is not an int, float or str through its
        adapter lookup, 2-3,000 instructions each, which cost a row's three Nones more
        than SQLite's insert itself."""
        for group in groups:
            self._insert(db, group, group.common, q.USAGE_COMMON)
            self._insert(db, group, group.other, len(UsageRecord._fields))

    def _insert(self, db: sqlite3.Connection, group: Rows, rows: list[tuple[object, ...]], width: int) -> None:
        """``rows`` of ``group`` (each ``width`` parameters) in chunks of a power of two
        rows (46 = 32 + 8 + 4 + 2), so that sqlite3's statement cache holds a few
        statements, not one of every size. A chunk that fails is written row by row, and
        the rows refused are noted in the group's ``failed``."""
        i = 0
        while i < len(rows):
            size = min(ROWS_PER_STATEMENT, 1 << ((len(rows) - i).bit_length() - 1))
            chunk, i = rows[i : i + size], i + size
            params = list(chain.from_iterable(chunk))  # in C: this thread holds the GIL meanwhile
            insert = functools.partial(db.execute, q.record_usage_rows(size, width), params)
            if self._in_savepoint(db, insert)[1] is None:
                continue
            for row in chunk:  # one of them fails: find it
                error = self._in_savepoint(db, functools.partial(db.execute, q.record_usage_rows(1, width), row))[1]
                if error is not None:
                    group.failed[str(row[0])] = error

    @staticmethod
    def _in_savepoint(db: sqlite3.Connection, call: Callable[[], Any]) -> tuple[Any, BaseException | None]:
        """``call()`` rolled back alone if it raises: ``(its value, None)`` or ``(None, the error)``."""
        db.execute("SAVEPOINT job")
        try:
            value: tuple[Any, BaseException | None] = (call(), None)
        except Exception as exc:
            db.execute("ROLLBACK TO job")
            value = (None, exc)
        db.execute("RELEASE job")
        return value

    def _sync(self, mode: str) -> None:
        if mode != self._synchronous:
            assert self._db is not None, "the store is closed"
            self._db.execute(f"PRAGMA synchronous={mode}")
            self._synchronous = mode

    def _cutoff(self) -> float:
        """Rows created before this Unix time are expired."""
        days = self.retention.max_age_days
        return float("-inf") if days is None else self._clock() - days * 86400

    def _prune(self, db: sqlite3.Connection, tables: Iterable[str], *, age: bool) -> None:
        """The count bounds of ``tables``; with ``age``, the age bound of every table."""
        keep = {"responses": self.retention.max_responses, "session_turns": self.retention.max_session_turns}
        if age:
            cutoff = self._cutoff()
            for table in TABLES:
                db.execute(f"DELETE FROM {table} WHERE created_at < ?", (cutoff,))
        for table in tables:
            if keep.get(table) is not None:
                # Rows with `keep` or more rows inserted after them: a rowid range, O(log n).
                db.execute(f"DELETE FROM {table} WHERE seq <= (SELECT max(seq) FROM {table}) - ?", (keep[table],))

    async def prune(self) -> None:
        await self._write(lambda db: self._prune(db, TABLES, age=True), None)

    def _read(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        assert self._db is not None, "the store is closed"
        return self._db.execute(sql, params).fetchall()

    # -- responses ------------------------------------------------------------------

    async def put_response(self, record: StoredResponse) -> None:
        r = record
        params = (r.id, r.owner, r.profile, r.created_at, r.previous_response_id)
        params += (_dumps(r.input_items), _dumps(r.messages), _dumps(r.body))
        await self._write(lambda db: db.execute(q.PUT_RESPONSE, params), "responses")

    async def get_response(self, owner: str, response_id: str, profile: str | None = None) -> StoredResponse | None:
        rows = await self._run(self._read, q.GET_RESPONSE, (response_id, owner, profile, self._cutoff()))
        return q.stored_response(rows[0]) if rows else None

    async def delete_response(self, owner: str, profile: str, response_id: str) -> bool:
        params = (response_id, owner, profile)
        return await self._write(lambda db: db.execute(q.DELETE_RESPONSE, params).rowcount > 0, None)

    async def conversation(self, owner: str, profile: str, response_id: str) -> list[Message] | None:
        scope = (owner, profile, self._cutoff())
        rows = await self._run(self._read, q.CONVERSATION, (response_id, *scope, *scope))
        return q.messages(rows) if rows else None

    async def find_items(self, owner: str, profile: str, item_ids: list[str]) -> dict[str, dict[str, Any]]:
        rows = await self._run(self._read, q.ITEM_ROWS, (owner, profile, self._cutoff()))
        return q.items_by_id(rows, item_ids)

    # -- chat sessions --------------------------------------------------------------

    async def session_messages(self, owner: str, profile: str, session_id: str) -> list[Message]:
        params = (owner, profile, session_id, self._cutoff())
        return q.messages(await self._run(self._read, q.SESSION_MESSAGES, params))

    async def append_session(self, owner: str, profile: str, session_id: str, messages: list[Message]) -> None:
        params = (owner, profile, session_id, self._clock(), _dumps(messages))
        await self._write(lambda db: db.execute(q.APPEND_SESSION, params), "session_turns")

    # -- usage ----------------------------------------------------------------------

    def record_usage(self, record: UsageRecord) -> QueuedRow:
        return self._writes.add_row(record)  # in column order already: its own parameters

    async def start_usage(self, record: UsageRecord, quotas: Sequence[Quota]) -> Quota | None:
        def job(db: sqlite3.Connection) -> Quota | None:  # BEGIN IMMEDIATE: no other writer meanwhile
            for quota in quotas:
                if quota.spent(self._totals(db, record.key_name, quota.since, quota.profile)):
                    return quota
            db.execute(q.RECORD_USAGE, q.usage_params(record))
            return None

        return await self._writes.enqueue(job, "usage", durable=False)

    def _totals(self, db: sqlite3.Connection, key_name: str, since: float, profile: str | None) -> UsageTotals:
        row = db.execute(q.USAGE_SINCE, (key_name, max(since, self._cutoff()), profile)).fetchone()
        return UsageTotals(*row)

    async def usage_since(self, key_name: str, since: float, profile: str | None = None) -> UsageTotals:
        params = (key_name, max(since, self._cutoff()), profile)
        return UsageTotals(*(await self._run(self._read, q.USAGE_SINCE, params))[0])

    async def usage_summary(self, since: float, by: UsageGrouping) -> list[UsageSummary]:
        rows = await self._run(self._read, q.usage_summary(SQLITE, by), (max(since, self._cutoff()),))
        return [UsageSummary(*row) for row in rows]

    async def aclose(self) -> None:
        """Close the connection on its thread after queued work (lingering usage rows
        committed first), then stop the thread."""
        if self._db is not None:
            self._writes.commit_soon()
            await self._run(self._close)
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
