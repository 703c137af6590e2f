"""Wrappers that note what the app's parts did for the current request.

``app.create_app`` wraps the turn runner, the store and the upstream transport in these,
so the endpoints stay free of metrics code. What they learn goes on the request's
``exchange.Exchange`` (recorded when the answer is over) or, for what is not tied to
one answer (turns in flight, store writes), straight to ``metrics.Metrics``.

- ``MeteredTurns``: the provider's token counts (``usage`` of the answer, or of the
  last stream chunk that has one), the upstream error's code, turns in flight.
- ``MeteredStore``: every write to the store and whether it failed.
- ``StatusTransport``: the HTTP status the provider answered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx

from .errors import UpstreamError, UpstreamRejectedError
from .exchange import Exchange, current_exchange
from .metrics import Metrics
from .turns import Completion, StreamItem, Turn, TurnRunner, batches

# The store's methods that write; everything else passes through unmetered.
STORE_WRITES = ("put_response", "delete_response", "append_session", "record_usage")


def error_kind(exc: UpstreamError) -> str:
    """The ``kind`` label of an upstream error: its code (errors.py), except a 4xx the
    provider's own code passes on with, which is ``upstream_rejected`` (its codes are
    the provider's, an open set)."""
    if isinstance(exc, UpstreamRejectedError):
        return "upstream_rejected"
    return exc.code or "upstream_error"


def _note_usage(exchange: Exchange | None, usage: object) -> None:
    """Take the token counts of an OpenAI ``usage`` object (chat completions' names)."""
    if exchange is None or not isinstance(usage, dict):
        return
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if isinstance(prompt, int) and not isinstance(prompt, bool):
        exchange.input_tokens = prompt
    if isinstance(completion, int) and not isinstance(completion, bool):
        exchange.output_tokens = completion


def _note_error(exchange: Exchange | None, exc: BaseException) -> None:
    if exchange is not None and isinstance(exc, UpstreamError):
        exchange.upstream_error = error_kind(exc)


class MeteredTurns:
    """A ``turns.TurnRunner`` that meters the one it wraps."""

    def __init__(self, runner: TurnRunner, metrics: Metrics) -> None:
        self.runner = runner
        self._metrics = metrics

    async def complete(self, turn: Turn) -> Completion:
        exchange = current_exchange()
        name = turn.profile.name
        self._metrics.turn_started(name)
        try:
            completion = await self.runner.complete(turn)
        except BaseException as exc:
            _note_error(exchange, exc)
            raise
        finally:
            self._metrics.turn_ended(name)
        _note_usage(exchange, completion.body.get("usage"))
        return completion

    def stream(self, turn: Turn) -> AbstractAsyncContextManager[AsyncIterator[StreamItem]]:
        return self._stream(turn)

    @asynccontextmanager
    async def _stream(self, turn: Turn) -> AsyncIterator[AsyncIterator[StreamItem]]:
        exchange = current_exchange()
        name = turn.profile.name
        self._metrics.turn_started(name)
        try:
            async with self.runner.stream(turn) as chunks:
                yield _MeteredChunks(chunks, exchange)
        except BaseException as exc:
            _note_error(exchange, exc)
            raise
        finally:
            self._metrics.turn_ended(name)


class _MeteredChunks:
    """A turn's stream, one by one or in ``batches()``, noting usage and failures."""

    def __init__(self, chunks: AsyncIterator[StreamItem], exchange: Exchange | None) -> None:
        self._chunks = chunks
        self._exchange = exchange

    async def batches(self) -> AsyncIterator[list[StreamItem]]:
        exchange = self._exchange
        try:
            async for batch in batches(self._chunks):
                for chunk in batch:
                    if isinstance(chunk, dict) and chunk.get("usage"):
                        _note_usage(exchange, chunk["usage"])
                yield batch
        except BaseException as exc:
            _note_error(exchange, exc)
            raise

    def __aiter__(self) -> AsyncIterator[StreamItem]:
        return self._one_by_one()

    async def _one_by_one(self) -> AsyncIterator[StreamItem]:
        async for batch in self.batches():
            for chunk in batch:
                yield chunk


class MeteredStore:
    """The store, each write counted (``hermes_api_store_writes_total``) and each failed
    one too (``hermes_api_store_write_failures_total``); every other attribute is the
    wrapped store's."""

    def __init__(self, store: Any, metrics: Metrics) -> None:
        self.store = store
        self._metrics = metrics
        for name in STORE_WRITES:
            method = getattr(store, name, None)
            if method is not None:
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
