"""``GET /health`` (liveness) and ``GET /ready`` (readiness), no authentication."""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import Request

from . import JSONResponse

logger = logging.getLogger("hermes_api")

STORE_TIMEOUT = 2.0  # seconds the store has to answer a readiness probe
PROBE_ID = "resp_readiness_probe"  # looked up under an owner no key has: never found


async def get_health(request: Request) -> JSONResponse:
    """``{"status": "ok"}`` while the process serves requests."""
    return JSONResponse({"status": "ok"})


async def store_reachable(store: object) -> bool:
    """True when the store answers a read within ``STORE_TIMEOUT`` seconds. The read is
    one any store implements (``get_response``) and finds nothing; a failure is
    logged by its type only (a database error can name its server)."""
    try:
        async with asyncio.timeout(STORE_TIMEOUT):
            await store.get_response("readiness-probe", PROBE_ID)  # type: ignore[attr-defined]
    except Exception as exc:
        logger.warning("readiness: the store did not answer (%s)", type(exc).__name__)
        return False
    return True


async def get_ready(request: Request) -> JSONResponse:
    """Ready for traffic (load balancers, Kubernetes readiness probes): 200
    ``{"status": "ready", ...}`` when the store answers, at least one profile is
    served and shutdown has not begun; else 503 ``{"status": "not_ready", ...}``.
    The other fields say which: ``store`` ok|unreachable, ``profiles`` loaded|none,
    ``draining`` true|false."""
    state = request.state
    store_ok = await store_reachable(state.store)
    profiles = bool(state.registry.models())
    draining = state.drain.draining
    ready = store_ok and profiles and not draining
    return JSONResponse(
        {
            "status": "ready" if ready else "not_ready",
            "store": "ok" if store_ok else "unreachable",
            "profiles": "loaded" if profiles else "none",
            "draining": draining,
        },
        status_code=200 if ready else 503,
    )
