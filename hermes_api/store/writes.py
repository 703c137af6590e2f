"""``WriteQueue``: the writes waiting for ``SQLiteStore``'s thread, committed in groups.

Every write is queued (``enqueue``) with a future the caller awaits; the store's thread
takes all that are waiting (``take``) into one transaction and answers every caller at
once (``settle``), waking each event loop once, not once per write. A durable write
starts a commit at once, one that is not (a turn's admission, ``start_usage``) within
``LINGER`` seconds; a usage row (``add_row``), which nobody waits for, within
``ROW_LINGER`` seconds, so that under load one hand-off to the thread and one
transaction carry many: the hand-off and the commit, not the rows, were most of a
usage row's cost. The rows queued together share one future
(``Rows``): a row costs a tuple in a list, not a future of its own, which under load
lived long enough to be promoted through the garbage collector's generations. The
future's result, a ``UsageWritten``, carries the rows themselves, so that whoever follows
the group needs no list of its own.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from . import QueuedRow, UsageRecord, UsageWritten
from .queries import USAGE_COMMON

Job = Callable[[sqlite3.Connection], Any]
LINGER = 0.02  # seconds a write that is not durable waits for others to share its commit
# Seconds a usage row waits: at 1,000 turns a second, 500 rows a commit. Under load a
# commit of 200 rows cost the store's thread 25 µs a row, one of 1,000 rows 18 µs (the
# thread shares the CPU with the busy event loop; bench/RESULTS.md, "Observation"). The
# row is committed when the server stops, not lost; a SIGKILL loses this much more of
# them. A key's limits see them sooner in its own process: a turn's admission commits
# every row waiting first (``SQLiteStore._commit``); another process sees them this late.
ROW_LINGER = 0.5
# A common row: nothing after its first USAGE_COMMON fields, and these known.
_NOTHING_MORE = (None,) * (len(UsageRecord._fields) - USAGE_COMMON)
_KNOWN = slice(UsageRecord._fields.index("status"), USAGE_COMMON)  # status, tokens, duration


@dataclass(slots=True)
class Pending:
    """A queued write: ``job`` a function of the connection; ``table`` it writes (None:
    none); ``durable``: its commit must be ``synchronous=FULL``; ``result``
    ``(value, None)`` or ``(None, error)``, once run."""

    job: Job
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    table: str | None
    durable: bool
    result: tuple[Any, BaseException | None] = (None, None)


@dataclass(slots=True)
class Rows:
    """Usage rows queued from one event loop for the next commit, each its parameters (a
    plain tuple of its record's fields in their order): ``common`` the rows whose last
    fields are None and whose status, tokens and duration are known (most turns'), cut
    after ``queries.USAGE_COMMON`` fields; ``other`` the rest, whole. ``future`` the one
    they share (``QueuedRow.group``); ``failed`` the rows refused, ``error`` what failed
    the whole commit."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[UsageWritten]
    common: list[tuple[object, ...]] = field(default_factory=list)
    other: list[tuple[object, ...]] = field(default_factory=list)
    failed: dict[str, BaseException] = field(default_factory=dict)
    error: BaseException | None = None


class WriteQueue:
    """Writes for ``commit`` (run on ``executor``, with the list ``take()`` returns)."""

    def __init__(self, executor: Executor, commit: Callable[[], None]) -> None:
        self._executor = executor
        self._commit = commit
        self._pending: list[Pending] = []
        self._rows: dict[asyncio.AbstractEventLoop, Rows] = {}
        self._lock = threading.Lock()
        self._queued = False  # a commit is queued and has not taken the writes yet

    def enqueue(self, job: Job, table: str | None, *, durable: bool = True) -> asyncio.Future[Any]:
        """Queue a write now (it is written even if the caller stops waiting); the
        future of its result is set once it is committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            self._pending.append(Pending(job, future, loop, table, durable))
            start = not self._queued and (durable or len(self._pending) == 1)
            if start and durable:
                self._queued = True
                self._executor.submit(self._commit)
        if start and not durable:
            loop.call_later(LINGER, self.commit_soon)
        return future

    def add_row(self, row: UsageRecord) -> QueuedRow:
        """Queue a usage row for a commit within ``ROW_LINGER`` seconds, as ``Rows`` keeps
        them. Sorted and cut here, on the event loop, so that the store's thread only
        joins the rows' parameters (in C): every bit of Python that thread runs holds the
        GIL against the event loop, and under load a row's work there cost the loop more
        than it cost the thread (bench/RESULTS.md, "Observation")."""
        head = row[:USAGE_COMMON]
        common = row[USAGE_COMMON:] == _NOTHING_MORE and None not in head[_KNOWN]
        loop = asyncio.get_running_loop()
        with self._lock:
            rows = self._rows.get(loop)
            first = rows is None
            if rows is None:
                rows = self._rows[loop] = Rows(loop, loop.create_future())
            if common:
                rows.common.append(head)
            else:
                rows.other.append(tuple(row))
        if first:
            loop.call_later(ROW_LINGER, self.commit_soon)
        return QueuedRow(rows.future, row[0], first)

    def commit_soon(self) -> None:
        """Queue a commit of what is waiting, unless one is queued already."""
        with self._lock:
            if (self._pending or self._rows) and not self._queued:
                self._queued = True
                self._executor.submit(self._commit)

    def take(self) -> tuple[list[Pending], list[Rows]]:
        """Every write and row waiting (on the store's thread, as a commit starts)."""
        with self._lock:
            taken, self._pending = self._pending, []
            rows, self._rows = list(self._rows.values()), {}
            self._queued = False
        return taken, rows

    @staticmethod
    def settle(writes: list[Pending], rows: list[Rows]) -> None:
        """Hand each caller its result: one wake-up of each event loop."""
        by_loop: dict[asyncio.AbstractEventLoop, tuple[list[Pending], list[Rows]]] = {}
        for p in writes:
            by_loop.setdefault(p.loop, ([], []))[0].append(p)
        for r in rows:
            by_loop.setdefault(r.loop, ([], []))[1].append(r)
        for loop, (done, groups) in by_loop.items():
            loop.call_soon_threadsafe(_settle, done, groups)


def _settle(done: list[Pending], groups: list[Rows]) -> None:
    for p in done:
        value, error = p.result
        if p.future.done():  # the caller was cancelled; the write happened all the same
            continue
        if error is None:
            p.future.set_result(value)
        else:
            p.future.set_exception(error)
    for r in groups:
        if not r.future.done():
            r.future.set_result(UsageWritten(r.common + r.other, r.failed, r.error))
