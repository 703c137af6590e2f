"""One request and its answer, one record: ``Exchange``, made and finished by ``ExchangeMiddleware``.

The middleware makes an ``Exchange`` for every HTTP request and makes it the current
one (``current_exchange``) for the code that runs the request. What runs the request
adds what it knows: ``binding.ProfileEndpoint`` the profile and, for a turn, its
model, operation and whether it streams (``begin_turn``); the wrappers of ``meters``
the provider's token figures, its HTTP status and its errors. The middleware itself
reads the status, the first byte and an error answer's code from the ASGI messages,
the key from Starlette's authentication (``scope["user"]``) and the operationId from
the route that matched (``scope["endpoint"]``). When the answer is over it finishes
the record once and hands it to each consumer that is on:

- the usage row of a turn (``usage_record``, ``record_usage``), queued in the store
  after the response has been sent (``UsageRows``), so recording never delays an answer;
- the Prometheus metrics (``metrics.Metrics.observe``, ``metrics``);
- the JSON request log line (``log_fields``, ``log_format: json``).
"""

from __future__ import annotations

import asyncio
import logging
import random
from contextvars import ContextVar
from time import perf_counter, time_ns
from typing import Any, Protocol

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import HermesAPIError, StoreUnavailableError, UpstreamError, UpstreamRejectedError
from .keys import Caller
from .request_ids import assign_request_id, with_request_id
from .store import ResponseStore, UsageRecord, UsageWritten

logger = logging.getLogger("hermes_api")
access_logger = logging.getLogger("hermes_api.access")

_exchange: ContextVar[Exchange | None] = ContextVar("hermes_exchange", default=None)
_record = tuple.__new__
_ID, _REQUEST_ID = UsageRecord._fields.index("id"), UsageRecord._fields.index("request_id")


def error_code(exc: BaseException) -> str:
    """The code a client is given for ``exc``: its own for our errors, else ``server_error``."""
    return (exc.code or "server_error") if isinstance(exc, HermesAPIError) else "server_error"


def error_kind(exc: UpstreamError) -> str:
    """The ``upstream_error`` of a failed provider call: its code (errors.py), except a
    4xx the provider's own code passes on with, which is ``upstream_rejected`` (its
    codes are the provider's, an open set)."""
    if isinstance(exc, UpstreamRejectedError):
        return "upstream_rejected"
    return exc.code or "upstream_error"


def usage_id(micros: int) -> str:
    """A usage row's id: 32 hex digits, the Unix time in microseconds (13) then 76 random
    bits (19). Ids made later sort later, so the store's unique index on ``id`` grows at
    its end like the table, where random ids landed on a random page each: a commit of
    100 rows wrote 100 index pages, and a row cost SQLite 11-15 µs instead of 4 (and
    more as the table grew). Not uuid4: os.urandom was 9 % of a chat turn's CPU. One
    %-format of one integer: two f-string fields cost twice as much."""
    return "%032x" % (micros << 76 | random.getrandbits(76))


