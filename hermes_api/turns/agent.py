"""AgentTurns: a turn run by the profile's real Hermes agent, in its worker process.

The request's messages go to the profile's worker (``agent.pool``) as they are; there
Hermes runs the turn as its own API server does (``agent/worker.py``). What comes back
is rendered as chat-completions objects, so the endpoints, the error table and the
limits see one kind of turn: the answer text as ``content`` (never ``tool_calls``: the
tools already ran), the agent's usage, and ``ToolEvent``s between the chunks for the
renderers that show tool activity. Failures become the error table's errors here: the
provider's (``upstream.status_error``, as for a direct turn), a 400 for input Hermes
refuses, ``AgentWorkerError`` and ``AgentTimeoutError``.

The client going away, the shutdown deadline (``shutdown.Drain``) and ``turn_timeout``
all end the wait with a cancellation; the worker is then told to ``interrupt`` the
agent at once, so its tools and provider call stop within a fraction of a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson

from ..agent.pool import WorkerPool
from ..agent.process import RemoteTurn, WorkerProcess
from ..errors import AgentTimeoutError, HermesAPIError, InvalidValueError, ServerError, UpstreamUnavailableError
from ..profiles import Profile
from ..settings import Settings
from ..tool_activity import strip_blocks
from ..upstream import scrub, status_error
from . import Chunk, Completion, ToolEvent, Turn

logger = logging.getLogger("hermes_api")

StreamItem = Chunk | ToolEvent


class AgentTurns:
    """``TurnRunner`` over the pool of agent workers."""

    def __init__(self, pool: WorkerPool, settings: Settings) -> None:
        self._pool = pool
        self._settings = settings

    def _message(self, turn: Turn, stream: bool) -> dict[str, Any]:
        """The ``turn`` message for the worker (``agent/wire.py``). The namespace keeps
        two API keys from ever sharing a ``state.db`` session; ``delegation`` offers the
        agent its profile's delegation tool (``delegation.Grant``)."""
        namespace = hashlib.sha256(f"hermes-api\0{turn.owner}".encode()).hexdigest()[:32]
        return {
            "messages": [_without_blocks(m) for m in turn.request["messages"]],
            "session": {"namespace": namespace, "id": turn.session_id},
            "toolsets": list(self._settings.agent.profile(turn.profile.name).toolsets),
            "stream": stream,
            "delegation": turn.delegation.wire() if turn.delegation is not None else None,
        }

    async def _submit(self, turn: Turn, stream: bool) -> tuple[WorkerProcess, RemoteTurn]:
        worker = await self._pool.acquire(turn.profile)
        return worker, await worker.submit(self._message(turn, stream))

    async def complete(self, turn: Turn) -> Completion:
        worker, remote = await self._submit(turn, stream=False)
        timeout = self._settings.agent.profile(turn.profile.name).turn_timeout
        tools: list[ToolEvent] = []
        try:
            async with asyncio.timeout(timeout):
                async for items in remote.batches():
                    tools += (tool_event(item) for item in items if isinstance(item, dict))
        except TimeoutError:
            raise self._timed_out(turn.profile, worker, remote, timeout) from None
        finally:
            if not remote.done:  # cancelled: the client went away, or the shutdown deadline
                worker.interrupt(remote, "the request was cancelled")
        body = completion(turn.profile.name, self._result(turn.profile, remote))
        return Completion(body, tuple(t for t in tools if t.status == "completed"))

    @asynccontextmanager
    async def stream(self, turn: Turn) -> AsyncIterator[AsyncIterator[list[StreamItem]]]:
        """Entered once the turn has sent something or ``sse_keepalive`` seconds have
        passed, so that a turn failing at once (the provider refusing the key) is still
        an error before the first byte. Leaving interrupts a turn still running."""
        worker, remote = await self._submit(turn, stream=True)
        timeout = self._settings.agent.profile(turn.profile.name).turn_timeout
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(remote.arrived(), min(timeout, self._settings.sse_keepalive))
            if remote.done and (remote.error is not None or not (remote.result or {}).get("ok")):
                self._result(turn.profile, remote)  # raises: the failure goes out before the first byte
            yield _Chunks(self, turn.profile, worker, remote, deadline)
        finally:
            if not remote.done:
                worker.interrupt(remote, "the client went away")

    def _timed_out(
        self, profile: Profile, worker: WorkerProcess, remote: RemoteTurn, timeout: float
    ) -> AgentTimeoutError:
        worker.interrupt(remote, "the turn timed out")
        return AgentTimeoutError(
            f"The agent turn of profile '{profile.name}' took longer than {timeout:g}s and was stopped."
        )

    def _result(self, profile: Profile, remote: RemoteTurn) -> dict[str, Any]:
        """The turn's ``result`` message; raises its failure as the error table's error."""
        if remote.error is not None:
            raise remote.error
        assert remote.result is not None
        result = remote.result
        if result["ok"]:
            self._pool.succeeded(profile.name)
            return result
        raise turn_error(profile, result["error"])


