"""``SQLiteStore``: the response store in one SQLite file in ``state_dir`` (the default).

Durability (DESIGN.md §2 ``state_dir``): WAL with ``synchronous=FULL``, so a write is
acknowledged only after its commit is on disk and survives a killed process or a power
cut. One connection lives on one dedicated thread; every call is queued there and never
blocks the event loop.

Writes are committed in groups: each write is a job queued for the store's thread,
which runs every job waiting at that moment in one ``BEGIN IMMEDIATE`` … ``COMMIT``,
each job in its own savepoint (a job that fails is rolled back alone and fails only
its caller), then answers every caller at once. A commit costs one ``fsync`` (~5 ms on
a virtual disk), so this is what lets chat turns, which each write a usage row, go
faster than 200 a second. Several processes (``serve --workers``) share the file
safely: ``BEGIN IMMEDIATE`` takes SQLite's write lock, and a process that finds it
taken waits up to ``BUSY_TIMEOUT_MS`` for it; readers never wait (WAL).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson

from ..context import run_sync
from ..settings import Retention
from . import (
    Message,
    Quota,
    StoredResponse,
    UsageGrouping,
    UsageRecord,
    UsageSummary,
    UsageTotals,
)
from . import queries as q
from .migrations import SQLITE, migrate

logger = logging.getLogger("hermes_api")

T = TypeVar("T")
Job = Callable[[sqlite3.Connection], Any]
DB_NAME = "responses.db"
BUSY_TIMEOUT_MS = 10_000  # how long a process waits for another's write lock before failing the write


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():  # the caller was cancelled; the write happened all the same
        return
    if error is None:
        future.set_result(value)
    else:
        future.set_exception(error)


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
        self._jobs: list[tuple[Job, asyncio.Future[Any], asyncio.AbstractEventLoop]] = []
        self._jobs_lock = threading.Lock()

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
            self._prune(tx)

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

    async def _write(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``job`` in the next group commit; returns its result once committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._jobs_lock:
            self._jobs.append((job, future, loop))
            first = len(self._jobs) == 1
        if first:  # else a commit is queued and has not taken the jobs yet: this one joins it
            self._executor.submit(self._commit_jobs)
        return await future

    def _commit_jobs(self) -> None:
        with self._jobs_lock:
            jobs, self._jobs = self._jobs, []
        results: list[tuple[Any, BaseException | None]] = []
        try:
            with self._transaction() as db:
                for job, _, _ in jobs:
                    db.execute("SAVEPOINT job")
                    try:
                        results.append((job(db), None))
                    except Exception as exc:
                        db.execute("ROLLBACK TO job")
                        results.append((None, exc))
                    db.execute("RELEASE job")
                self._prune(db)
        except Exception as exc:  # BEGIN or COMMIT failed (a full disk, a lock held too long)
            results = [(None, exc)] * len(jobs)
        for (_, future, loop), (value, error) in zip(jobs, results, strict=True):
            loop.call_soon_threadsafe(_settle, future, value, error)

    def _cutoff(self) -> float:
        """Rows created before this Unix time are expired."""
        days = self.retention.max_age_days
        return float("-inf") if days is None else self._clock() - days * 86400

    def _prune(self, db: sqlite3.Connection) -> None:
        cutoff = self._cutoff()
        for table, keep in (
            ("responses", self.retention.max_responses),
            ("session_turns", self.retention.max_session_turns),
            ("usage", None),
        ):
            db.execute(f"DELETE FROM {table} WHERE created_at < ?", (cutoff,))
            if keep is not None:
                # Rows with `keep` or more rows inserted after them: a rowid range, O(log n).
                db.execute(f"DELETE FROM {table} WHERE seq <= (SELECT max(seq) FROM {table}) - ?", (keep,))

    async def prune(self) -> None:
        await self._write(lambda db: None)  # every commit prunes

    def _read(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        assert self._db is not None, "the store is closed"
        return self._db.execute(sql, params).fetchall()

    # -- responses ------------------------------------------------------------------

    async def put_response(self, record: StoredResponse) -> None:
        r = record
        params = (r.id, r.owner, r.profile, r.created_at, r.previous_response_id)
        params += (_dumps(r.input_items), _dumps(r.messages), _dumps(r.body))
        await self._write(lambda db: db.execute(q.PUT_RESPONSE, params))

    async def get_response(self, owner: str, response_id: str, profile: str | None = None) -> StoredResponse | None:
        rows = await self._run(self._read, q.GET_RESPONSE, (response_id, owner, profile, self._cutoff()))
        return q.stored_response(rows[0]) if rows else None

    async def delete_response(self, owner: str, profile: str, response_id: str) -> bool:
        params = (response_id, owner, profile)
        return await self._write(lambda db: db.execute(q.DELETE_RESPONSE, params).rowcount > 0)

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
        await self._write(lambda db: db.execute(q.APPEND_SESSION, params))

    # -- usage ----------------------------------------------------------------------

    async def record_usage(self, record: UsageRecord) -> None:
        params = q.usage_params(record)
        await self._write(lambda db: db.execute(q.RECORD_USAGE, params))

    async def start_usage(self, record: UsageRecord, quotas: Sequence[Quota]) -> Quota | None:
        def job(db: sqlite3.Connection) -> Quota | None:  # BEGIN IMMEDIATE: no other writer meanwhile
            for quota in quotas:
                if quota.spent(self._totals(db, record.key_name, quota.since, quota.profile)):
                    return quota
            db.execute(q.RECORD_USAGE, q.usage_params(record))
            return None

        return await self._write(job)

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
        """Close the connection on its thread after queued work, then stop the thread."""
        if self._db is not None:
            await self._run(self._close)
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
