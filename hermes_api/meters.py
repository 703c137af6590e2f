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
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
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
    answered; ``metrics`` (None: off) counts the turns in flight."""

    def __init__(self, runner: TurnRunner, metrics: Metrics | None) -> None:
        self.runner = runner
        self._metrics = metrics

    async def complete(self, turn: Turn) -> Completion:
        exchange = current_exchange()
        with _Running(self._metrics, turn.profile.name, exchange):
            completion = await self.runner.complete(turn)
        if exchange is not None:
            exchange.take_usage(completion.body.get("usage"))
        return completion

    def stream(self, turn: Turn) -> AbstractAsyncContextManager[AsyncIterator[StreamItem]]:
        return self._stream(replace(turn, request=with_usage_chunk(turn.request)))

    @asynccontextmanager
    async def _stream(self, turn: Turn) -> AsyncIterator[AsyncIterator[StreamItem]]:
        exchange = current_exchange()
        with _Running(self._metrics, turn.profile.name, exchange):
            async with self.runner.stream(turn) as chunks:
                if exchange is None:
                    yield chunks
                else:
                    exchange.streaming = True
                    yield _ObservedChunks(chunks, exchange)


class _Running:
    """Around a turn: counted in flight (``metrics``, None: off), its failure told to
    ``exchange``."""

    __slots__ = ("metrics", "profile", "exchange")

    def __init__(self, metrics: Metrics | None, profile: str, exchange: Exchange | None) -> None:
        self.metrics, self.profile, self.exchange = metrics, profile, exchange

    def __enter__(self) -> None:
        if self.metrics is not None:
            self.metrics.turn_started(self.profile)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if self.metrics is not None:
            self.metrics.turn_ended(self.profile)
        if exc is not None and self.exchange is not None:
            self.exchange.failed(exc)


class _ObservedChunks:
    """A turn's stream, in ``batches()`` or one by one, with the usage chunk noted, and
    the stream's end or error told to the exchange."""

    def __init__(self, chunks: AsyncIterator[StreamItem], exchange: Exchange) -> None:
        self._chunks = chunks
        self._exchange = exchange
        self._each: AsyncIterator[StreamItem] | None = None

    async def batches(self) -> AsyncIterator[list[StreamItem]]:
        exchange = self._exchange
        try:
            async for batch in batches(self._chunks):
                for chunk in batch:
                    if isinstance(chunk, dict) and chunk.get("usage") is not None:
                        exchange.take_usage(chunk["usage"])
                yield batch
        except BaseException as exc:
            exchange.failed(exc)
            raise
        exchange.ended = True

    def __aiter__(self) -> _ObservedChunks:
        return self

    async def __anext__(self) -> StreamItem:
        if self._each is None:
            self._each = self._one_by_one()
        return await anext(self._each)

    async def _one_by_one(self) -> AsyncIterator[StreamItem]:
        async for batch in self.batches():
            for chunk in batch:
                yield chunk


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