class _Chunks:
    """A streamed agent turn as batches of chat chunks and ``ToolEvent``s, ending with
    the finish chunk and the usage chunk (``choices: []``); a failure (the turn's
    ``turn_timeout`` included) raises."""

    def __init__(self, runner: AgentTurns, profile: Profile, worker: WorkerProcess, remote: RemoteTurn,
                 deadline: float) -> None:  # fmt: skip
        self._runner, self._profile, self._worker, self._remote = runner, profile, worker, remote
        self._deadline = deadline
        self._base = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": profile.name,
        }

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> Chunk:
        return {**self._base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    async def batches(self) -> AsyncIterator[list[StreamItem]]:
        remote = self._remote
        yield [self._chunk({"role": "assistant", "content": ""})]
        while True:
            try:
                async with asyncio.timeout_at(self._deadline):
                    await remote.arrived()
            except TimeoutError:
                timeout = self._runner._settings.agent.profile(self._profile.name).turn_timeout
                raise self._runner._timed_out(self._profile, self._worker, remote, timeout) from None
            items = remote.take()
            if items:
                yield [self._chunk({"content": i}) if isinstance(i, str) else tool_event(i) for i in items]
            if remote.done:
                break
        result = self._runner._result(self._profile, remote)
        yield [
            self._chunk({}, result.get("finish_reason") or "stop"),
            {**self._base, "choices": [], "usage": result.get("usage")},
        ]

    def __aiter__(self) -> AsyncIterator[StreamItem]:
        return self._one_by_one()

    async def _one_by_one(self) -> AsyncIterator[StreamItem]:
        async for batch in self.batches():
            for item in batch:
                yield item


def _without_blocks(message: dict[str, Any]) -> dict[str, Any]:
    """An assistant message without the tool blocks Open WebUI sends back
    (``tool_activity.strip_blocks``): the agent's own history has the real tool calls."""
    content = message.get("content")
    if message.get("role") == "assistant" and isinstance(content, str) and "<details" in content:
        return {**message, "content": strip_blocks(content)}
    return message


def tool_event(message: dict[str, Any]) -> ToolEvent:
    """A worker's ``tool`` message as a ``ToolEvent``."""
    return ToolEvent(
        call_id=message["call_id"],
        name=message["name"],
        arguments=message.get("arguments") or "{}",
        status=message["status"],
        output=message.get("output"),
        emoji=message.get("emoji") or "",
        label=message.get("label") or message["name"],
    )


def completion(name: str, result: dict[str, Any]) -> dict[str, Any]:
    """The ``chat.completion`` object of a finished agent turn."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": name,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.get("text") or ""},
                "finish_reason": result.get("finish_reason") or "stop",
                "logprobs": None,
            }
        ],
        "usage": result.get("usage"),
    }


def turn_error(profile: Profile, error: dict[str, Any]) -> HermesAPIError:
    """The error table's error for a turn the agent could not finish (``wire`` ``result``
    ``error``): the provider's failure is mapped as for a direct turn (``upstream``),
    Hermes refusing the input is a 400, anything else a 500 (details in the log). The
    profile's key is scrubbed from the message as from a direct turn's provider errors: a
    provider may echo it, and Hermes redacts only the key formats it knows."""
    kind, message = error.get("kind"), scrub(str(error.get("message") or ""), profile)
    if kind == "input":
        return InvalidValueError(message, param=error.get("param"))
    if kind == "provider":
        logger.warning("profile %s: the agent's provider call failed: %s", profile.name, message)
        status = error.get("status")
        if isinstance(status, int) and 400 <= status <= 599:
            body = orjson.dumps({"error": {"message": f"The agent's provider call failed: {message}"}})
            return status_error(status, body, httpx.Headers(), profile)
        return UpstreamUnavailableError(
            f"The upstream provider of profile '{profile.name}' could not be reached by the agent "
            f"({error.get('failure_reason') or 'no answer'})."
        )
    logger.error("profile %s: the agent failed: %s", profile.name, message)
    return ServerError("The agent failed while processing your request; see the server log.")
