"""Routes that run under one profile: read, resolve, bind, delegate (docs/contract.md §3).

``ProfileEndpoint`` is a plain ASGI endpoint. It reads the JSON body (bounded by
``max_body_bytes``), resolves the profile with the registry, then runs the handler *and
sends its response* inside ``use_profile`` in the same frame, so a streamed body is still
bound to its profile and the binding is undone after the last byte (plain ASGI, as
starlette-context's ``middleware/raw_middleware.py``; never ``BaseHTTPMiddleware``). The
same object serves the plain route and its ``/p/<profile>/`` twin: one enforcement point.

Routes about a stored object (``/v1/responses/{id}``) pass ``implied``: when the request
names no profile explicitly, the object's own profile applies (never ``routes`` or the
default profile), and is still checked against the caller's key.

Handlers get ``(request, body)``, read the profile with ``context.current_profile()``,
and may put upstream streams in ``request.state.resources`` (an ``AsyncExitStack``)
which is closed after the response is sent, or when the client goes away.

A client that goes away ends its turn at once, streamed or not: ``until_disconnect``
cancels the handler of a turn-running route while it waits on the provider, and
``sse.EventStreamResponse`` the sending of a stream; either way the upstream request is
closed and the concurrency slot freed by the same exit of ``resources``.

Every request passes here once its profile is known, so this is where the request's
record (``exchange.Exchange``, when requests are observed) learns its profile, and a
turn (``runs_turns``) its model, operation and stream; a turn is admitted under its
key's rate limits here (``quotas.admit``: the check and the usage row's insert are one
store transaction). ``exchange.ExchangeMiddleware`` queues the row in the store after
the response is over and its concurrency slot released, so recording delays neither.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from . import quotas
from .context import use_profile
from .errors import (
    HermesAPIError,
    InvalidJSONError,
    KeyRateLimitError,
    RequestTooLargeError,
    RouteNotFoundError,
    error_response,
)
from .exchange import Exchange, current_exchange
from .profiles import Profile
from .registry import Selection

logger = logging.getLogger("hermes_api")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

Body = dict[str, Any]
Handler = Callable[[Request, Body], Awaitable[Response]]
ModelSelector = Callable[[Request, Body], object]
ImpliedProfile = Callable[[Request], Awaitable[str]]


async def read_json_object(request: Request, limit: int) -> Body:
    """The request body as a JSON object. Raises ``RequestTooLargeError`` (413) as soon
    as more than ``limit`` bytes are announced or read, ``InvalidJSONError`` (400) for
    anything but a JSON object (bad UTF-8, too deep, trailing garbage)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    try:
        body = orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError:
        raise InvalidJSONError(
            "We could not parse the JSON body of your request. The body must be a JSON object."
        ) from None
    if not isinstance(body, dict):
        raise InvalidJSONError("The request body must be a JSON object.")
    return body


def _too_large(limit: int) -> RequestTooLargeError:
    return RequestTooLargeError(f"The request body is larger than {limit} bytes.")


async def until_disconnect(handler: Awaitable[Response], receive: Receive) -> Response | None:
    """``await handler``, or None as soon as the client disconnects, ``handler`` then
    cancelled (its upstream request closed by the cancellation).

    Starlette runs a handler to its end whether anyone still waits for the answer, and
    the ASGI server says that the client left only to ``receive`` (``http.disconnect``,
    ASGI HTTP spec "Disconnect - receive event"). So while the handler runs, a second
    task waits on ``receive`` and cancels this one; the same pattern as
    ``sse.EventStreamResponse``. Call it only once the request body has been read: the
    watcher drops any ``http.request`` message it receives."""
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        return await handler
    except asyncio.CancelledError:
        if gone and task.uncancel() == 0:
            return None
        raise
    finally:
        watcher.cancel()


def model_in_body(request: Request, body: Body) -> object:
    return body.get("model")


