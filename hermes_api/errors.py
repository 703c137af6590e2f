"""The exception tree and the one renderer of the OpenAI error envelope (docs/contract.md §5).

    HermesAPIError                      base; status, type, code, param live on the class
    ├── InvalidRequestError             400 invalid_request_error
    │   ├── InvalidJSONError            400 invalid_json: the body is not a JSON object
    │   ├── InvalidValueError           400 invalid_value: a field is missing or has a bad type
    │   ├── InvalidHeaderError          400 invalid_header: a routing header is malformed
    │   ├── MalformedHTTPError          400 invalid_http: not HTTP/1.1 as the parser reads it
    │   ├── ProfileConflictError        400 profile_conflict: two selectors name different profiles
    │   └── DelegationDepthError        400 delegation_depth_exceeded: a delegation chain at max_depth
    ├── AuthenticationError             401 invalid_api_key
    ├── PermissionDeniedError           403 model_not_found: the key may not use this profile
    ├── ForbiddenError                  403 forbidden: /metrics for this caller (no metrics key, not loopback)
    ├── DelegationNotAllowedError       403 delegation_not_allowed: not a target of the delegating profile
    ├── NotFoundError                   404
    │   ├── ModelNotFoundError          404 model_not_found: unknown or not exposed (identical)
    │   ├── ResponseNotFoundError       404 response_not_found
    │   └── RouteNotFoundError          404 not_found: no such path
    ├── MethodNotAllowedError           405 method_not_allowed
    ├── RequestTooLargeError            413 request_too_large
    ├── RequestTimeoutError             408 request_timeout: the headers took over header_timeout
    ├── HeadersTooLargeError            431 request_headers_too_large: over max_header_bytes
    ├── ConcurrencyLimitError           429 rate_limit_error concurrency_limit_exceeded: our own cap
    ├── KeyRateLimitError               429 rate_limit_error key_rate_limit_exceeded: a key's rpm/tpm/tokens_per_day
    ├── UpstreamError                   upstream_error: the profile's provider failed us
    │   ├── UpstreamRejectedError       400/413/422 as the upstream said, its message and code
    │   ├── UpstreamRateLimitError      429 rate_limit_error, Retry-After passed on
    │   ├── UpstreamAuthError           502 upstream_auth_failed: the provider refused our key
    │   ├── UpstreamMisconfiguredError  502 upstream_misconfigured: a 404, 405, redirect … (base_url, model)
    │   ├── UpstreamUnavailableError    502 upstream_unavailable: refused, reset, 5xx
    │   ├── UpstreamBadResponseError    502 upstream_error: not JSON, cut-off stream
    │   └── UpstreamTimeoutError        504 upstream_timeout
    ├── AgentError                      server_error: the profile's Hermes agent worker failed us
    │   ├── AgentWorkerError            502 agent_worker_failed: it did not start, crashed or was killed
    │   └── AgentTimeoutError           504 agent_turn_timeout: the turn ran past its turn_timeout
    ├── ConnectionLimitError            503 server_error too_many_connections: max_connections open
    ├── ShuttingDownError               503 server_shutting_down: the shutdown grace period ran out
    ├── StoreUnavailableError           503 store_unavailable: the store's database cannot be reached
    └── ServerError                     500 server_error: a bug; details go to the log only

Every error renders as ``{"error": {"message", "type", "param", "code"}}`` with all four
keys present (OpenAI's ``Error`` schema in its OpenAPI spec): as a JSON response before the first byte, or as
the payload of an in-stream error after it. A 5xx that retrying cannot fix (an operator's
mistake: a wrong provider key, base_url or model id) carries ``x-should-retry: false``,
which the OpenAI SDKs obey (openai-python ``_base_client.py`` ``_should_retry``); they
retry every other 5xx twice. Messages never contain an API key, an
upstream key or a ``.env`` value: callers build them from names, never from secrets.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

logger = logging.getLogger("hermes_api")


class HermesAPIError(Exception):
    """Base class: an error the client sees in OpenAI's envelope."""

    status_code: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str | None] = None
    default_param: ClassVar[str | None] = None
    retryable: ClassVar[bool] = True  # False: the answer says ``x-should-retry: false``

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param if param is not None else self.default_param
        self.headers = headers or {}
        if not self.retryable:
            self.headers["x-should-retry"] = "false"

    def to_dict(self) -> dict[str, Any]:
        """``{"error": {"message", "type", "param", "code"}}``, all four keys present."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequestError(HermesAPIError):
    """The request itself is wrong; retrying it unchanged cannot help."""

    status_code = 400
    type = "invalid_request_error"


class InvalidJSONError(InvalidRequestError):
    """The body is not valid JSON, or not a JSON object."""

    code = "invalid_json"


class InvalidValueError(InvalidRequestError):
    """A field the server reads is missing or has the wrong type; ``param`` names it."""

    code = "invalid_value"


class InvalidHeaderError(InvalidRequestError):
    """A routing header is too long, not UTF-8 or holds control characters."""

    code = "invalid_header"


class MalformedHTTPError(InvalidRequestError):
    """The HTTP parser refused the request (a control character in a header value, a
    broken request line): answered by the protocol, before any route."""

    code = "invalid_http"


class ProfileConflictError(InvalidRequestError):
    """The URL prefix, ``X-Hermes-Profile`` and ``model`` name different profiles."""

    code = "profile_conflict"
    default_param = "model"


class DelegationDepthError(InvalidRequestError):
    """A delegated request (or one whose ``X-Hermes-Delegate-Depth`` says so) would make
    its chain longer than ``delegation.max_depth`` turns; refused before any provider
    is called, so two agents that delegate to each other stop at the limit."""

    code = "delegation_depth_exceeded"


class AuthenticationError(HermesAPIError):
    """No API key, or one that matches no configured key."""

    status_code = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDeniedError(HermesAPIError):
    """The key is valid but may not use this profile; the allowlist is never named."""

    status_code = 403
    type = "invalid_request_error"
    code = "model_not_found"
    default_param = "model"


class ForbiddenError(HermesAPIError):
    """The caller may not use this server route (``/metrics`` without a key that has
    ``metrics: true``, or from off this machine when no key has it)."""

    status_code = 403
    type = "invalid_request_error"
    code = "forbidden"


class DelegationNotAllowedError(HermesAPIError):
    """A delegated request for a profile that is not among the delegating profile's
    targets (``delegation.allow``)."""

    status_code = 403
    type = "invalid_request_error"
    code = "delegation_not_allowed"
    default_param = "model"


class NotFoundError(HermesAPIError):
    """Something the request names does not exist (for this caller)."""

    status_code = 404
    type = "invalid_request_error"


class ModelNotFoundError(NotFoundError):
    """Unknown profile and not-exposed profile look the same, so names cannot be probed."""

    code = "model_not_found"
    default_param = "model"


class ResponseNotFoundError(NotFoundError):
    """No stored response with that id for this key and profile."""

    code = "response_not_found"


class RouteNotFoundError(NotFoundError):
    """No route for the path."""

    code = "not_found"


class MethodNotAllowedError(HermesAPIError):
    """The path exists but not with this method."""

    status_code = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTooLargeError(HermesAPIError):
    """The body is larger than ``max_body_bytes``."""

    status_code = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RequestTimeoutError(HermesAPIError):
    """The request line and headers did not arrive within ``header_timeout`` seconds:
    answered by the protocol, which closes the connection (nginx's ``client_header_timeout``)."""

    status_code = 408
    type = "invalid_request_error"
    code = "request_timeout"


class HeadersTooLargeError(HermesAPIError):
    """The request line and headers are larger than ``max_header_bytes``."""

    status_code = 431
    type = "invalid_request_error"
    code = "request_headers_too_large"


class ConcurrencyLimitError(HermesAPIError):
    """hermes-api's own cap on concurrent upstream requests (server-wide or per profile)
    is reached; ``Retry-After`` says when to try again. The code tells it apart from the
    provider's own 429 (``rate_limit_exceeded``)."""

    status_code = 429
    type = "rate_limit_error"
    code = "concurrency_limit_exceeded"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message, headers={"retry-after": str(retry_after)})


