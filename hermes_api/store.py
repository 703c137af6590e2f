"""The response store: Responses API answers and chat sessions, bound to key and profile.

``ResponseStore`` is the interface the endpoints use (async, so a server database can
be added later for several replicas); ``SQLiteStore`` is the default, one file in
``state_dir``. Every row carries its ``owner`` (``keys.Caller.owner``) and ``profile``
and every read filters on both, so another key or profile finds nothing (a 404, never
a 403 that would confirm the id exists).

Durability (DESIGN.md §2 ``state_dir``): WAL with ``synchronous=FULL``, so a write is
acknowledged only after its commit is on disk and survives a killed process or a power
cut. One connection lives on one dedicated thread; every call is queued there with
``context.run_sync`` and never blocks the event loop. Retention (``settings.Retention``)
is applied in every write transaction and at start, and reads skip rows past the age
limit, so an expired row is never served even before it is deleted.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson

from .context import run_sync
from .migrations import migrate
from .settings import Retention, Settings

logger = logging.getLogger("hermes_api")

T = TypeVar("T")
Message = dict[str, Any]
DB_NAME = "responses.db"
FIND_BATCH = 400  # item ids per query of find_items (SQLite allows 32766 variables)


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """One stored Responses API answer.

    ``created_at`` Unix seconds; ``input_items`` the request's input as items (with ids,
    for ``/input_items``); ``messages`` that turn's chat messages, input then answer
    (never the ``instructions``), replayed by ``previous_response_id``; ``body`` the
    response object as it was served.
    """

    id: str
    owner: str
    profile: str
    created_at: float
    previous_response_id: str | None
    input_items: list[dict[str, Any]]
    messages: list[Message]
    body: dict[str, Any]


class ResponseStore(Protocol):
    """Where responses and chat sessions live. Every method is scoped by ``owner`` and
    ``profile``; what another owner or profile stored is invisible (None, False, [])."""

    async def put_response(self, record: StoredResponse) -> None:
        """Store ``record``; returns only once it is durable."""
        ...

    async def get_response(self, owner: str, response_id: str, profile: str | None = None) -> StoredResponse | None:
        """The response, or None; ``profile`` None = whichever profile it belongs to."""
        ...

    async def delete_response(self, owner: str, profile: str, response_id: str) -> bool:
        """Delete it; False when there was nothing to delete."""
        ...

    async def conversation(self, owner: str, profile: str, response_id: str) -> list[Message] | None:
        """The chat messages of the chain ending at ``response_id``, oldest turn first;
        None when that response is not found. A chain whose earlier link was deleted
        or expired starts after the gap."""
        ...

    async def find_items(self, owner: str, profile: str, item_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The input and output items with these ids among the stored responses, by id
        (``item_reference`` input items name them); ids not found are left out."""
        ...

    async def session_messages(self, owner: str, profile: str, session_id: str) -> list[Message]:
        """Every stored message of a chat session, oldest first ([] for a new one)."""
        ...

    async def append_session(self, owner: str, profile: str, session_id: str, messages: list[Message]) -> None:
        """Add one turn's messages to a chat session; returns once durable."""
        ...

    async def aclose(self) -> None:
        """Finish queued work and release the database."""
        ...


async def open_store(settings: Settings) -> ResponseStore:
    """The default store: ``SQLiteStore`` in ``settings.state_dir``."""
    return await SQLiteStore.open(settings.state_dir, settings.retention)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


