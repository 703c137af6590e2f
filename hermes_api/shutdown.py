"""Graceful shutdown: in-flight turns may finish within ``shutdown_grace`` seconds.

On SIGTERM (or Ctrl-C) uvicorn stops accepting connections, closes idle ones and waits
for the requests in progress. ``Drain`` bounds that wait for turns: from the moment
shutdown begins, every wait on the upstream gets a deadline ``shutdown_grace`` seconds
away. A turn that ends before it is untouched; one still waiting then is given up: a
stream gets ``data: {"error": {..., "code": "server_shutting_down"}}`` and
``data: [DONE]`` (docs/contract.md §5, after the first byte), a request not yet answered gets
a 503 with the same code. Its upstream connection is closed. Only then, with no
request left, does uvicorn run the lifespan's shutdown, so whatever the lifespan closes
last (a store) sees every turn finished.

Shutdown is learned from two sources, whichever comes first: ``hermes-api serve``
calls ``begin()`` from its signal handler, and ``watch()`` polls the uvicorn server
that installed the SIGTERM handler (uvicorn's ``Server.should_exit``), which also covers
``uvicorn --factory``. uvicorn's own ``timeout_graceful_shutdown`` (``serve`` sets it
``FORCE_MARGIN`` seconds past the grace period) is the backstop that cuts whatever is
still open after that.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import anyio

from .errors import ShuttingDownError

logger = logging.getLogger("hermes_api")

T = TypeVar("T")
FORCE_MARGIN = 5.0  # seconds after the grace period before anything is cut without a word


def _uvicorn_server() -> Any:
    """The uvicorn ``Server`` whose ``handle_exit`` is the SIGTERM handler, or None (not
    under uvicorn, or not in the main thread, where uvicorn installs no handlers)."""
    server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    return server if hasattr(server, "should_exit") else None


class Drain:
    """Deadlines for upstream waits once shutdown has begun; None before."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.event = anyio.Event()
        self._deadline: float | None = None
        self._waits: set[asyncio.Timeout] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def draining(self) -> bool:
        return self._deadline is not None

    def begin(self) -> None:
        """Start the grace period. Safe to call from a signal handler or another thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._start)

    async def watch(self, poll: float = 0.5) -> None:
        """Run for the app's lifetime (a lifespan task): start the grace period when
        ``begin()`` is called or the uvicorn server serving us starts to exit (looked
        at every ``poll`` seconds)."""
        self._loop = asyncio.get_running_loop()
        while not self.event.is_set():
            server = _uvicorn_server()
            if server is not None and server.should_exit:
                break
            with anyio.move_on_after(poll):
                await self.event.wait()
        self._start()

    def _start(self) -> None:
        if self._deadline is not None:
            return
        assert self._loop is not None
        self._deadline = self._loop.time() + self.grace
        self.event.set()
        logger.info("shutting down: %d turn(s) in flight get %gs to finish", len(self._waits), self.grace)
        for wait in self._waits:
            wait.reschedule(self._deadline)

    async def run(self, awaitable: Awaitable[T]) -> T:
        """``await awaitable``, given up at the shutdown deadline with
        ``ShuttingDownError``; a cancellation from elsewhere passes through unchanged."""
        timeout = asyncio.timeout_at(self._deadline)
        try:
            async with timeout:
                self._waits.add(timeout)
                try:
                    return await awaitable
                finally:
                    self._waits.discard(timeout)
        except Exception as exc:
            # The wait may surface as TimeoutError or as whatever the cancelled code
            # turned its CancelledError into (an upstream error): the timeout knows.
            if timeout.expired():
                raise ShuttingDownError(
                    "The server is shutting down and could not finish this request; retry."
                ) from exc
            raise

    async def iterate(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """``items``, each wait bounded by ``run``: the iterator raises
        ``ShuttingDownError`` once a wait outlives the deadline."""
        iterator = aiter(items)
        while True:
            try:
                item = await self.run(anext(iterator))
            except StopAsyncIteration:
                return
            yield item
