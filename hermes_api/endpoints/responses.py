"""``/v1/responses``: OpenAI's Responses API over any chat-completions provider (docs/contract.md §4).

``POST`` validates and translates (``translation``), runs the turn through the
``TurnRunner`` and renders JSON or the event stream (``events``); stored responses
(``store``, default true) live in ``request.state.store`` bound to the caller's key
and the profile. ``GET``/``DELETE`` by id run under the profile the response belongs
to; a prefix or ``X-Hermes-Profile`` naming another profile finds nothing (404).
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .. import items, response_objects, tool_activity, translation
from ..context import current_profile
from ..errors import InvalidValueError, ResponseNotFoundError, store_failure
from ..events import response_events
from ..headers import header_value
from ..shutdown import Drain
from ..sse import EventStreamResponse
from ..store import ResponseStore, StoredResponse
from ..translation import ResponseRequest
from ..turns import Turn, batches
from . import JSONResponse

logger = logging.getLogger("hermes_api")

MAX_ITEMS_PAGE = 100
_LIMIT = re.compile(r"[0-9]{1,3}")


def _not_found(response_id: str, param: str | None = None) -> ResponseNotFoundError:
    shown = "".join(c if c.isprintable() else "?" for c in response_id[:80])
    return ResponseNotFoundError(f"No response with id '{shown}' was found.", param=param)


async def stored_profile(request: Request) -> str:
    """The profile of the stored response the path names, when the request names none
    (``binding.ProfileEndpoint(implied=...)``). Raises 404 ``ResponseNotFoundError``
    when this key has no response by that id."""
    response_id = request.path_params["response_id"]
    record = await request.state.store.get_response(request.user.owner, response_id)
    if record is None:
        raise _not_found(response_id)
    return record.profile


async def _owned(request: Request) -> StoredResponse:
    response_id = request.path_params["response_id"]
    record = await request.state.store.get_response(request.user.owner, response_id, current_profile().name)
    if record is None:
        raise _not_found(response_id)
    return record


async def _conversation(
    parsed: ResponseRequest, store: ResponseStore, owner: str, profile: str
) -> tuple[ResponseRequest, list[dict[str, Any]]]:
    """The request with its ``item_reference`` items resolved, and the chat messages of
    its ``previous_response_id`` chain ([] without one)."""
    resolved = await items.resolve(parsed.items, lambda ids: store.find_items(owner, profile, ids))
    if resolved is not parsed.items:
        parsed = replace(parsed, items=resolved)
    if not parsed.previous_response_id:
        return parsed, []
    history = await store.conversation(owner, profile, parsed.previous_response_id)
    if history is None:
        raise _not_found(parsed.previous_response_id, "previous_response_id")
    return parsed, history


async def create_response(request: Request, body: dict[str, Any]) -> Response:
    """Run one turn under the bound profile and answer with a ``response`` object, or
    its event stream. An unknown ``previous_response_id`` (or another key's, another
    profile's, a deleted one) is 404 ``response_not_found``. Errors before the first
    byte are JSON (§5); after it, ``response.failed``. A response that cannot be
    stored is never acknowledged: a 500 ``ServerError`` (the cause in the log)."""
    profile, owner, store = current_profile(), request.user.owner, request.state.store
    parsed, history = await _conversation(translation.parse_request(body), store, owner, profile.name)
    messages = items.turn_messages(parsed.items, history)
    chat_request = translation.chat_request(parsed, history, messages)
    grant = request.state.delegation.grant(request, profile, chat_request["messages"], None)
    turn = Turn(profile, chat_request, owner, delegation=grant)
    display = tool_activity.tool_display(header_value(request.headers, tool_activity.HEADER))
    draft = response_objects.new_response(parsed, model=profile.name)

    async def finish(response: dict[str, Any]) -> None:
        if parsed.store:
            await store.put_response(_record(parsed, messages, response, owner, profile.name))

    state = request.state
    drain: Drain = state.drain  # waits on the provider end at the shutdown deadline
    if parsed.stream:
        chunks = await drain.run(state.resources.enter_async_context(state.turns.stream(turn)))
        return EventStreamResponse(
            response_events(drain.iterate(batches(chunks)), draft, finish, display), ping=state.settings.sse_keepalive
        )
    completion = await drain.run(state.turns.complete(turn))
    response = response_objects.from_completion(draft, completion.body, completion.tools, display)
    try:
        await finish(response)
    except Exception as exc:
        # An error of ours, not an escaped exception: uvicorn would close the connection.
        message = "The response could not be stored; see the server log."
        raise store_failure(exc, message, "could not store response %s", response["id"]) from None
    return JSONResponse(response)


def _record(
    parsed: ResponseRequest, turn: list[dict[str, Any]], response: dict[str, Any], owner: str, profile: str
) -> StoredResponse:
    return StoredResponse(
        id=response["id"],
        owner=owner,
        profile=profile,
        created_at=response["created_at"],
        previous_response_id=parsed.previous_response_id,
        input_items=parsed.items,
        messages=[*turn, *response_objects.answer_message(response)],
        body=response,
    )


async def retrieve_response(request: Request, body: dict[str, Any]) -> JSONResponse:
    """The stored response object; 404 for any id this key and profile did not store."""
    if request.query_params.get("stream", "false").lower() not in ("false", "0"):
        raise InvalidValueError("Streaming a stored response is not supported; omit 'stream'.", param="stream")
    return JSONResponse((await _owned(request)).body)


async def delete_response(request: Request, body: dict[str, Any]) -> JSONResponse:
    """``{"id", "object": "response", "deleted": true}``; 404 when there is nothing of
    this key and profile to delete. Later responses that chained onto it continue
    without it."""
    response_id = request.path_params["response_id"]
    if not await request.state.store.delete_response(request.user.owner, current_profile().name, response_id):
        raise _not_found(response_id)
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})


def _page_params(request: Request) -> tuple[int, bool, str | None]:
    query = request.query_params
    limit = query.get("limit", "20")
    # Not str.isdigit(): it passes "²", and 5000 digits, both of which int() refuses.
    if not _LIMIT.fullmatch(limit) or not 1 <= int(limit) <= MAX_ITEMS_PAGE:
        raise InvalidValueError(f"'limit' must be an integer from 1 to {MAX_ITEMS_PAGE}.", param="limit")
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidValueError("'order' must be 'asc' or 'desc'.", param="order")
    return int(limit), order == "desc", query.get("after")


async def list_input_items(request: Request, body: dict[str, Any]) -> JSONResponse:
    """The input items of a stored response as a list object (``data``, ``first_id``,
    ``last_id``, ``has_more``), newest first unless ``order=asc``; ``limit`` 1–100
    (default 20); ``after`` an item id to continue after."""
    limit, descending, after = _page_params(request)
    items = (await _owned(request)).input_items
    if descending:
        items = items[::-1]
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise InvalidValueError("'after' is not the id of an input item of this response.", param="after")
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    return JSONResponse(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
    )
