"""``PostgreSQLStore``: the response store in a PostgreSQL database that several
processes and machines share (``store:`` a ``postgresql://`` URL; the ``postgres`` extra).

psycopg 3 with its async connection pool (``psycopg_pool.AsyncConnectionPool``), one
pool of ``store.pool_size`` connections per process, in autocommit mode. Every write is
one statement, so one transaction: the call returns only once PostgreSQL has committed
it (durably, under the server's default ``synchronous_commit = on``). Retention is
applied in the same statement (a data-modifying ``WITH``); rows another writer is
already pruning are skipped (``FOR UPDATE SKIP LOCKED``), so writers never wait on each
other's pruning. The SQL is ``queries``', the same as SQLite's but for the placeholders.
Usage rows are the exception: queued, and written ``LINGER`` seconds' worth at a time
in one transaction (their age bound applied at most every ``AGE_PRUNE_EVERY`` seconds),
since a round trip per chat turn cost more than the turn's own work.

Outages (PostgreSQL Global Development Group, "Client Connection Defaults" and psycopg's
pool docs): a call that cannot reach the database (refused, reset, the server restarted
or shutting down) or gets no pooled connection within ``store.timeout`` raises
``StoreUnavailableError`` (503 ``store_unavailable``); nothing was written. The pool
replaces broken connections in the background and reconnects with backoff; the first
call that succeeds ends the outage. The outage is logged once when it starts (with
psycopg's reason, never the URL) and once when it ends; meanwhile calls wait at most
``DOWN_WAIT`` for a connection, so clients are answered quickly.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson

from ..errors import StoreUnavailableError
from ..settings import Retention, StoreConfig
from . import (
    Message,
    QueuedRow,
    Quota,
    StoredResponse,
    UsageGrouping,
    UsageRecord,
    UsageSummary,
    UsageTotals,
    UsageWritten,
)
from . import queries as q
from .migrations import POSTGRESQL, migrate_async

try:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict
    from psycopg_pool import AsyncConnectionPool
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError(
        "the PostgreSQL store needs psycopg 3 and its pool: pip install -e '.[postgres]' in the hermes-api checkout"
    ) from exc

logger = logging.getLogger("hermes_api")

Connection = psycopg.AsyncConnection[tuple[Any, ...]]
Pool = AsyncConnectionPool[Connection]
DOWN_WAIT = 1.0  # seconds a call waits for a pooled connection while the database is down
OPEN_WAIT = 30.0  # seconds the server waits at start for its first connections
USAGE_LOCK = 0x75736167  # pg_advisory_xact_lock's first key for start_usage, per key name
# What "the database cannot be reached" looks like: psycopg_pool.PoolTimeout is an
# OperationalError; InterfaceError is a connection found closed.
UNREACHABLE = (psycopg.OperationalError, psycopg.InterfaceError, TimeoutError)


def _pruning(insert: str, table: str) -> str:
    """``insert`` (``?`` placeholders) and the retention of ``table`` in one statement;
    two more parameters: the cutoff and how many rows to keep (NULL: no count bound)."""
    return POSTGRESQL.sql(
        f"""
        WITH new AS ({insert} RETURNING seq),
        pruned AS (
            DELETE FROM {table} WHERE seq IN (
                SELECT seq FROM {table} WHERE created_at < ? OR seq <= (SELECT seq FROM new) - ?
                   FOR UPDATE SKIP LOCKED)
        )
        SELECT 1
        """
    )


PUT_RESPONSE = _pruning(q.PUT_RESPONSE, "responses")
APPEND_SESSION = _pruning(q.APPEND_SESSION, "session_turns")
RECORD_USAGE = POSTGRESQL.sql(q.RECORD_USAGE)
# Seconds a usage row waits for others to share its transaction (SQLite's is
# writes.ROW_LINGER); shorter here, as other replicas count a key's limits from them.
LINGER = 0.1
AGE_PRUNE_EVERY = 1.0  # seconds between deletions of expired usage rows by one process
PRUNE = "DELETE FROM {table} WHERE created_at < %s OR seq <= (SELECT max(seq) FROM {table}) - %s"


class PostgreSQLStore:
    """``store.ResponseStore`` in a PostgreSQL database.

    Open it with ``await PostgreSQLStore.open(config, retention)``: it connects (waiting
    up to ``OPEN_WAIT`` seconds for the database, else ``StoreUnavailableError``),
    migrates and prunes. ``clock`` gives Unix seconds (tests pass a fake one).
    """

    def __init__(self, pool: Pool, config: StoreConfig, retention: Retention, clock: Callable[[], float]) -> None:
        self._pool = pool
        self.retention = retention
        self._timeout = config.timeout
        self._clock = clock
        self._down = False
        self._checking: asyncio.Task[None] | None = None
        self._rows: list[tuple[object, ...]] = []  # the parameters of the usage rows waiting for _flush_soon
        self._group: asyncio.Future[UsageWritten] | None = None  # their future
        self._flushing: set[asyncio.Task[None]] = set()
        self._aged_at = float("-inf")
        password = conninfo_to_dict(config.url or "").get("password")
        self._secret = str(password) if password else None

    @classmethod
    async def open(
        cls, config: StoreConfig, retention: Retention, *, clock: Callable[[], float] = time.time
    ) -> PostgreSQLStore:
        assert config.url is not None, "a PostgreSQL store needs a URL"
        pool: Pool = AsyncConnectionPool(
            config.url,
            min_size=config.pool_size,
            max_size=config.pool_size,
            kwargs={
                "autocommit": True,
                "application_name": "hermes-api",
                "connect_timeout": max(2, math.ceil(config.timeout)),
            },
            timeout=config.timeout,
            # Reconnection backs off 1, 2, 4 … s; after this long it starts again at 1 s.
            reconnect_timeout=OPEN_WAIT,
            name="hermes-store",
            open=False,
        )
        store = cls(pool, config, retention, clock)
        try:
            await pool.open(wait=True, timeout=OPEN_WAIT)
            async with pool.connection() as conn:
                applied = await migrate_async(conn)
        except UNREACHABLE as exc:
            await pool.close()
            store._log_down(exc)
            raise StoreUnavailableError(f"The PostgreSQL store could not be reached in {OPEN_WAIT:g} s.") from None
        if applied:
            logger.info("response store (PostgreSQL): applied %s", ", ".join(applied))
        await store.prune()
        return store

    # -- connections and outages -----------------------------------------------------

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        """A pooled connection for one call, bounded by ``store.timeout``; an unreachable
        database is ``StoreUnavailableError``."""
        try:
            async with asyncio.timeout(self._timeout):
                async with self._pool.connection(timeout=DOWN_WAIT if self._down else self._timeout) as conn:
                    yield conn
        except UNREACHABLE as exc:
            if not self._down:
                self._down = True
                self._log_down(exc)
                # The other idle connections are most likely broken too: replace them now,
                # not one failed call each.
                if self._checking is None or self._checking.done():
                    self._checking = asyncio.get_running_loop().create_task(self._pool.check())
            raise StoreUnavailableError() from None
        if self._down:
            self._down = False
            logger.warning("the response store (PostgreSQL) is reachable again")

    def _log_down(self, exc: BaseException) -> None:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if self._secret:
            reason = reason.replace(self._secret, "***")
        logger.error("the response store (PostgreSQL) is unreachable: %s", reason)

    async def _fetch(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        async with self._connection() as conn:
            cursor = await conn.execute(sql, params)
            return await cursor.fetchall()

    async def _execute(self, sql: str, params: Sequence[object]) -> int:
        """Run one statement (its own transaction); the rows it changed."""
        async with self._connection() as conn:
            return (await conn.execute(sql, params)).rowcount

    def _cutoff(self) -> float:
        """Rows created before this Unix time are expired."""
        days = self.retention.max_age_days
        return float("-inf") if days is None else self._clock() - days * 86400

    async def prune(self) -> None:
        cutoff, r = self._cutoff(), self.retention
        bounds = (("responses", r.max_responses), ("session_turns", r.max_session_turns), ("usage", None))
        async with self._connection() as conn:
            for table, keep in bounds:
                await conn.execute(PRUNE.format(table=table), (cutoff, keep))

    # -- responses and sessions -------------------------------------------------------

    async def put_response(self, record: StoredResponse) -> None:
        r, dumps = record, orjson.dumps
        params = (r.id, r.owner, r.profile, r.created_at, r.previous_response_id)
        params += (dumps(r.input_items).decode(), dumps(r.messages).decode(), dumps(r.body).decode())
        await self._execute(PUT_RESPONSE, (*params, self._cutoff(), self.retention.max_responses))

    async def get_response(self, owner: str, response_id: str, profile: str | None = None) -> StoredResponse | None:
        rows = await self._fetch(POSTGRESQL.sql(q.GET_RESPONSE), (response_id, owner, profile, self._cutoff()))
        return q.stored_response(rows[0]) if rows else None

    async def delete_response(self, owner: str, profile: str, response_id: str) -> bool:
        return await self._execute(POSTGRESQL.sql(q.DELETE_RESPONSE), (response_id, owner, profile)) > 0

    async def conversation(self, owner: str, profile: str, response_id: str) -> list[Message] | None:
        scope = (owner, profile, self._cutoff())
        rows = await self._fetch(POSTGRESQL.sql(q.CONVERSATION), (response_id, *scope, *scope))
        return q.messages(rows) if rows else None

    async def find_items(self, owner: str, profile: str, item_ids: list[str]) -> dict[str, dict[str, Any]]:
        rows = await self._fetch(POSTGRESQL.sql(q.ITEM_ROWS), (owner, profile, self._cutoff()))
        return q.items_by_id(rows, item_ids)

    async def session_messages(self, owner: str, profile: str, session_id: str) -> list[Message]:
        params = (owner, profile, session_id, self._cutoff())
        return q.messages(await self._fetch(POSTGRESQL.sql(q.SESSION_MESSAGES), params))

    async def append_session(self, owner: str, profile: str, session_id: str, messages: list[Message]) -> None:
        params = (owner, profile, session_id, self._clock(), orjson.dumps(messages).decode())
        await self._execute(APPEND_SESSION, (*params, self._cutoff(), self.retention.max_session_turns))

    # -- usage ----------------------------------------------------------------------

    def record_usage(self, record: UsageRecord) -> QueuedRow:
        """Queued, and written with the others of the next ``LINGER`` seconds in one
        transaction (``executemany``, pipelined by psycopg): one round trip for many,
        and one future (``QueuedRow.group``) for all of them."""
        first = self._group is None
        if self._group is None:
            self._group = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_later(LINGER, self._flush_soon)
        self._rows.append(q.usage_params(record))
        return QueuedRow(self._group, record.id, first)

    def _flush_soon(self) -> None:
        if self._group is not None:
            rows, group, self._rows, self._group = self._rows, self._group, [], None
            task = asyncio.get_running_loop().create_task(self._flush(rows, group))
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)

    async def _flush(self, rows: list[tuple[object, ...]], group: asyncio.Future[UsageWritten]) -> None:
        """One transaction: every row is written, or none (``UsageWritten.error``)."""
        try:
            async with self._connection() as conn, conn.transaction(), conn.cursor() as cursor:
                await cursor.executemany(RECORD_USAGE, rows)
                if time.monotonic() - self._aged_at >= AGE_PRUNE_EVERY:
                    self._aged_at = time.monotonic()
                    await cursor.execute(PRUNE.format(table="usage"), (self._cutoff(), None))
        except Exception as exc:
            group.set_result(UsageWritten(rows, {}, exc))
        else:
            group.set_result(UsageWritten(rows, {}, None))
        finally:
            if not group.done():  # the flush itself was cancelled (the loop is closing)
                group.cancel()

    async def start_usage(self, record: UsageRecord, quotas: Sequence[Quota]) -> Quota | None:
        async with self._connection() as conn, conn.transaction():
            # One key's turns start one at a time, in every process: a check-then-insert.
            await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (USAGE_LOCK, record.key_name))
            for quota in quotas:
                cursor = await conn.execute(
                    POSTGRESQL.sql(q.USAGE_SINCE), (record.key_name, max(quota.since, self._cutoff()), quota.profile)
                )
                if quota.spent(UsageTotals(*await cursor.fetchone())):  # type: ignore[misc]
                    return quota
            await conn.execute(RECORD_USAGE, q.usage_params(record))
        return None

    async def usage_since(self, key_name: str, since: float, profile: str | None = None) -> UsageTotals:
        rows = await self._fetch(POSTGRESQL.sql(q.USAGE_SINCE), (key_name, max(since, self._cutoff()), profile))
        return UsageTotals(*rows[0])

    async def usage_summary(self, since: float, by: UsageGrouping) -> list[UsageSummary]:
        rows = await self._fetch(POSTGRESQL.sql(q.usage_summary(POSTGRESQL, by)), (max(since, self._cutoff()),))
        return [UsageSummary(*row) for row in rows]

    async def aclose(self) -> None:
        """Write the queued usage rows, then close every connection."""
        self._flush_soon()
        if self._flushing:
            await asyncio.gather(*self._flushing, return_exceptions=True)
        if self._checking is not None:
            self._checking.cancel()
        await self._pool.close()
