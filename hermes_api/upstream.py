"""The one pooled HTTP client to every profile's provider; errors mapped at this boundary.

httpx requests sent straight to one transport (docs/architecture.md, "The transport to
providers"): ``transport.AiohttpTransport`` (aiohttp's connection pool) made in the
app's lifespan and shared by all profiles; the profile decides the URL and the
``Authorization`` header of each request, never the client. Tests inject a transport
(respx). No ``httpx.AsyncClient`` on the hot path: it cost ~90 µs of CPU per request
for a cookie jar, auth and redirect machinery that a gateway never uses (``bench/``),
and a shared cookie jar would mix providers' cookies across profiles.

Every failure leaves this module as an ``errors.UpstreamError`` (§5), most specific
first, timeouts before other transport errors, during stream iteration too
(httpx ``_transports/default.py`` ``map_httpcore_exceptions`` is the model). Its cause
is logged where it is mapped: at warning when the client gets a 5xx for it (the
operator's to see: the provider's status and words, the transport's error), at debug
when the provider's own 4xx passes on to the client. Never the profile's key: a
provider that echoes it gets it scrubbed (``scrub``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import httpx
import orjson

from . import __version__
from .errors import (
    InvalidJSONError,
    UpstreamAuthError,
    UpstreamBadResponseError,
    UpstreamError,
    UpstreamMisconfiguredError,
    UpstreamRateLimitError,
    UpstreamRejectedError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from .profiles import Profile
from .settings import Settings, Timeouts
from .sse import EventDecoder
from .transport import AiohttpTransport

logger = logging.getLogger("hermes_api")

USER_AGENT = f"hermes-api/{__version__}"
PASSED_THROUGH = frozenset({400, 402, 409, 413, 415, 422})


def scrub(text: str, profile: Profile) -> str:
    """``text`` without the profile's key, in case a provider echoes it back."""
    return text.replace(profile.api_key, "***") if profile.api_key else text


def transport_error(exc: Exception, profile: Profile) -> UpstreamError:
    """Map an httpx (or underlying aiohttp) transport failure; an aiohttp cause, when
    there is one (``transport.AiohttpTransport`` raises from it), decides."""
    cause = exc.__cause__
    root = cause if isinstance(cause, (aiohttp.ClientError, TimeoutError)) else exc
    logger.warning(
        "profile %s: upstream transport failure %s: %s", profile.name, type(root).__name__, scrub(str(root), profile)
    )
    if isinstance(root, (TimeoutError, httpx.TimeoutException)):
        return UpstreamTimeoutError(f"The upstream provider of profile '{profile.name}' did not answer in time.")
    return UpstreamUnavailableError(
        f"The upstream provider of profile '{profile.name}' could not be reached ({type(root).__name__})."
    )


def status_error(status: int, body: bytes, headers: httpx.Headers, profile: Profile) -> UpstreamError:
    """Map an upstream error status, 300 or more (§5): 4xx rejections of the request
    pass through with the provider's message; 401/403 are our key's fault and other 4xx
    and redirects (not followed) the profile's ``base_url`` or model: 502s not to be
    retried; 429 keeps Retry-After; timeouts are 504; 5xx are 502."""
    error = _status_error(status, body, headers, profile)
    level = logging.WARNING if error.status_code >= 500 else logging.DEBUG
    if logger.isEnabledFor(level):
        logger.log(level, "profile %s: upstream answered HTTP %d: %s", profile.name, status, _excerpt(body, profile))
    return error


