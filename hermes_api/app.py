"""``create_app(settings)``: routes, middleware, the error handler and the lifespan.

No app exists at import time (uvicorn's ``--factory``, ``uvicorn/config.py``). ``serve``
builds one from the command line; ``uvicorn --factory hermes_api.app:create_app_from_env``
builds one from the environment (``HERMES_API_CONFIG``). The lifespan opens what requests share, the
profile registry, the pooled upstream client, the turn runner and the response store,
and hands them to requests as ``request.state`` (Starlette's lifespan state,
``docs/lifespan.md``); docs/architecture.md has the whole path of a request.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import tool_activity
from .agent.pool import WorkerPool
from .binding import Handler, ProfileEndpoint, model_in_path
from .context import Unbound, run_sync
from .credentials import Credentials
from .delegation import DEPTH_HEADER, Delegation
from .endpoints import chat, health, models, responses
from .endpoints.metrics import get_metrics
from .errors import HermesAPIError, handle_error
from .exchange import ExchangeMiddleware
from .headers import ROUTING_HEADERS
from .keys import KeyRing, on_auth_error
from .limits import ConcurrencyLimiter
from .meters import MeteredStore, MeteredTurns, StatusTransport
from .metrics import Metrics
from .registry import ProfileRegistry
from .request_ids import CLIENT_REQUEST_ID, new_request_id
from .settings import CORS, ConfigError, Settings
from .shutdown import Drain
from .store import ResponseStore, open_store
from .transport import AiohttpTransport
from .turns import TurnRunner, Turns
from .turns.agent import AgentTurns
from .turns.direct import DirectTurns
from .upstream import Upstream

logger = logging.getLogger("hermes_api")

# Every X-Hermes-* header the server reads (tests/test_cors.py scans the code for them),
# and the ones it answers with.
CORS_REQUEST_HEADERS = (
    "authorization",
    "content-type",
    "x-request-id",
    "x-hermes-profile",
    *ROUTING_HEADERS.values(),
    chat.SESSION_HEADER,
    tool_activity.HEADER,
    DEPTH_HEADER,
)
CORS_EXPOSED_HEADERS = ("x-hermes-profile", chat.SESSION_HEADER, "x-request-id", "retry-after", "x-should-retry")


class RequestIdMiddleware:
    """Give every response an ``x-request-id``: the client's, when it sent a sane one,
    else a fresh one. It is also ``request.state.request_id`` for logs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = (
            next(
                (v for k, v in scope["headers"] if k == b"x-request-id" and CLIENT_REQUEST_ID.fullmatch(v)),
                None,
            )
            or new_request_id().encode()
        )
        scope.setdefault("state", {})["request_id"] = request_id.decode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers", [])
                if not any(k == b"x-request-id" for k, _ in headers):
                    message = {**message, "headers": [*headers, (b"x-request-id", request_id)]}
            await send(message)

        await self.app(scope, receive, send_with_id)


def cors_middleware(cors: CORS | None) -> list[Middleware]:
    """Starlette's CORSMiddleware when ``cors`` is configured (none by default). It sits
    outside authentication, so preflights need no key and errors (a 401 too) carry the
    CORS headers a browser needs to read them. No credentials: keys travel as
    ``Authorization: Bearer``, never as cookies."""
    if cors is None:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=list(cors.allow_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=[*CORS_REQUEST_HEADERS, *cors.allow_headers],
            expose_headers=list(CORS_EXPOSED_HEADERS),
            allow_credentials=False,
            max_age=cors.max_age,
        )
    ]


class ByMethod:
    """One path, an endpoint per method: a single Route, so a 405 on the path lists
    every method it has in ``Allow`` (Starlette reports only the first partial match)."""

    def __init__(self, **endpoints: ASGIApp) -> None:
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = "GET" if scope["method"] == "HEAD" else scope["method"]
        await self.endpoints[method](scope, receive, send)


def stored(handler: Handler) -> ProfileEndpoint:
    """An endpoint about a stored response: its profile applies unless one is named."""
    return ProfileEndpoint(handler, reads_body=False, model=None, implied=responses.stored_profile)


def v1_routes() -> list[BaseRoute]:
    """The OpenAI routes; mounted at ``/`` and again under ``/p/{profile}``."""
    return [
        Route("/v1/models", models.list_models, methods=["GET"]),
        Route(
            "/v1/models/{model:path}",
            ProfileEndpoint(models.retrieve_model, reads_body=False, model=model_in_path),
            methods=["GET"],
        ),
        Route(
            "/v1/chat/completions",
            ProfileEndpoint(chat.create_chat_completion, runs_turns=True),
            methods=["POST"],
        ),
        Route("/v1/responses", ProfileEndpoint(responses.create_response, runs_turns=True), methods=["POST"]),
        Route(
            "/v1/responses/{response_id}",
            ByMethod(
                GET=stored(responses.retrieve_response),
                DELETE=stored(responses.delete_response),
            ),
            methods=["GET", "DELETE"],
        ),
        Route("/v1/responses/{response_id}/input_items", stored(responses.list_input_items), methods=["GET"]),
    ]


