"""Wrappers that note on the current request's ``exchange.Exchange`` what the app's parts did.

``app.create_app`` wraps the turn runner, the store and the upstream transport in these,
so the endpoints stay free of metrics and usage code. What is not tied to one answer
(store writes) goes straight to ``metrics.Metrics``.

- ``ObservedTurns``: the provider's token figures (``usage`` of the answer, or of the
  stream's last chunk, which every streamed turn asks the provider for:
  ``turns.direct``, ``translation``), the error that ended a stream after its first
  byte, whether it reached its end.
- ``MeteredStore``: every write to the store and whether it failed.
- ``StatusTransport``: the HTTP status the provider answered.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx

from .exchange import Exchange, current_exchange
from .metrics import Metrics
from .turns import Completion, StreamItem, Turn, TurnRunner, batches

# The store's methods that write; everything else passes through unmetered.
STORE_WRITES = ("put_response", "delete_response", "append_session")


class ObservedTurns:
    """A ``turns.TurnRunner`` that tells the current exchange what the one it wraps
    answered: the provider's token figures, whether a stream reached its end, the error
    that ended one after its first byte. (An error before the first byte reaches
    ``binding.ProfileEndpoint``, which notes it; turns in flight are the concurrency
    limiter's count.)

    No generator and no ``asynccontextmanager`` on this path: every turn passes through
    it, an async generator costs asyncio's hooks (a WeakSet entry) and its finalizer,
    and a generator-based context manager a generator of its own; plain classes do the
    same for less (bench/RESULTS.md, "Observation")."""

    def __init__(self, runner: TurnRunner) -> None:
        self.runner = runner

    async def complete(self, turn: Turn) -> Completion:
        completion = await self.runner.complete(turn)
        exchange = current_exchange()
        if exchange is not None:
            exchange.take_usage(completion.body.get("usage"))
        return completion

    def stream(self, turn: Turn) -> AbstractAsyncContextManager[AsyncIterator[StreamItem]]:
        inner = self.runner.stream(turn)
        exchange = current_exchange()
        return inner if exchange is None else _ObservedStream(inner, exchange)


class _ObservedStream:
    """A turn's stream (the wrapped runner's context manager), its chunks observed
    (``_ObservedChunks``) once it has begun."""

    __slots__ = ("_inner", "_exchange")

    def __init__(self, inner: AbstractAsyncContextManager[AsyncIterator[StreamItem]], exchange: Exchange) -> None:
        self._inner = inner
        self._exchange = exchange

    async def __aenter__(self) -> AsyncIterator[StreamItem]:
        chunks = await self._inner.__aenter__()
        self._exchange.streaming = True
        return _ObservedChunks(chunks, self._exchange)

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool | None:
        return await self._inner.__aexit__(kind, exc, tb)


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
        # The usage is the last chunk's (OpenAI's chat-completions reference,
        # ``stream_options.include_usage``: one more chunk before [DONE], every other
        # chunk's ``usage`` null; providers that put it on every chunk count up to it):
        # so each batch's last item, not every chunk.
        last = batch[-1] if batch else None
        if type(last) is dict and (usage := last.get("usage")) is not None:
            exchange.take_usage(usage)
        return batch


class MeteredStore:
    """The store, each write counted (``hermes_api_store_writes_total``) and each failed
    one too (``hermes_api_store_write_failures_total``); every other attribute is the
    wrapped store's. (Usage rows are counted by ``exchange.UsageRows``, which follows
    each group of them already.)"""

    def __init__(self, store: Any, metrics: Metrics) -> None:
        self.store = store
        self._metrics = metrics
        for name in STORE_WRITES:
            method = getattr(store, name, None)
            if method is not None:
                setattr(self, name, self._metered(name, method))
        # every turn's: an attribute of its own, not a trip through __getattr__
        self.record_usage = store.record_usage

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
