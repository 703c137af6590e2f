"""The ContextVar that holds the profile a request is bound to (docs/contract.md §3).

``binding.ProfileEndpoint`` sets it around both the handler and the sending of its
response, so a streamed body runs under its own profile; ``run_sync`` carries it into
worker threads; ``Unbound``, the outermost middleware, makes every request start with no
profile bound. Nothing else in the process reads a "current" profile from anywhere else.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

import anyio.to_thread
from starlette.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from .profiles import Profile

T = TypeVar("T")

_profile: contextvars.ContextVar[Profile | None] = contextvars.ContextVar("hermes_profile", default=None)


@contextmanager
def use_profile(profile: Profile) -> Iterator[Profile]:
    """Bind ``profile`` for the enclosed block; the previous binding comes back after it."""
    token = _profile.set(profile)
    try:
        yield profile
    finally:
        _profile.reset(token)


class Unbound:
    """ASGI middleware: every request starts with no profile bound. An asyncio task
    starts with a copy of the context it was created in, and uvicorn creates a
    pipelined request's task inside the previous request's last ``send``
    (``HttpToolsProtocol.on_response_complete``), where that request's profile is bound."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = _profile.set(None)
        try:
            await self.app(scope, receive, send)
        finally:
            _profile.reset(token)


def current_profile() -> Profile:
    """The profile bound to this request. Raises ``LookupError`` outside a bound request."""
    profile = _profile.get()
    if profile is None:
        raise LookupError("no profile is bound to this context")
    return profile


async def run_sync(func: Callable[..., T], *args: object, executor: Executor | None = None) -> T:
    """Run blocking ``func(*args)`` in a worker thread under a copy of this context, so
    the thread sees the same profile (``contextvars.copy_context()``). ``executor``: a
    pool of one's own (the store's single thread) instead of anyio's shared one; its
    work finishes even if the awaiting request is cancelled."""
    ctx = contextvars.copy_context()
    if executor is not None:
        return await asyncio.get_running_loop().run_in_executor(executor, ctx.run, func, *args)
    return await anyio.to_thread.run_sync(ctx.run, func, *args)
