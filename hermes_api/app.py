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
import gc
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
from starlette.types import ASGIApp, Receive, Scope, Send

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
from .meters import MeteredStore, ObservedTurns, StatusTransport
from .metrics import Metrics
from .registry import ProfileRegistry
from .request_ids import RequestIdMiddleware
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
    freeze_startup: bool = False,
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
    processes (``Metrics.agent_worker``). Each request's ``exchange.Exchange`` feeds the
    metrics, the JSON log and the usage rows; the turn runner, the store and the
    transport are wrapped in ``meters`` to fill it. ``freeze_startup``: once started,
    collect garbage and freeze what is alive (``freeze_startup_objects``); for a process
    that exists to serve this app (``serve``, its workers, ``create_app_from_env``),
    not for one that makes many apps, as tests do."""
    environ = os.environ if environ is None else environ
    drain = Drain(settings.shutdown_grace) if drain is None else drain
    credentials = Credentials(settings.state_dir)
    keyring = KeyRing(settings.keys, credentials if settings.delegation else None)
    meter = Metrics.from_environ() if metrics is None else metrics
    # One record per request (exchange.Exchange) feeds the metrics, the JSON log line and
    # the turns' usage rows (which the keys' rate limits count); with none of them on,
    # requests are not observed at all.
    logged = settings.log_format == "json"
    observed = settings.metrics or logged or settings.record_usage

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        registry = ProfileRegistry(settings, environ)
        await run_sync(registry.load)  # file I/O: never on the event loop
        if settings.delegation:
            await run_sync(credentials.open)
        response_store = await store(settings)
        upstream_transport = transport or AiohttpTransport()
        if logged:  # the provider's status: for the log line (no metric has it)
            upstream_transport = StatusTransport(upstream_transport)
        upstream = Upstream(settings, transport=upstream_transport)
        if settings.metrics:
            response_store = MeteredStore(response_store, meter)
        tasks = [asyncio.create_task(t) for t in (registry.sweep(), drain.watch(), meter.flush_regularly())]
        pool = None
        if settings.agent.profiles != frozenset():
            pool = WorkerPool(settings, environ, on_event=meter.agent_worker)
            tasks.append(asyncio.create_task(pool.sweep()))
        turns: TurnRunner = Turns(turn_runner(upstream, response_store), AgentTurns(pool, settings) if pool else None)
        if observed:
            turns = ObservedTurns(turns)
        limiter = ConcurrencyLimiter(settings)
        meter.count_turns_of(limiter.by_profile)
        if freeze_startup:
            freeze_startup_objects()
        try:
            yield {
                "settings": settings,
                "registry": registry,
                "turns": turns,
                "store": response_store,
                "limiter": limiter,
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
        *v1_routes(),
        Mount("/p/{profile}", routes=v1_routes()),
        # last: the router tries routes in order, and every turn would pass it first
        *([Route("/metrics", get_metrics, methods=["GET"])] if settings.metrics else []),
    ]
    return Starlette(
        routes=routes,
        middleware=[
            Middleware(Unbound),
            observe(settings, meter if settings.metrics else None),
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


def observe(settings: Settings, metrics: Metrics | None) -> Middleware:
    """``ExchangeMiddleware`` when requests are observed: for ``metrics`` (None: not
    recorded), the usage rows and the JSON request log; it gives each answer its
    ``x-request-id`` too. Else ``RequestIdMiddleware``, which only does that."""
    logged = settings.log_format == "json"
    if metrics is None and not logged and not settings.record_usage:
        return Middleware(RequestIdMiddleware)
    return Middleware(ExchangeMiddleware, metrics=metrics, record_usage=settings.record_usage, log_requests=logged)


def freeze_startup_objects() -> None:
    """Collect the garbage of startup, then move every object still alive (the modules,
    settings, profiles and clients the process will keep) to the garbage collector's
    permanent generation (``gc.freeze``, Python's gc module docs), so that no later
    collection scans them again. Requests allocate and free objects in bursts, and the
    collector's full collections, each a pass over every tracked object, cost 30–40 µs
    of a request measured in process (bench/RESULTS.md, "Observation after cutting its
    path"). A frozen
    object that later ends in a reference cycle (a profile replaced after its files
    changed) is not collected; one freed by its reference count is."""
    gc.collect()
    gc.freeze()


def create_app_from_env() -> Starlette:
    """``uvicorn --factory hermes_api.app:create_app_from_env``: settings from
    ``HERMES_API_CONFIG`` and the process environment. Raises ``ConfigError`` for an
    invalid config and for a Hermes home that does not exist (nothing is created there)."""
    settings = Settings.from_env(os.environ)
    if problem := settings.home_problem():
        raise ConfigError([problem])
    return create_app(settings, freeze_startup=True)
