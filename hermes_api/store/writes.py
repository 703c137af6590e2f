"""``WriteQueue``: the writes waiting for ``SQLiteStore``'s thread, committed in groups.

Every write is queued (``enqueue``) with a future the caller awaits; the store's thread
takes all that are waiting (``take``) into one transaction and answers every caller at
once (``settle``), waking each event loop once, not once per write. A durable write
starts a commit at once; one that is not (a usage row) waits up to ``LINGER`` seconds
for others, so that under load one hand-off to the thread carries many: the hand-off,
not SQLite, was most of a usage row's cost.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

Job = Callable[[sqlite3.Connection], Any]
LINGER = 0.02  # seconds a write that is not durable waits for others to share its commit


@dataclass(slots=True)
class Pending:
    """A queued write: ``job`` a function of the connection, or ``row`` the parameters
    of one usage row; ``table`` it writes (None: none); ``durable``: its commit must be
    ``synchronous=FULL``; ``result`` ``(value, None)`` or ``(None, error)``, once run."""

    job: Job | None
    row: tuple[object, ...] | None
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    table: str | None
    durable: bool
    result: tuple[Any, BaseException | None] = (None, None)


class WriteQueue:
    """Writes for ``commit`` (run on ``executor``, with the list ``take()`` returns)."""

    def __init__(self, executor: Executor, commit: Callable[[], None]) -> None:
        self._executor = executor
        self._commit = commit
        self._pending: list[Pending] = []
        self._lock = threading.Lock()
        self._queued = False  # a commit is queued and has not taken the writes yet

    def enqueue(
        self, job: Job | None, table: str | None, *, row: tuple[object, ...] | None = None, durable: bool = True
    ) -> asyncio.Future[Any]:
        """Queue a write now (it is written even if the caller stops waiting); the
        future of its result is set once it is committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            self._pending.append(Pending(job, row, future, loop, table, durable))
            start = not self._queued and (durable or len(self._pending) == 1)
            if start and durable:
                self._queued = True
                self._executor.submit(self._commit)
        if start and not durable:
            loop.call_later(LINGER, self.commit_soon)
        return future

    def commit_soon(self) -> None:
        """Queue a commit of what is waiting, unless one is queued already."""
        with self._lock:
            if self._pending and not self._queued:
                self._queued = True
                self._executor.submit(self._commit)

    def take(self) -> list[Pending]:
        """Every write waiting (on the store's thread, as a commit starts)."""
        with self._lock:
            taken, self._pending = self._pending, []
            self._queued = False
        return taken

    @staticmethod
    def settle(writes: list[Pending]) -> None:
        """Hand each caller its result: one wake-up of each event loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list[Pending]] = {}
        for p in writes:
            by_loop.setdefault(p.loop, []).append(p)
        for loop, done in by_loop.items():
            loop.call_soon_threadsafe(_settle, done)


def _settle(done: list[Pending]) -> None:
    for p in done:
        value, error = p.result
        if p.future.done():  # the caller was cancelled; the write happened all the same
            continue
        if error is None:
            p.future.set_result(value)
        else:
            p.future.set_exception(error)