def _status_error(status: int, body: bytes, headers: httpx.Headers, profile: Profile) -> UpstreamError:
    who = f"The upstream provider of profile '{profile.name}'"
    if status in (401, 403):
        return UpstreamAuthError(f"{who} refused its API key (HTTP {status}).")
    if status == 429:
        retry_after = headers.get("retry-after")
        error = UpstreamRateLimitError(f"{who} is rate limiting requests; retry later.")
        if retry_after:
            error.headers["retry-after"] = retry_after
        return error
    if status in (408, 504):
        return UpstreamTimeoutError(f"{who} timed out (HTTP {status}).")
    if status in PASSED_THROUGH:
        detail = _error_detail(body)
        message = detail.get("message") if isinstance(detail.get("message"), str) else None
        return UpstreamRejectedError(
            scrub(message or f"{who} rejected the request (HTTP {status}).", profile),
            status_code=status,
            type=detail.get("type") if isinstance(detail.get("type"), str) else None,
            code=str(detail["code"]) if detail.get("code") is not None else None,
            param=detail.get("param") if isinstance(detail.get("param"), str) else None,
        )
    if status >= 500:
        return UpstreamUnavailableError(f"{who} failed (HTTP {status}).")
    return UpstreamMisconfiguredError(
        f"{who} answered HTTP {status}; check model.base_url and the model id of the profile."
    )


def _excerpt(body: bytes, profile: Profile, limit: int = 300) -> str:
    """The start of an upstream body for a log line, the key scrubbed before cutting
    (so no part of it can be left behind: a key that starts within the first ``limit``
    characters is decoded whole)."""
    key_bytes = len(profile.api_key.encode()) if profile.api_key else 0
    text = scrub(body[: limit * 4 + key_bytes].decode("utf-8", "replace"), profile)
    return text[:limit] + "…" if len(text) > limit else text


