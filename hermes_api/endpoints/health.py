"""``GET /health``: liveness, no authentication (DESIGN.md §4)."""

from __future__ import annotations

from starlette.requests import Request

from . import JSONResponse


async def get_health(request: Request) -> JSONResponse:
    """``{"status": "ok"}`` while the process serves requests."""
    return JSONResponse({"status": "ok"})