class KeyRateLimitError(HermesAPIError):
    """The API key has spent its ``rpm``, ``tpm`` or ``tokens_per_day`` (all its turns, or
    those on one profile); ``Retry-After`` is the whole seconds until the window's oldest
    turn leaves it. The code tells it apart from the provider's ``rate_limit_exceeded``."""

    status_code = 429
    type = "rate_limit_error"
    code = "key_rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, headers={"retry-after": str(retry_after)})


class UpstreamError(HermesAPIError):
    """The profile's provider did not give a usable answer."""

    status_code = 502
    type = "upstream_error"
    code = "upstream_error"


class UpstreamRejectedError(UpstreamError):
    """The provider refused the request as invalid; its status, message and code pass on."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message, param=param)
        self.status_code = status_code  # type: ignore[misc]  # per instance, from upstream
        self.type = type or "invalid_request_error"  # type: ignore[misc]
        self.code = code  # type: ignore[misc]


class UpstreamRateLimitError(UpstreamError):
    """The provider rate-limited us; its ``Retry-After`` passes on."""

    status_code = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamAuthError(UpstreamError):
    """The provider refused the profile's key (401/403 upstream): an operator problem."""

    code = "upstream_auth_failed"
    retryable = False


class UpstreamMisconfiguredError(UpstreamError):
    """The provider answered as it does to a wrong ``base_url`` or model id: 404, 405, a
    redirect, a 4xx not passed on. An operator problem, the same at every try."""

    code = "upstream_misconfigured"
    retryable = False


class UpstreamUnavailableError(UpstreamError):
    """Connection refused or reset, or a 5xx from the provider."""

    code = "upstream_unavailable"


