"""Usage records: what each turn used and how it ended, one row per turn in the store.

``binding.ProfileEndpoint`` gives every turn (a chat completion or a Responses request,
streamed or not) a ``TurnMeter`` once its profile is known, and queues the meter's
``UsageRecord`` in the store after the response has been sent (``save``), so recording
never delays an answer, nor keeps the request going.
The meter learns what it records on the way:

- the provider's token figures, by standing between the endpoint and the app's
  ``TurnRunner`` (``TurnMeter.runner``): ``usage.prompt_tokens`` and
  ``usage.completion_tokens`` of the answer or of the stream's usage chunk, as the
  provider sent them, None when it sent none. Streams ask the provider for that chunk
  (``stream_options.include_usage``, OpenAI's chat-completions API reference); the chat
  endpoint passes it to the client only when the client asked for it;
- the HTTP status sent, from the response's start;
- the error: the code of the ``HermesAPIError`` that answered the request, or that
  ended a stream after its first byte; a stream that stopped before the provider's end
  without one is ``client_disconnected``, ``server_shutting_down`` or ``incomplete``.

The meter is ``request.state.turn_meter`` for anything outside that wants the same
figures per request (metrics): ``first_byte`` and ``record()``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from typing import Any

from starlette.types import Message, Receive

from .errors import HermesAPIError, StoreUnavailableError
from .profiles import Profile
from .store import ResponseStore, UsageRecord
from .turns import ChatRequest, Completion, StreamItem, Turn, TurnRunner, batches

logger = logging.getLogger("hermes_api")


def error_code(exc: BaseException) -> str:
    """The code a client is given for ``exc``: its own for our errors, else ``server_error``."""
    return (exc.code or "server_error") if isinstance(exc, HermesAPIError) else "server_error"


def _tokens(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class TurnMeter:
    """One turn's figures, gathered while it runs; ``record()`` is its usage row."""

    def __init__(
        self,
        *,
        key_name: str,
        profile: Profile,
        operation: str,
        stream: bool,
        request_id: str,
        delegated_by: str | None = None,
        caller_request_id: str | None = None,
    ) -> None:
        self.id = f"{random.getrandbits(128):032x}"  # not uuid4: os.urandom was 9% of a chat turn's CPU
        self.created_at = time.time()
        self.started = time.monotonic()
        self.key_name, self.profile, self.operation = key_name, profile, operation
        self.stream, self.request_id = stream, request_id
        self.delegated_by, self.caller_request_id = delegated_by, caller_request_id  # a delegated turn's caller
        self.status: int | None = None
        self.error: str | None = None
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.first_byte: float | None = None  # seconds from the start to the first body byte
        self.duration: float | None = None  # seconds, once the response is over
        self.streaming = False  # a stream from the provider is open
        self.ended = False  # it reached its end
        self.disconnected = False  # the client went away

    def runner(self, turns: TurnRunner) -> TurnRunner:
        """``turns``, with this meter watching what comes back."""
        return _MeteredTurns(turns, self)

    def take_usage(self, usage: object) -> None:
        """Keep the provider's figures from a ``usage`` object (chat-completions shape)."""
        if isinstance(usage, dict):
            self.input_tokens = _tokens(usage.get("prompt_tokens"))
            self.output_tokens = _tokens(usage.get("completion_tokens"))

    def sent(self, message: dict[str, Any]) -> None:
        """Watch one ASGI message going to the client."""
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif self.first_byte is None and message.get("body"):
            self.first_byte = time.monotonic() - self.started

    def watch(self, receive: Receive) -> Receive:
        """``receive``, noting when the client goes away."""

        async def watched() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
            return message

        return watched

    def finish(self, *, draining: bool) -> UsageRecord:
        """The row, now that the response is over; ``draining``: the server is stopping."""
        self.duration = time.monotonic() - self.started
        if self.error is None and self.streaming and not self.ended:
            self.error = (
                "client_disconnected" if self.disconnected else "server_shutting_down" if draining else "incomplete"
            )
        return self.record()

    def record(self) -> UsageRecord:
        return UsageRecord(
            id=self.id,
            created_at=self.created_at,
            key_name=self.key_name,
            profile=self.profile.name,
            model=self.profile.model,
            operation=self.operation,
            stream=self.stream,
            request_id=self.request_id,
            status=self.status,
            error=self.error,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            duration=self.duration,
            delegated_by=self.delegated_by,
            caller_request_id=self.caller_request_id,
        )


def save(store: ResponseStore, record: UsageRecord) -> None:
    """Queue ``record`` in the store and return at once: the store writes it within a
    few milliseconds with others (and before it closes), and a failure is logged, never
    raised, since the answer has been sent."""

    def logged(written: asyncio.Future[None]) -> None:
        error = None if written.cancelled() else written.exception()
        if isinstance(error, StoreUnavailableError):  # the store logged the outage once
            logger.warning("could not record the usage of request %s: the store is unavailable", record.request_id)
        elif error is not None:
            logger.error("could not record the usage of request %s", record.request_id, exc_info=error)

    try:
        written = asyncio.ensure_future(store.record_usage(record))
    except Exception:
        logger.exception("could not record the usage of request %s", record.request_id)
        return
    written.add_done_callback(logged)


def with_usage_chunk(request: ChatRequest) -> ChatRequest:
    """A streamed chat request that asks the provider for its usage chunk."""
    options = request.get("stream_options")
    return {**request, "stream_options": {**(options if isinstance(options, dict) else {}), "include_usage": True}}


class _MeteredTurns:
    """A ``TurnRunner`` that tells its meter what the provider answered."""

    def __init__(self, turns: TurnRunner, meter: TurnMeter) -> None:
        self._turns = turns
        self._meter = meter

    async def complete(self, turn: Turn) -> Completion:
        try:
            completion = await self._turns.complete(turn)
        except HermesAPIError as exc:
            self._meter.error = error_code(exc)
            raise
        self._meter.take_usage(completion.body.get("usage"))
        return completion

    def stream(self, turn: Turn) -> AbstractAsyncContextManager[AsyncIterator[StreamItem]]:
        return self._stream(replace(turn, request=with_usage_chunk(turn.request)))

    @asynccontextmanager
    async def _stream(self, turn: Turn) -> AsyncIterator[AsyncIterator[StreamItem]]:
        meter = self._meter
        try:
            async with self._turns.stream(turn) as chunks:
                meter.streaming = True
                yield _MeteredChunks(chunks, meter)
        except HermesAPIError as exc:
            meter.error = meter.error or error_code(exc)
            raise


class _MeteredChunks:
    """A stream's chunks, in ``batches()`` or one by one, with the usage chunk noted,
    and the stream's end or error told to the meter."""

    def __init__(self, chunks: AsyncIterator[StreamItem], meter: TurnMeter) -> None:
        self._chunks = chunks
        self._meter = meter
        self._each: AsyncIterator[StreamItem] | None = None

    async def batches(self) -> AsyncIterator[list[StreamItem]]:
        meter = self._meter
        try:
            async for batch in batches(self._chunks):
                for chunk in batch:
                    if isinstance(chunk, dict) and chunk.get("usage") is not None:
                        meter.take_usage(chunk["usage"])
                yield batch
        except Exception as exc:
            meter.error = error_code(exc)
            raise
        meter.ended = True

    def __aiter__(self) -> _MeteredChunks:
        return self

    async def __anext__(self) -> StreamItem:
        if self._each is None:
            self._each = self._one_by_one()
        return await anext(self._each)

    async def _one_by_one(self) -> AsyncIterator[StreamItem]:
        async for batch in self.batches():
            for chunk in batch:
                yield chunk
