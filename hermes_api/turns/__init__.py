"""How a turn runs: a ``Turn`` in, a chat answer out (docs/architecture.md, "Turns").

``TurnRunner`` is the seam between the wire and what answers. The endpoints (chat
completions, the Responses API) build a ``Turn`` and render what comes back; they never
know who answered. Two runners implement it, chosen per profile by ``Turns``:

- ``direct.DirectTurns``: one chat-completions call to the profile's provider, the
  persona as the head system message (the default);
- ``agent.AgentTurns``: the real Hermes agent of the profile, with its tools, skills,
  memory and ``state.db`` sessions, in a worker process of its own (``agent:`` in the
  config).

A runner also keeps the conversation of a session (``Turn.session_id``, the client's
``X-Hermes-Session-Id``): the direct runner in the response store, the agent runner in
the profile's ``state.db`` as Hermes does. Answers are ``chat.completion`` objects (and
chunks) whose ``model`` is the profile's name; tools the server ran come as
``ToolEvent``s beside them, never as ``tool_calls``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from ..delegation import Grant
    from ..profiles import Profile

ChatRequest = dict[str, Any]
Chunk = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Turn:
    """One turn: the bound ``profile``, the chat-completions ``request`` (``messages``
    and the rest of the body), whose it is (``owner``: ``keys.Caller.owner``), the
    session it continues (None: the request carries its whole conversation), and what
    its agent may delegate (``delegation.Grant``; None: nothing, and always for a
    direct profile)."""

    profile: Profile
    request: ChatRequest
    owner: str = "open"
    session_id: str | None = None
    delegation: Grant | None = None


@dataclass(frozen=True, slots=True)
class ToolEvent:
    """A tool the server ran during a turn: ``status`` ``running`` when it starts,
    ``completed`` (with its ``output``) when it ends. ``arguments`` is JSON text;
    ``emoji`` and ``label`` are Hermes's display of it (``agent/display.py``)."""

    call_id: str
    name: str
    arguments: str
    status: Literal["running", "completed"]
    output: str | None = None
    emoji: str = ""
    label: str = ""


@dataclass(frozen=True, slots=True)
class Completion:
    """A finished turn: the ``chat.completion`` object, and the tools the server ran
    for it (completed ``ToolEvent``s, in the order they ended)."""

    body: dict[str, Any]
    tools: tuple[ToolEvent, ...] = ()


StreamItem = Chunk | ToolEvent


class TurnRunner(Protocol):
    """Runs turns. Both methods raise ``errors.HermesAPIError``s of the error table."""

    async def complete(self, turn: Turn) -> Completion:
        """The finished turn."""
        ...

    def stream(self, turn: Turn) -> AbstractAsyncContextManager[AsyncIterator[StreamItem]]:
        """Entering fails before the first byte; the iterator yields
        ``chat.completion.chunk`` objects and ``ToolEvent``s, and raises after it.
        Leaving releases what the turn holds (an upstream connection; a running agent is
        interrupted). The iterator may also have a ``batches()`` method (``batches``)."""
        ...


class Turns:
    """The runner of each profile: ``agent`` for the profiles the agent runtime serves
    (``Profile.runtime``), ``direct`` for the others."""

    def __init__(self, direct: TurnRunner, agent: TurnRunner | None = None) -> None:
        self.direct = direct
        self.agent = agent

    def runner(self, profile: Profile) -> TurnRunner:
        if profile.runtime == "agent" and self.agent is not None:
            return self.agent
        return self.direct

    async def complete(self, turn: Turn) -> Completion:
        return await self.runner(turn.profile).complete(turn)

    def stream(self, turn: Turn) -> AbstractAsyncContextManager[AsyncIterator[StreamItem]]:
        return self.runner(turn.profile).stream(turn)


def batches(items: AsyncIterator[StreamItem]) -> AsyncIterator[list[StreamItem]]:
    """``items`` in the groups they arrived in together (one list per network read of
    the upstream, or per wake-up of an agent turn), when the iterator offers
    ``batches()``; else one item per list. Senders write a burst at once."""
    grouped = getattr(items, "batches", None)
    return grouped() if grouped is not None else _one_by_one(items)


async def _one_by_one(items: AsyncIterator[StreamItem]) -> AsyncIterator[list[StreamItem]]:
    async for item in items:
        yield [item]