class UpstreamBadResponseError(UpstreamError):
    """The provider answered, but not with OpenAI's wire format."""

    code = "upstream_error"


class UpstreamTimeoutError(UpstreamError):
    """Connecting took longer than ``timeouts.connect`` or a read longer than ``timeouts.read``."""

    status_code = 504
    code = "upstream_timeout"


class AgentError(HermesAPIError):
    """The worker process running the profile's Hermes agent did not give an answer
    (provider failures inside the agent are ``UpstreamError``s, bad input a 400)."""

    status_code = 502
    type = "server_error"
    code = "agent_worker_failed"


class AgentWorkerError(AgentError):
    """The profile's worker could not start, exited, was killed or broke the protocol;
    the next request starts a new one (so a retry can succeed)."""


class AgentTimeoutError(AgentError):
    """The agent turn ran longer than the profile's ``turn_timeout`` and was interrupted."""

    status_code = 504
    code = "agent_turn_timeout"
    retryable = False  # a turn that hung once (a tool waiting forever) hangs again


class ConnectionLimitError(HermesAPIError):
    """``max_connections`` client connections are open: a new one is answered by the
    protocol before it is read, and closed. Transient: ``Retry-After`` 1 s."""

    status_code = 503
    type = "server_error"
    code = "too_many_connections"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"retry-after": "1"})


class ShuttingDownError(HermesAPIError):
    """The server is stopping and the request outlived ``shutdown_grace``; retrying
    (against this server once restarted, or another) can succeed."""

    status_code = 503
    type = "server_error"
    code = "server_shutting_down"


class StoreUnavailableError(HermesAPIError):
    """The response store's database (PostgreSQL) cannot be reached or did not answer in
    ``store.timeout``; nothing was stored. Retrying (the OpenAI SDK does) succeeds once
    it is back, which the store notices by itself."""

    status_code = 503
    type = "server_error"
    code = "store_unavailable"

    def __init__(self, message: str = "The response store is unavailable; retry in a moment.") -> None:
        super().__init__(message, headers={"retry-after": "1"})


class ServerError(HermesAPIError):
    """An unexpected failure inside hermes-api."""

    status_code = 500
    type = "server_error"
    code = "server_error"


def stream_failure(exc: Exception, stream: str) -> HermesAPIError:
    """The error to report inside a ``stream`` that has started (docs/contract.md §5): ``exc``
    itself when it is an API error (logged as a warning), else a ``ServerError`` that
    says nothing, the traceback going to the log only."""
    if isinstance(exc, HermesAPIError):
        logger.warning("%s failed after the first byte: %s (%s)", stream, exc.code, exc.message)
        return exc
    logger.error("%s failed after the first byte", stream, exc_info=exc)
    return ServerError("The server had an error while processing your request.")


def store_failure(exc: Exception, message: str, what: str, *args: object) -> HermesAPIError:
    """The error for a store write that failed: ``StoreUnavailableError`` as itself
    (logged without a traceback: the store logs the cause when it goes down), anything
    else a ``ServerError`` saying ``message``, the traceback logged as ``what % args``."""
    if isinstance(exc, StoreUnavailableError):
        logger.warning(what + ": the store is unavailable", *args)
        return exc
    logger.error(what, *args, exc_info=exc)
    return ServerError(message)


def error_response(exc: HermesAPIError) -> Response:
    """Render ``exc`` as a plain JSON response with its status and headers (§5)."""
    return Response(
        orjson.dumps(exc.to_dict()),
        status_code=exc.status_code,
        headers=exc.headers,
        media_type="application/json",
    )


_HTTP_EXCEPTIONS: dict[int, type[HermesAPIError]] = {
    404: RouteNotFoundError,
    405: MethodNotAllowedError,
}


async def handle_error(request: Request, exc: Exception) -> Response:
    """The one exception handler: every error the app raises leaves through here.

    ``HermesAPIError`` renders as itself; Starlette's own 404/405 (unknown path, wrong
    method) become the envelope too; anything else is a bug, logged with its traceback
    and answered with a 500 that says nothing about it (the server logs the traceback).
    """
    if isinstance(exc, HTTPException):
        cls = _HTTP_EXCEPTIONS.get(exc.status_code, InvalidRequestError)
        error: HermesAPIError = cls(
            f"{request.method} {request.url.path} is not a route of this server."
            if exc.status_code in _HTTP_EXCEPTIONS
            else str(exc.detail),
            headers=dict(exc.headers or {}),
        )
    elif isinstance(exc, HermesAPIError):
        error = exc
    else:
        # Starlette's ServerErrorMiddleware calls this, then re-raises for the server
        # to log the traceback; it sits outside the middleware that adds request ids
        # (request_ids.RequestIdMiddleware, exchange.ExchangeMiddleware), so add the id here.
        error = ServerError("The server had an error while processing your request.")
        request_id = getattr(request.state, "request_id", None)
        if request_id:
            error.headers["x-request-id"] = request_id
    return error_response(error)