def model_in_path(request: Request, body: Body) -> object:
    return request.path_params["model"]


class ProfileEndpoint:
    """An ASGI endpoint bound to the profile its request selects.

    ``reads_body``: parse the JSON body first (POST routes); ``model``: where the
    request's ``model`` selector is (the body, the path, or nowhere); ``implied``: the
    profile of the object the path names, used when nothing explicit names one (it
    raises the object's 404 itself); ``runs_turns``: the handler calls the upstream, so
    the request passes the delegation rules (``delegation.Delegation.admit``: depth, a
    delegated request's target), holds a concurrency slot (``limits.ConcurrencyLimiter``)
    until its response has been sent or abandoned, is admitted under its key's rate
    limits (``quotas``), gets a usage row (``exchange``), and the handler is cancelled when
    the client goes away (``until_disconnect``).
    """

    def __init__(
        self,
        handler: Handler,
        *,
        reads_body: bool = True,
        model: ModelSelector | None = model_in_body,
        implied: ImpliedProfile | None = None,
        runs_turns: bool = False,
    ) -> None:
        self.handler = handler
        self.reads_body = reads_body
        self.model = model
        self.implied = implied
        self.runs_turns = runs_turns

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if _CONTROL.search(scope["path"]):
            # Starlette's route patterns end in `$`, which also matches before a final
            # newline: "/v1/models/alpha%0A" would otherwise be "alpha".
            raise RouteNotFoundError(f"{scope['method']} {scope['path']!r} is not a route of this server.")
        request = Request(scope, receive)
        state = request.state
        try:
            body = await read_json_object(request, state.settings.max_body_bytes) if self.reads_body else {}
        except ClientDisconnect:
            # Gone before its request was whole: nobody to answer, and not our failure.
            logger.info("the client closed the connection during its request body (%s)", state.request_id)
            return
        selection = state.registry.select(
            request.headers,
            prefix=request.path_params.get("profile"),
            model=self.model(request, body) if self.model else None,
            identity=request.user.trusted_identity,
        )
        if self.implied is not None and not selection.explicit:
            selection = Selection((("stored", await self.implied(request)),))
        profile = await state.registry.ready(state.registry.resolve(selection, request.user))
        header = (b"x-hermes-profile", profile.name.encode())
        exchange = self._observe(request, body, profile)

        async def send_with_profile(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        async with AsyncExitStack() as resources:
            state.resources = resources
            with use_profile(profile):
                try:
                    if self.runs_turns:
                        state.delegation.admit(request, profile)  # before a slot: a refusal holds none
                        resources.enter_context(state.limiter.slot(profile.name))
                        key = request.user.key
                        if exchange is not None and exchange.records_usage and quotas.limited(key, profile.name):
                            await quotas.admit(state.store, key, exchange.usage_record())
                        response = await until_disconnect(self.handler(request, body), receive)
                        if response is None:
                            return  # the client has gone: nothing to send; the exit frees the slot
                    else:
                        response = await self.handler(request, body)
                except HermesAPIError as exc:  # routed: the answer names its profile
                    if exchange is not None:
                        if isinstance(exc, KeyRateLimitError):  # refused by a limit: spends nothing, no row
                            exchange.records_usage = False
                        exchange.failed(exc)
                    response = error_response(exc)
                if exchange is not None and exchange.streaming:  # how a stream ended depends on it
                    receive = exchange.watch(receive)
                await response(scope, receive, send_with_profile)

    def _observe(self, request: Request, body: Body, profile: Profile) -> Exchange | None:
        """The request's record, told its profile, and for a turn what the turn is
        (``exchange.Exchange.begin_turn``). None when requests are not observed."""
        exchange = current_exchange()
        if exchange is None:
            return None
        exchange.profile = profile.name
        if self.runs_turns:
            exchange.begin_turn(request.user, profile.model, self.handler.__name__, body.get("stream") is True)
        return exchange