def create_app(
    settings: Settings,
    *,
    environ: Mapping[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    turn_runner: Callable[[Upstream, ResponseStore], TurnRunner] = DirectTurns,
    store: Callable[[Settings], Awaitable[ResponseStore]] = open_store,
    drain: Drain | None = None,
    metrics: Metrics | None = None,
) -> Starlette:
    """The ASGI app for ``settings``. ``environ`` (default ``os.environ``, read only)
    supplies profile secrets after each profile's ``.env``; ``transport`` replaces the
    upstream connection pool (tests pass respx's); ``turn_runner`` builds the runner
    of direct turns from the upstream client and the store (default: one provider call
    per turn; the profiles of ``agent.profiles`` get the Hermes agent); ``store``
    opens the response store (default: SQLite in ``state_dir``); ``drain`` is told when
    shutdown begins (``serve`` passes the one its signal handler calls; default: a new
    one, which watches uvicorn's server); ``metrics`` records what the server does
    (default: ``Metrics.from_environ()``, multiprocess when ``PROMETHEUS_MULTIPROC_DIR``
    is set): pass one to share it, e.g. with a turn runner that reports its worker
    processes (``Metrics.agent_worker``). The turn runner, the store and the transport
    are wrapped in ``meters`` for it."""
    environ = os.environ if environ is None else environ
    drain = Drain(settings.shutdown_grace) if drain is None else drain
    credentials = Credentials(settings.state_dir)
    keyring = KeyRing(settings.keys, credentials if settings.delegation else None)
    meter = Metrics.from_environ() if metrics is None else metrics
    # Requests are observed for the metrics, the JSON log and the figures of rate-limited
    # keys' turns (quotas.complete_turn); with none of them, not at all.
    observed = settings.metrics or settings.log_format == "json" or settings.rate_limited

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        registry = ProfileRegistry(settings, environ)
        await run_sync(registry.load)  # file I/O: never on the event loop
        if settings.delegation:
            await run_sync(credentials.open)
        response_store = await store(settings)
        upstream_transport = transport or AiohttpTransport()
        upstream = Upstream(settings, transport=StatusTransport(upstream_transport) if observed else upstream_transport)
        if observed:
            response_store = MeteredStore(response_store, meter)
        tasks = [asyncio.create_task(t) for t in (registry.sweep(), drain.watch(), meter.flush_regularly())]
        pool = None
        if settings.agent.profiles != frozenset():
            pool = WorkerPool(settings, environ, on_event=meter.agent_worker)
            tasks.append(asyncio.create_task(pool.sweep()))
        turns: TurnRunner = Turns(turn_runner(upstream, response_store), AgentTurns(pool, settings) if pool else None)
        if observed:
            turns = MeteredTurns(turns, meter)
        try:
            yield {
                "settings": settings,
                "registry": registry,
                "turns": turns,
                "store": response_store,
                "limiter": ConcurrencyLimiter(settings),
                "drain": drain,
                "keyring": keyring,
                "metrics": meter,
                "delegation": Delegation(settings, credentials),
            }
        finally:
            # uvicorn runs this only once no request is left (streams included), so
            # what closes here closes after the last turn: the agent workers and the
            # upstream pool, then the store, last of all, so no acknowledged response
            # is lost.
            for task in tasks:
                task.cancel()
            for task in tasks:
                with suppress(asyncio.CancelledError):
                    await task
            if pool is not None:
                await pool.aclose()
            await upstream.aclose()
            await response_store.aclose()
            meter.release()
            logger.info("stopped")

    routes: list[BaseRoute] = [
        Route("/health", health.get_health, methods=["GET"]),
        Route("/ready", health.get_ready, methods=["GET"]),
        *([Route("/metrics", get_metrics, methods=["GET"])] if settings.metrics else []),
        *v1_routes(),
        Mount("/p/{profile}", routes=v1_routes()),
    ]
    return Starlette(
        routes=routes,
        middleware=[
            Middleware(Unbound),
            Middleware(RequestIdMiddleware),
            *observe(settings, meter if settings.metrics else None, observed),
            *cors_middleware(settings.cors),
            Middleware(AuthenticationMiddleware, backend=keyring, on_error=on_auth_error),
        ],
        exception_handlers={
            HermesAPIError: handle_error,
            HTTPException: handle_error,
            Exception: handle_error,
        },
        lifespan=lifespan,
    )


def observe(settings: Settings, metrics: Metrics | None, observed: bool) -> list[Middleware]:
    """``ExchangeMiddleware`` when requests are observed: for ``metrics`` (None: not
    recorded) and for the JSON request log."""
    if not observed:
        return []
    return [Middleware(ExchangeMiddleware, metrics=metrics, log_requests=settings.log_format == "json")]


def create_app_from_env() -> Starlette:
    """``uvicorn --factory hermes_api.app:create_app_from_env``: settings from
    ``HERMES_API_CONFIG`` and the process environment. Raises ``ConfigError`` for an
    invalid config and for a Hermes home that does not exist (nothing is created there)."""
    settings = Settings.from_env(os.environ)
    if problem := settings.home_problem():
        raise ConfigError([problem])
    return create_app(settings)
