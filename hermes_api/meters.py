"""Wrappers that note on the current request's ``exchange.Exchange`` what the app's parts did.

``app.create_app`` wraps the turn runner, the store and the upstream transport in these,
so the endpoints stay free of metrics and usage code. What is not tied to one answer
(turns in flight, store writes) goes straight to ``metrics.Metrics``.

- ``ObservedTurns``: the provider's token figures (``usage`` of the answer, or of the
  stream's usage chunk, which every streamed turn asks the provider for:
  ``stream_options.include_usage``, OpenAI's chat-completions API reference; the chat
  endpoint passes it on only when the client asked for it), the error that ended the
  turn, whether its stream reached its end; turns in flight.
- ``MeteredStore``: every write to the store and whether it failed.
- ``StatusTransport``: the HTTP status the provider answered.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from typing import Any

import httpx

from .exchange import Exchange, current_exchange
from .metrics import Metrics
from .store import QueuedRow, UsageRecord
from .turns import ChatRequest, Completion, StreamItem, Turn, TurnRunner, batches

# The store's methods that write; everything else passes through unmetered.
STORE_WRITES = ("put_response", "delete_response", "append_session", "record_usage")


def with_usage_chunk(request: ChatRequest) -> ChatRequest:
    """A streamed chat request that asks the provider for its usage chunk."""
    options = request.get("stream_options")
    return {**request, "stream_options": {**(options if isinstance(options, dict) else {}), "include_usage": True}}


class ObservedTurns:
    """A ``turns.TurnRunner`` that tells the current exchange what the one it wraps
    answered; ``metrics`` (None: off) counts the turns in flight.

    No generator and no ``asynccontextmanager`` on this path: every turn passes through
    it, an async generator costs asyncio's hooks (a WeakSet entry) and its finalizer,
    and a generator-based context manager a generator of its own. Plain classes do the
    same for about half (bench/RESULTS.md, "Observation")."""

    def __init__(self, runner: TurnRunner, metrics: Metrics | None) -> None:
        self.runner = runner
        self._metrics = metrics

    async def complete(self, turn: Turn) -> Completion:
        exchange = current_exchange()
        running = _Running(self._metrics, turn.profile.name, exchange)
        try:
            completion = await self.runner.complete(turn)
        except BaseException as exc:
            running.end(exc)
            raise
        running.end(None)
        if exchange is not None:
            exchange.take_usage(completion.body.get("usage"))
        return completion

    def stream(self, turn: Turn) -> AbstractAsyncContextManager[AsyncIterator[StreamItem]]:
        asked = replace(turn, request=with_usage_chunk(turn.request))
        exchange = current_exchange()
        return _ObservedStream(self.runner.stream(asked), _Running(self._metrics, turn.profile.name, exchange))


class _Running:
    """One turn: counted in flight from its making to ``end`` (``metrics``, None: off),
    its failure told to ``exchange``."""

    __slots__ = ("metrics", "profile", "exchange")

    def __init__(self, metrics: Metrics | None, profile: str, exchange: Exchange | None) -> None:
        self.metrics, self.profile, self.exchange = metrics, profile, exchange
        if metrics is not None:
            metrics.turn_started(profile)

    def end(self, exc: BaseException | None) -> None:
        if self.metrics is not None:
            self.metrics.turn_ended(self.profile)
        if exc is not None and self.exchange is not None:
            self.exchange.failed(exc)


class _ObservedStream:
    """A turn's stream (the wrapped runner's context manager), its chunks observed
    (``_ObservedChunks``) and the turn counted in flight until it is left."""

    __slots__ = ("_inner", "_running")

    def __init__(self, inner: AbstractAsyncContextManager[AsyncIterator[StreamItem]], running: _Running) -> None:
        self._inner = inner
        self._running = running

    async def __aenter__(self) -> AsyncIterator[StreamItem]:
        try:
            chunks = await self._inner.__aenter__()
        except BaseException as exc:
            self._running.end(exc)
            raise
        exchange = self._running.exchange
        if exchange is None:
            return chunks
        exchange.streaming = True
        return _ObservedChunks(chunks, exchange)

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool | None:
        try:
            suppressed = await self._inner.__aexit__(kind, exc, tb)
        except BaseException as raised:
            self._running.end(raised)
            raise
        self._running.end(None if suppressed else exc)
        return suppressed


class _ObservedChunks:
    """A turn's stream, read in ``batches()`` or one by one, each batch through
    ``_ObservedBatches``."""

    __slots__ = ("_batches", "_pending")

    def __init__(self, chunks: AsyncIterator[StreamItem], exchange: Exchange) -> None:
        self._batches = _ObservedBatches(batches(chunks), exchange)
        self._pending: deque[StreamItem] = deque()

    def batches(self) -> AsyncIterator[list[StreamItem]]:
        """The stream as ``turns.batches`` reads it: one list per read of the upstream."""
        return self._batches

    def __aiter__(self) -> _ObservedChunks:
        return self

    async def __anext__(self) -> StreamItem:
        while not self._pending:
            self._pending.extend(await self._batches.__anext__())
        return self._pending.popleft()


class _ObservedBatches:
    """The batches of a turn's stream, the usage chunk noted, and the stream's end or
    error told to the exchange."""

    __slots__ = ("_batches", "_exchange")

    def __init__(self, batches: AsyncIterator[list[StreamItem]], exchange: Exchange) -> None:
        self._batches = batches
        self._exchange = exchange

    def __aiter__(self) -> _ObservedBatches:
        return self

    async def __anext__(self) -> list[StreamItem]:
        exchange = self._exchange
        try:
            batch = await self._batches.__anext__()
        except StopAsyncIteration:
            exchange.ended = True
            raise
        except BaseException as exc:
            exchange.failed(exc)
            raise
        for chunk in batch:
            if isinstance(chunk, dict) and chunk.get("usage") is not None:
                exchange.take_usage(chunk["usage"])
        return batch


class MeteredStore:
    """The store, each write counted (``hermes_api_store_writes_total``) and each failed
    one too (``hermes_api_store_write_failures_total``); every other attribute is the
    wrapped store's. Usage rows are counted when their group's commit is over, one
    callback a group (``store.QueuedRow.group``)."""

    def __init__(self, store: Any, metrics: Metrics) -> None:
        self.store = store
        self._metrics = metrics
        self._rows: dict[asyncio.Future[Any], int] = {}
        for name in STORE_WRITES:
            method = getattr(store, name, None)
            if method is not None and name != "record_usage":
                setattr(self, name, self._metered(name, method))

    def _metered(self, name: str, method: Any) -> Any:
        metrics = self._metrics

        async def write(*args: Any, **kwargs: Any) -> Any:
            try:
                result = await method(*args, **kwargs)
            except Exception:  # not a cancellation: the client left, the store did not fail
                metrics.store_write(name, failed=True)
                raise
            metrics.store_write(name, failed=False)
            return result

        write.__name__ = name
        return write

    def record_usage(self, record: UsageRecord) -> Any:
        queued = self.store.record_usage(record)
        if not isinstance(queued, QueuedRow):
            return self._metered("record_usage", lambda: queued)()
        count = self._rows.get(queued.group)
        if count is None:
            queued.group.add_done_callback(self._rows_written)
        self._rows[queued.group] = (count or 0) + 1
        return queued

    def _rows_written(self, group: asyncio.Future[Any]) -> None:
        count = self._rows.pop(group, 0)
        failed = count if group.cancelled() or group.exception() is not None else len(group.result())
        self._metrics.store_writes_done("record_usage", count, failed)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


class StatusTransport(httpx.AsyncBaseTransport):
    """The upstream transport, the provider's HTTP status noted on the current exchange."""

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self.transport = transport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.transport.handle_async_request(request)
        exchange = current_exchange()
        if exchange is not None:
            exchange.upstream_status = response.status_code
        return response

    async def aclose(self) -> None:
        await self.transport.aclose()