class Exchange:
    """What is known about one request so far. Times are ``perf_counter()`` seconds.

    ``endpoint`` the OpenAI operationId of the route (``none``: no route matched);
    ``profile`` the profile that answered ("" when none); ``key`` the API key's name
    (``anonymous`` on a server without keys, "" when no key was checked); ``status``
    the HTTP status sent (0: none yet); ``stream`` the client asked for a stream;
    tokens as the provider counted them (None: it said nothing); ``upstream_status``
    the provider's HTTP status; ``upstream_error`` the code of a failed provider call
    (``error_kind``); ``error`` the code the request ended with: our error answer's,
    or the one that ended a stream after its first byte, or for a stream that stopped
    before the provider's end without one ``client_disconnected``,
    ``server_shutting_down`` or ``incomplete``.

    A turn (``begin_turn``) also has ``model`` (the profile's upstream model id),
    ``usage_id`` and ``created_at`` (Unix seconds) for its usage row, and
    ``records_usage``: it spends, so its row is to be written when the server records
    usage (``record_usage``; not for a turn refused by its key's rate limit). A request
    one agent profile delegated to another (``delegation``) has ``delegated_by``, the delegating profile, and for a turn
    ``caller_request_id``, the delegating request's ``x-request-id``; both None for a
    client's own request.

    A plain class: every field but ``started`` starts as the class's default and is set
    on the instance only when known. (A dataclass's ``__init__`` assigned all 25 for
    every request.)
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
    error: str | None = None
    delegated_by: str | None = None
    caller_request_id: str | None = None
    model: str = ""
    usage_id: str = ""
    created_at: float = 0.0
    records_usage: bool = False
    streaming: bool = False  # a stream from the provider is open
    ended: bool = False  # that stream reached its end
    disconnected: bool = False  # the client went away

    def __init__(self, started: float) -> None:
        self.started = started

    @property
    def duration(self) -> float:
        """Seconds from arrival to the end of the answer."""
        return self.finished - self.started

    def begin_turn(self, caller: Caller, model: str, operation: str, stream: bool) -> None:
        """This request runs a turn for ``caller`` (``binding.ProfileEndpoint``, once its
        profile is known); a delegated one is marked with its delegating profile and request."""
        self.key, self.model, self.endpoint, self.stream = caller.display_name, model, operation, stream
        delegated = caller.delegation
        if delegated is not None:
            self.delegated_by, self.caller_request_id = delegated.profile, delegated.request
        now = time_ns() // 1000
        self.usage_id = usage_id(now)
        self.created_at = now / 1e6
        self.records_usage = True

    def take_usage(self, usage: object) -> None:
        """Keep the provider's figures from a ``usage`` object (chat-completions shape:
        ``prompt_tokens``, ``completion_tokens``; not a non-negative integer: None)."""
        if isinstance(usage, dict):
            tokens = usage.get("prompt_tokens")  # not a bool, nor a float:
            self.input_tokens = tokens if type(tokens) is int and tokens >= 0 else None
            tokens = usage.get("completion_tokens")
            self.output_tokens = tokens if type(tokens) is int and tokens >= 0 else None

    def failed(self, exc: BaseException) -> None:
        """The turn runner, a stream or the handler raised ``exc``: its code is the
        request's error (the first one noted stands), a provider's failure also its
        ``upstream_error``. A cancellation (the client left) is no error of its own."""
        if not isinstance(exc, Exception):
            return
        if self.error is None:
            self.error = error_code(exc)
        if isinstance(exc, UpstreamError):
            self.upstream_error = error_kind(exc)

    def watch(self, receive: Receive) -> Receive:
        """``receive``, noting when the client goes away."""

        async def watched() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
            return message

        return watched

    def usage_record(self) -> UsageRecord:
        """The turn's usage row as it stands (status None while nothing was sent)."""
        return _record(  # the fields in their order; tuple.__new__: the named tuple's own runs in Python
            UsageRecord,
            (
                self.usage_id,
                self.created_at,
                self.key,
                self.profile,
                self.model,
                self.endpoint,
                1 if self.stream else 0,
                self.request_id,
                self.status or None,
                self.input_tokens,
                self.output_tokens,
                self.finished - self.started if self.finished else None,
                self.error,
                self.delegated_by,
                self.caller_request_id,
            ),
        )

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
            "error": self.error,
            "delegated_by": self.delegated_by,
        }


class Observer(Protocol):
    """What takes each finished exchange, and the usage rows' writes: ``metrics.Metrics``."""

    def observe(self, exchange: Exchange) -> None: ...

    def store_writes_done(self, operation: str, count: int, failed: int) -> None: ...


# current_exchange() -> Exchange | None: the exchange of the request this code runs for;
# None outside a request, or when no request is observed (``ExchangeMiddleware`` is not
# installed). The context variable's own ``get``: a function around it cost each of a
# turn's four calls a Python frame.
current_exchange = _exchange.get


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


