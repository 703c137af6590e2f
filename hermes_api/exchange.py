"""One request and its answer, observed in one place: ``ExchangeMiddleware``.

The middleware makes an ``Exchange`` for every HTTP request, makes it the current one
(``current_exchange``) for the code that runs the request, and when the answer is over
records it: ``metrics.Metrics.observe`` and, with ``log_format: json``, one JSON log
line. It reads what it needs from the ASGI messages and the scope, so no endpoint
carries metrics code: the status and ``X-Hermes-Profile`` from ``http.response.start``,
the error code from the body of an error answer, the key from Starlette's
authentication (``scope["user"]``), the operationId from the route that matched
(``scope["endpoint"]``). The turn runner, the store and the upstream transport are
wrapped in ``meters`` and note tokens, upstream errors and the provider's status on the
current exchange.
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .keys import Caller
from .metrics import Metrics

access_logger = logging.getLogger("hermes_api.access")

_exchange: ContextVar[Exchange | None] = ContextVar("hermes_exchange", default=None)


@dataclass(slots=True)
class Exchange:
    """What is known about one request so far. Times are ``time.perf_counter()`` seconds.

    ``endpoint`` the OpenAI operationId of the route (``none``: no route matched);
    ``profile`` the profile that answered ("" when none); ``key`` the API key's name
    (``anonymous`` on a server without keys, "" when no key was checked); tokens as
    the provider counted them (None: it said nothing); ``upstream_status`` the
    provider's HTTP status; ``upstream_error`` the code of the upstream error
    (``upstream_rejected`` for a 4xx passed on); ``error_code`` the code of our own
    error answer, when the answer was one before its first byte.
    """

    started: float
    request_id: str = ""
    method: str = ""
    path: str = ""
    endpoint: str = "none"
    profile: str = ""
    key: str = ""
    status: int = 0
    stream: bool = False
    first_byte: float | None = None
    finished: float = 0.0
    input_tokens: int | None = None
    output_tokens: int | None = None
    upstream_status: int | None = None
    upstream_error: str | None = None
    error_code: str | None = None
    delegated_by: str | None = None

    @property
    def duration(self) -> float:
        """Seconds from arrival to the end of the answer."""
        return self.finished - self.started

    def log_fields(self) -> dict[str, Any]:
        """The JSON log line's fields (logs.JSONFormatter): names and numbers, never a secret."""
        return {
            "request_id": self.request_id,
            "method": self.method,
            "path": self.path,
            "endpoint": self.endpoint,
            "key": self.key,
            "profile": self.profile,
            "status": self.status,
            "stream": self.stream,
            "duration_s": round(self.duration, 6),
            "ttfb_s": None if self.first_byte is None else round(self.first_byte - self.started, 6),
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "upstream_status": self.upstream_status,
            "upstream_error": self.upstream_error,
            "error": self.error_code,
            "delegated_by": self.delegated_by,
        }


def current_exchange() -> Exchange | None:
    """The exchange of the request this code runs for; None outside a request."""
    return _exchange.get()


def operation_id(endpoint: Any, method: str) -> str:
    """The OpenAI operationId of a matched route's endpoint: the handler's name
    (``ProfileEndpoint.handler``, ``app.ByMethod``'s endpoint for ``method``, or the
    plain function), as in openapi/openapi.yaml."""
    by_method = getattr(endpoint, "endpoints", None)
    if isinstance(by_method, dict):
        endpoint = by_method.get("GET" if method == "HEAD" else method)
    handler = getattr(endpoint, "handler", endpoint)
    return getattr(handler, "__name__", "none")


def _error_code(body: bytes) -> str | None:
    """The ``error.code`` of an error answer's JSON body, if it is one."""
    try:
        error = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


class ExchangeMiddleware:
    """Plain ASGI middleware (a streamed body passes through untouched) that observes
    every HTTP request; it sits inside ``RequestIdMiddleware`` and outside
    authentication, so it also sees the 401s. ``metrics`` None: the JSON log only."""

    def __init__(self, app: ASGIApp, metrics: Metrics | None, *, log_requests: bool = False) -> None:
        self.app = app
        self.metrics = metrics
        self.log_requests = log_requests
        self._operations: dict[tuple[int, str], str] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = Exchange(time.perf_counter())
        token = _exchange.set(exchange)

        async def observed(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                exchange.status = message["status"]
                for name, value in message.get("headers", ()):
                    if name == b"x-hermes-profile":
                        exchange.profile = value.decode()
                    elif name == b"content-type":
                        exchange.stream = value.startswith(b"text/event-stream")
            elif kind == "http.response.body" and exchange.first_byte is None and message.get("body"):
                exchange.first_byte = time.perf_counter()
                if exchange.status >= 400 and not exchange.stream:
                    exchange.error_code = _error_code(message["body"])
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            _exchange.reset(token)
            exchange.finished = time.perf_counter()
            if not exchange.status:  # an exception left before any answer: ServerErrorMiddleware's 500
                exchange.status, exchange.error_code = 500, "server_error"
            self._finish(exchange, scope)

    def _finish(self, exchange: Exchange, scope: Scope) -> None:
        endpoint = scope.get("endpoint")
        if endpoint is not None:
            method = scope["method"]
            cached = (id(endpoint), method)
            name = self._operations.get(cached)
            if name is None:
                name = self._operations[cached] = operation_id(endpoint, method)
            exchange.endpoint = name
        user = scope.get("user")
        if isinstance(user, Caller):
            exchange.key = user.key.name if user.key is not None else "anonymous"
            if user.delegation is not None:
                exchange.delegated_by = user.delegation.profile
        if self.metrics is not None:
            self.metrics.observe(exchange)
        if self.log_requests and access_logger.isEnabledFor(logging.INFO):
            exchange.request_id = scope.get("state", {}).get("request_id", "")
            exchange.method, exchange.path = scope["method"], scope["path"]
            access_logger.info("request", extra={"fields": exchange.log_fields()})
