"""``/v1/models``: the profiles the caller's key may use, as OpenAI models (docs/contract.md §4)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from ..context import current_profile
from ..profiles import Profile
from . import JSONResponse


def model_object(profile: Profile) -> dict[str, Any]:
    """``{"id", "object": "model", "created", "owned_by": "hermes"}`` for a profile."""
    return {"id": profile.name, "object": "model", "created": profile.created, "owned_by": "hermes"}


async def list_models(request: Request) -> JSONResponse:
    """The exposed profiles this key may use, sorted by id. Under ``/p/<profile>/`` or
    with ``X-Hermes-Profile`` the list is that one profile (404/403 as in §3), so a
    client pointed at a prefix URL offers only the profile the URL names."""
    registry, caller = request.state.registry, request.user
    selection = registry.select(request.headers, prefix=request.path_params.get("profile"))
    if selection.explicit:
        profiles: tuple[Profile, ...] = (registry.resolve(selection, caller),)
    else:
        profiles = tuple(p for p in registry.models() if caller.may_use(p.name))
    return JSONResponse({"object": "list", "data": [model_object(p) for p in profiles]})


async def retrieve_model(request: Request, body: dict[str, Any]) -> JSONResponse:
    """One profile as a model object; unknown/not exposed 404, not allowed 403 (§3)."""
    return JSONResponse(model_object(current_profile()))