class UsageRows:
    """Queues each turn's usage row in the store and returns at once: the store writes
    it with others within a fraction of a second (``store.writes.ROW_LINGER``, and
    before it closes), and a failure is logged, never raised, since the answer has been
    sent. The rows the store queues together share one future (``store.QueuedRow.group``),
    followed here by one callback, which also counts the group's writes and failures in
    ``metrics`` (None: off), as ``meters.MeteredStore`` counts the store's other writes."""

    def __init__(self, metrics: Observer | None = None) -> None:
        self._metrics = metrics

    def save(self, store: ResponseStore, record: UsageRecord) -> None:
        try:
            queued = store.record_usage(record)
        except Exception:
            logger.exception("could not record the usage of request %s", record.request_id)
            return
        if queued.first:
            queued.group.add_done_callback(self._logged)

    def _logged(self, group: asyncio.Future[UsageWritten]) -> None:
        if group.cancelled():  # the store was closed with its loop, before the commit
            return
        rows, failed, error = group.result()
        if self._metrics is not None:
            self._metrics.store_writes_done("record_usage", len(rows), len(rows) if error else len(failed))
        if error is None and not failed:
            return
        for row in rows:  # parameters in UsageRecord's order
            problem, request_id = error or failed.get(str(row[_ID])), row[_REQUEST_ID]
            if isinstance(problem, StoreUnavailableError):  # the store logged the outage once
                logger.warning("could not record the usage of request %s: the store is unavailable", request_id)
            elif problem is not None:
                logger.error("could not record the usage of request %s", request_id, exc_info=problem)


class ExchangeMiddleware:
    """Plain ASGI middleware (a streamed body passes through untouched) that makes and
    finishes every HTTP request's ``Exchange``; it sits outside authentication, so it
    also sees the 401s. It gives each answer its ``x-request-id`` as well
    (``request_ids.RequestIdMiddleware``'s work, which it replaces: every await of a
    request passes through each layer, so two layers cost more than one). ``metrics`` (``metrics.Metrics``)
    observes each one, None: no metrics;
    ``record_usage``: turns' usage rows go to the store (the lifespan's ``store``);
    ``log_requests``: one JSON log line per request."""

    def __init__(
        self, app: ASGIApp, metrics: Observer | None, *, record_usage: bool = False, log_requests: bool = False
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.record_usage = record_usage
        self.log_requests = log_requests
        self._operations: dict[tuple[int, str], str] = {}
        self._usage = UsageRows(metrics)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = Exchange(perf_counter())
        request_id = assign_request_id(scope)
        exchange.request_id = scope["state"]["request_id"]
        token = _exchange.set(exchange)

        async def observed(message: Message) -> None:
            if exchange.first_byte is None:  # after it, a stream's pieces only pass
                if message["type"] == "http.response.start":
                    exchange.status = message["status"]
                    message = with_request_id(message, request_id)
                elif message.get("body"):
                    exchange.first_byte = perf_counter()
                    if exchange.status >= 400 and exchange.error is None:
                        exchange.error = _error_code(message["body"])
            await send(message)

        crashed = True
        try:
            await self.app(scope, receive, observed)
            crashed = False
        finally:
            _exchange.reset(token)
            exchange.finished = perf_counter()
            self._finish(exchange, scope, crashed)

    def _finish(self, exchange: Exchange, scope: Scope, crashed: bool) -> None:
        if crashed:  # Starlette's ServerErrorMiddleware answers 500 (if nothing was sent yet)
            exchange.status = exchange.status or 500
            exchange.error = exchange.error or "server_error"
        elif exchange.streaming and not exchange.ended and exchange.error is None:
            exchange.error = (
                "client_disconnected" if exchange.disconnected
                else "server_shutting_down" if scope["state"]["drain"].draining
                else "incomplete"
            )  # fmt: skip
        if exchange.endpoint == "none" and (endpoint := scope.get("endpoint")) is not None:
            exchange.endpoint = self._operation(endpoint, scope["method"])
        if exchange.records_usage and self.record_usage:
            self._usage.save(scope["state"]["store"], exchange.usage_record())
        if not exchange.status:  # the client left before any answer
            exchange.status, exchange.error = 500, exchange.error or "server_error"
        if not exchange.key:  # not a turn (begin_turn has named its caller)
            user = scope.get("user")
            if isinstance(user, Caller):
                exchange.key = user.display_name
                if user.delegation is not None:
                    exchange.delegated_by = user.delegation.profile
        if self.metrics is not None:
            self.metrics.observe(exchange)
        if self.log_requests and access_logger.isEnabledFor(logging.INFO):
            exchange.method, exchange.path = scope["method"], scope["path"]
            access_logger.info("request", extra={"fields": exchange.log_fields()})

    def _operation(self, endpoint: Any, method: str) -> str:
        name = self._operations.get((id(endpoint), method))
        if name is None:
            name = self._operations[(id(endpoint), method)] = operation_id(endpoint, method)
        return name