def _error_detail(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return error
    if isinstance(error, str):  # some servers send {"error": "..."}
        return {"message": error}
    return {}


class ChatStream:
    """The ``data:`` events of an upstream chat-completions stream, as parsed objects.

    Iterating yields each chunk dict and stops at ``[DONE]``. An ``{"error": ...}``
    event, a non-JSON event, a transport failure or the end of the body before
    ``[DONE]`` raise ``UpstreamError``.
    """

    def __init__(self, response: httpx.Response, profile: Profile) -> None:
        self._response = response
        self._profile = profile

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        async for batch in self.batches():
            for chunk in batch:
                yield chunk

    async def batches(self) -> AsyncIterator[list[dict[str, Any]]]:
        """The chunks each network read completed, one list per read (never empty), so
        a burst of events can be re-sent in one write."""
        decoder = EventDecoder()
        try:
            async for raw in self._response.aiter_bytes():
                batch = []
                for payload in decoder.feed(raw):
                    if payload == b"[DONE]":
                        if batch:
                            yield batch
                        return
                    batch.append(self._parse(payload))
                if batch:
                    yield batch
        except httpx.HTTPError as exc:
            raise transport_error(exc, self._profile) from exc
        raise UpstreamBadResponseError(f"The upstream stream of profile '{self._profile.name}' ended before [DONE].")

    def _parse(self, payload: bytes) -> dict[str, Any]:
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            chunk = None
        if not isinstance(chunk, dict):
            raise UpstreamBadResponseError(
                f"The upstream stream of profile '{self._profile.name}' sent an event that is not a JSON object."
            )
        if "error" in chunk:
            detail = _error_detail(payload)
            raise UpstreamBadResponseError(
                scrub(
                    f"The upstream provider of profile '{self._profile.name}' failed "
                    f"mid-stream: {detail.get('message') or 'no message'}",
                    self._profile,
                )
            )
        return chunk


def _timeout(timeouts: Timeouts) -> dict[str, float | None]:
    """httpx's ``timeout`` request extension: ``transport.AiohttpTransport`` hands
    ``connect`` to aiohttp as ``sock_connect``, ``read`` as ``sock_read`` (the longest
    silence between bytes) and ``pool`` as ``connect``."""
    return httpx.Timeout(timeouts.read, connect=timeouts.connect, pool=timeouts.connect).as_dict()


class Upstream:
    """The pooled client. ``transport`` None = aiohttp's pool; tests pass respx's.
    Timeouts are the server-wide ``timeouts``, or a profile's own from ``per_profile``."""

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 0,
    ) -> None:
        self._transport = AiohttpTransport(max_connections) if transport is None else transport
        self._extensions = {"timeout": _timeout(settings.timeouts)}
        # Profiles with their own timeouts (per_profile.<name>.timeouts); the rest use the server's.
        self._profile_extensions = {
            name: {"timeout": _timeout(limits.timeouts)} for name, limits in settings.per_profile.items()
        }
        # URL -> the parsed URL and the raw headers but Authorization, Accept and
        # Content-Length. No key in here: one would stay in memory after it was rotated.
        self._prepared: dict[str, tuple[httpx.URL, list[tuple[bytes, bytes]]]] = {}

    async def aclose(self) -> None:
        await self._transport.aclose()

    def _request(self, profile: Profile, payload: dict[str, Any]) -> httpx.Request:
        """``payload`` as a JSON POST to the profile's chat completions URL. The URL and
        the headers are parsed and normalised once per URL and passed as bytes: httpx's
        per-request parsing cost ~15 µs of CPU per request (``bench/``). The key's
        header is made per request, so no old key outlives its profile. Raises
        ``InvalidJSONError`` for a body too deeply nested to serialise again."""
        prepared = self._prepared.get(profile.chat_completions_url)
        if prepared is None:
            url = httpx.URL(profile.chat_completions_url)
            headers = [
                (b"host", url.netloc),
                (b"content-type", b"application/json"),
                (b"user-agent", USER_AGENT.encode()),
            ]
            prepared = self._prepared[profile.chat_completions_url] = (url, headers)
        url, headers = prepared
        try:
            body = orjson.dumps(payload)
        except orjson.JSONEncodeError:  # parsed fine (1024 levels), but orjson writes 254 at most
            raise InvalidJSONError("The JSON body is nested too deeply.") from None
        accept = b"text/event-stream" if payload.get("stream") else b"application/json"
        per_request = [(b"accept", accept), (b"content-length", b"%d" % len(body))]
        if profile.api_key:
            per_request.append((b"authorization", b"Bearer " + profile.api_key.encode()))
        request = httpx.Request(
            "POST",
            url,
            headers=[*headers, *per_request],
            stream=httpx.ByteStream(body),
            extensions=self._profile_extensions.get(profile.name, self._extensions),
        )
        request.read()  # .content, as content= would have set it
        return request

    async def create_chat_completion(self, profile: Profile, payload: dict[str, Any]) -> dict[str, Any]:
        """POST ``payload`` to the profile's ``/chat/completions``; the parsed
        ``chat.completion`` object. Raises ``UpstreamError``."""
        try:
            response = await self._transport.handle_async_request(self._request(profile, payload))
            try:
                await response.aread()
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            raise transport_error(exc, profile) from exc
        if response.status_code >= 300:
            raise status_error(response.status_code, response.content, response.headers, profile)
        try:
            answer = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            answer = None
        if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list):
            logger.warning(
                "profile %s: upstream answered HTTP %d, not a chat.completion object: %s",
                profile.name,
                response.status_code,
                _excerpt(response.content, profile),
            )
            raise UpstreamBadResponseError(
                f"The upstream provider of profile '{profile.name}' did not answer with a chat.completion object."
            )
        return answer

    @asynccontextmanager
    async def stream_chat_completion(self, profile: Profile, payload: dict[str, Any]) -> AsyncIterator[ChatStream]:
        """Open a streamed chat completion. Entering raises ``UpstreamError`` for
        failures before the first byte; the yielded ``ChatStream`` raises them after.
        Leaving closes the upstream response (its connection goes back to the pool)."""
        try:
            response = await self._transport.handle_async_request(self._request(profile, payload))
        except httpx.HTTPError as exc:
            raise transport_error(exc, profile) from exc
        try:
            if response.status_code >= 300:
                try:
                    body = await response.aread()
                except httpx.HTTPError as exc:
                    raise transport_error(exc, profile) from exc
                raise status_error(response.status_code, body, response.headers, profile)
            yield ChatStream(response, profile)
        finally:
            await response.aclose()