class SQLiteStore:
    """``ResponseStore`` in one SQLite file, used from one dedicated thread.

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
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            logger.warning("the response store at %s cannot use WAL (journal mode %s)", self.path, mode)
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=10000")
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

    def _cutoff(self) -> float:
        """Rows created before this Unix time are expired."""
        days = self.retention.max_age_days
        return float("-inf") if days is None else self._clock() - days * 86400

    def _prune(self, db: sqlite3.Connection) -> None:
        cutoff = self._cutoff()
        for table, keep in (
            ("responses", self.retention.max_responses),
            ("session_turns", self.retention.max_session_turns),
        ):
            db.execute(f"DELETE FROM {table} WHERE created_at < ?", (cutoff,))
            if keep is not None:
                # Rows with `keep` or more rows inserted after them: a rowid range, O(log n).
                db.execute(f"DELETE FROM {table} WHERE seq <= (SELECT max(seq) FROM {table}) - ?", (keep,))

    async def prune(self) -> None:
        """Apply retention now (it also runs in every write)."""
        await self._run(self._prune_now)

    def _prune_now(self) -> None:
        with self._transaction() as db:
            self._prune(db)

    # -- responses ------------------------------------------------------------------

    async def put_response(self, record: StoredResponse) -> None:
        await self._run(self._put_response, record)

    def _put_response(self, r: StoredResponse) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO responses (id, owner, profile, created_at, previous_response_id, input_items, messages,"
                " body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    r.id,
                    r.owner,
                    r.profile,
                    r.created_at,
                    r.previous_response_id,
                    _dumps(r.input_items),
                    _dumps(r.messages),
                    _dumps(r.body),
                ),
            )
            self._prune(db)

    async def get_response(self, owner: str, response_id: str, profile: str | None = None) -> StoredResponse | None:
        return await self._run(self._get_response, owner, response_id, profile)

    def _get_response(self, owner: str, response_id: str, profile: str | None) -> StoredResponse | None:
        assert self._db is not None, "the store is closed"
        row = self._db.execute(
            "SELECT id, owner, profile, created_at, previous_response_id, input_items, messages, body"
            " FROM responses WHERE id = ? AND owner = ? AND profile = coalesce(?, profile) AND created_at >= ?",
            (response_id, owner, profile, self._cutoff()),
        ).fetchone()
        if row is None:
            return None
        rid, owner, profile, created_at, previous, items, messages, body = row
        return StoredResponse(
            rid, owner, profile, created_at, previous, orjson.loads(items), orjson.loads(messages), orjson.loads(body)
        )

    async def delete_response(self, owner: str, profile: str, response_id: str) -> bool:
        return await self._run(self._delete_response, owner, profile, response_id)

    def _delete_response(self, owner: str, profile: str, response_id: str) -> bool:
        with self._transaction() as db:
            cursor = db.execute(
                "DELETE FROM responses WHERE id = ? AND owner = ? AND profile = ?", (response_id, owner, profile)
            )
            return cursor.rowcount > 0

    async def conversation(self, owner: str, profile: str, response_id: str) -> list[Message] | None:
        return await self._run(self._conversation, owner, profile, response_id)

    def _conversation(self, owner: str, profile: str, response_id: str) -> list[Message] | None:
        assert self._db is not None, "the store is closed"
        scope = (owner, profile, self._cutoff())
        rows = self._db.execute(
            """
            WITH RECURSIVE chain (previous, messages, depth) AS (
                SELECT previous_response_id, messages, 0 FROM responses
                 WHERE id = ? AND owner = ? AND profile = ? AND created_at >= ?
                UNION ALL
                SELECT r.previous_response_id, r.messages, chain.depth + 1
                  FROM responses AS r JOIN chain ON r.id = chain.previous
                 WHERE r.owner = ? AND r.profile = ? AND r.created_at >= ?
            )
            SELECT messages FROM chain ORDER BY depth DESC
            """,
            (response_id, *scope, *scope),
        ).fetchall()
        if not rows:
            return None
        return [message for (messages,) in rows for message in orjson.loads(messages)]

    async def find_items(self, owner: str, profile: str, item_ids: list[str]) -> dict[str, dict[str, Any]]:
        return await self._run(self._find_items, owner, profile, item_ids)

    def _find_items(self, owner: str, profile: str, item_ids: list[str]) -> dict[str, dict[str, Any]]:
        # A scan of this key's and profile's responses (retention bounds it): references
        # are rare, and an index of every item would cost every write. Ids go in groups
        # under SQLite's limit of variables in one statement.
        assert self._db is not None, "the store is closed"
        wanted, found = sorted(set(item_ids)), {}
        for start in range(0, len(wanted), FIND_BATCH):
            batch = wanted[start : start + FIND_BATCH]
            marks = ", ".join("?" * len(batch))
            rows = self._db.execute(
                f"""
                SELECT item.value FROM responses, json_each(responses.input_items) AS item
                 WHERE owner = ? AND profile = ? AND created_at >= ? AND json_extract(item.value, '$.id') IN ({marks})
                UNION ALL
                SELECT item.value FROM responses, json_each(responses.body, '$.output') AS item
                 WHERE owner = ? AND profile = ? AND created_at >= ? AND json_extract(item.value, '$.id') IN ({marks})
                """,
                (owner, profile, self._cutoff(), *batch) * 2,
            ).fetchall()
            for (value,) in rows:
                item = orjson.loads(value)
                found[item["id"]] = item
        return found

    # -- chat sessions --------------------------------------------------------------

    async def session_messages(self, owner: str, profile: str, session_id: str) -> list[Message]:
        return await self._run(self._session_messages, owner, profile, session_id)

    def _session_messages(self, owner: str, profile: str, session_id: str) -> list[Message]:
        assert self._db is not None, "the store is closed"
        rows = self._db.execute(
            "SELECT messages FROM session_turns WHERE owner = ? AND profile = ? AND session_id = ?"
            " AND created_at >= ? ORDER BY seq",
            (owner, profile, session_id, self._cutoff()),
        ).fetchall()
        return [message for (messages,) in rows for message in orjson.loads(messages)]

    async def append_session(self, owner: str, profile: str, session_id: str, messages: list[Message]) -> None:
        await self._run(self._append_session, owner, profile, session_id, messages)

    def _append_session(self, owner: str, profile: str, session_id: str, messages: list[Message]) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO session_turns (owner, profile, session_id, created_at, messages) VALUES (?, ?, ?, ?, ?)",
                (owner, profile, session_id, self._clock(), _dumps(messages)),
            )
            self._prune(db)

    async def aclose(self) -> None:
        """Close the connection on its thread after queued work, then stop the thread."""
        if self._db is not None:
            await self._run(self._close)
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
