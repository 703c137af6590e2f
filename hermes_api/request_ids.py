"""Request ids: the ``x-request-id`` every answer carries, the client's own when sane.

``RequestIdMiddleware`` puts one on every answer of the app (``exchange.ExchangeMiddleware``
does, in its place, when requests are observed: one ASGI layer, not two); ``protocol`` on
the answers it writes itself (400, 408, 431, 503). Logs name a request by it.
"""

from __future__ import annotations

import random
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# What a client may choose as its own request id; anything else gets a fresh one.
CLIENT_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


def new_request_id() -> str:
    """A fresh id, ``req_`` and 32 hex digits (128 random bits). Not uuid4: a request id
    names a request in logs and is no secret, and os.urandom cost a system call a request."""
    return f"req_{random.getrandbits(128):032x}"


def assign_request_id(scope: Scope) -> bytes:
    """The request's id: the client's ``x-request-id`` when it is sane, else a fresh one;
    also ``scope["state"]["request_id"]`` (``request.state.request_id``, as a str)."""
    request_id = (
        next((v for k, v in scope["headers"] if k == b"x-request-id" and CLIENT_REQUEST_ID.fullmatch(v)), None)
        or new_request_id().encode()
    )
    scope.setdefault("state", {})["request_id"] = request_id.decode()
    return request_id


def with_request_id(message: Message, request_id: bytes) -> Message:
    """An ``http.response.start`` message with ``x-request-id`` among its headers (unless
    the answer set its own)."""
    headers = message.get("headers", [])
    if any(k == b"x-request-id" for k, _ in headers):
        return message
    return {**message, "headers": [*headers, (b"x-request-id", request_id)]}


class RequestIdMiddleware:
    """Give every response an ``x-request-id`` (``assign_request_id``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = assign_request_id(scope)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = with_request_id(message, request_id)
            await send(message)

        await self.app(scope, receive, send_with_id)
