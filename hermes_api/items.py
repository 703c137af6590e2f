"""Responses input items: validated, given ids, and turned into chat messages.

An item is kept in the shape ``/input_items`` lists it (``items``), and translated by
``turn_messages`` (OpenAI's spec ``InputItem``; openai-python
``types/responses/response_input_item_param.py``):

- ``message`` (or no ``type``): roles user, assistant, system, developer; string or
  text-part content (``input_text``, ``output_text``, ``refusal``) → one chat message;
- ``function_call`` (``call_id``, ``name``, ``arguments`` a string) → a ``tool_calls``
  entry of an assistant message: consecutive calls, and the assistant text right
  before them, make one message, in order;
- ``function_call_output`` (``call_id``, ``output`` a string or an array of content
  parts, whose text is used) → a ``tool`` message with that ``tool_call_id``;
- ``reasoning``: kept and listed, never sent (chat providers take no reasoning input);
- ``item_reference`` (``id``): replaced by the stored item it names (``resolve``).

Any other type is a 400 naming the item (``input[2]``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from .errors import InvalidJSONError, InvalidValueError
from .response_objects import new_id

Item = dict[str, Any]
Message = dict[str, Any]

ROLES = ("user", "assistant", "system", "developer")
TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
TYPES = ("message", "function_call", "function_call_output", "reasoning", "item_reference")
STATUSES = ("in_progress", "completed", "incomplete")


def _check(ok: bool, message: str, param: str) -> None:
    if not ok:
        raise InvalidValueError(message, param=param)


def input_items(value: Any) -> list[Item]:
    """``input`` as items, one per entry (a string is one user message). Raises
    ``InvalidValueError`` naming the entry (``input[2]``, ``input[0].content[1]``)."""
    if isinstance(value, str):
        return [message_item(new_id("msg"), "user", value)]
    _check(
        isinstance(value, list) and bool(value),
        "'input' must be a string or a non-empty array of input items.",
        "input",
    )
    return [item(raw, f"input[{i}]") for i, raw in enumerate(value)]


def _given_id(raw: Item, prefix: str) -> str:
    item_id = raw.get("id")
    return item_id if isinstance(item_id, str) and item_id else new_id(prefix)


def item(raw: Any, where: str) -> Item:
    """One input entry, validated, in its stored shape."""
    _check(isinstance(raw, dict), f"{where} must be an input item object.", where)
    kind = raw.get("type", "message")
    _check(
        kind in TYPES,
        f"{where} has type {str(kind)[:40]!r}; hermes-api supports input items of type "
        f"{', '.join(TYPES)}.",
        where,
    )
    if kind == "function_call":
        return _function_call(raw, where)
    if kind == "function_call_output":
        return _function_call_output(raw, where)
    if kind == "reasoning":
        return _kept({**raw, "id": _given_id(raw, "rs")}, where)
    if kind == "item_reference":
        _check(isinstance(raw.get("id"), str) and bool(raw["id"]), f"{where}.id must be an item id.", where)
        return {"type": "item_reference", "id": raw["id"]}
    return _message(raw, where)


def _message(raw: Item, where: str) -> Item:
    role = raw.get("role")
    _check(role in ROLES, f"{where}.role must be one of {', '.join(ROLES)}.", f"{where}.role")
    content = raw.get("content")
    if isinstance(content, str):
        text = content
    else:
        _check(
            isinstance(content, list),
            f"{where}.content must be a string or an array of text parts.",
            f"{where}.content",
        )
        text = "\n".join(_part_text(part, f"{where}.content[{j}]") for j, part in enumerate(content))
    return message_item(_given_id(raw, "msg"), role, text)


def _part_text(part: Any, where: str) -> str:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "refusal" and isinstance(part.get("refusal"), str):
        return part["refusal"]
    _check(
        kind in TEXT_PARTS and isinstance(part.get("text"), str),
        f"{where} must be a text part (input_text or output_text with a string 'text'); "
        f"{str(kind)[:40]!r} parts are not supported by hermes-api.",
        where,
    )
    return part["text"]


def _status(raw: Item) -> str:
    return raw["status"] if raw.get("status") in STATUSES else "completed"


def _function_call(raw: Item, where: str) -> Item:
    call_id, name, arguments = raw.get("call_id"), raw.get("name"), raw.get("arguments")
    _check(isinstance(call_id, str) and bool(call_id), f"{where} (function_call) needs a string 'call_id'.", where)
    _check(isinstance(name, str) and bool(name), f"{where} (function_call) needs a string 'name'.", where)
    _check(isinstance(arguments, str), f"{where}.arguments must be a string (the arguments as JSON text).", where)
    return {
        "id": _given_id(raw, "fc"),
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": _status(raw),
    }


def _function_call_output(raw: Item, where: str) -> Item:
    call_id, output = raw.get("call_id"), raw.get("output")
    _check(
        isinstance(call_id, str) and bool(call_id), f"{where} (function_call_output) needs a string 'call_id'.", where
    )
    ok = isinstance(output, str) or (isinstance(output, list) and all(isinstance(p, dict) for p in output))
    _check(ok, f"{where}.output must be a string or an array of content parts.", where)
    return _kept(
        {"id": _given_id(raw, "fco"), "type": "function_call_output", "call_id": call_id, "output": output,
         "status": _status(raw)},
        where,
    )  # fmt: skip


def _kept(entry: Item, where: str) -> Item:
    """``entry``, which is stored as the client sent it (not only its text): a 400 if
    it is nested deeper than the store can write (orjson reads 1024 levels, writes 254)."""
    if isinstance(entry.get("output"), str):
        return entry
    try:
        orjson.dumps(entry)
    except orjson.JSONEncodeError:
        raise InvalidJSONError(f"{where} is nested too deeply.", param=where) from None
    return entry


async def resolve(items: list[Item], find: Callable[[list[str]], Awaitable[dict[str, Item]]]) -> list[Item]:
    """``items`` with each ``item_reference`` replaced by the item it names, which
    ``find`` (ids → stored items; ``ResponseStore.find_items``) looks up among this key's
    and profile's stored responses. Raises ``InvalidValueError`` (``input[i]``) for an id
    not found."""
    wanted = [entry["id"] for entry in items if entry["type"] == "item_reference"]
    if not wanted:
        return items
    found = await find(wanted)
    out = []
    for i, entry in enumerate(items):
        if entry["type"] == "item_reference":
            stored = found.get(entry["id"])
            _check(stored is not None, f"input[{i}] references item {entry['id'][:64]!r}, which is not in a "
                   "stored response of this key and profile.", f"input[{i}]")  # fmt: skip
            entry = item(stored, f"input[{i}]")
        out.append(entry)
    return out


def message_item(item_id: str, role: str, text: str) -> Item:
    """A message item with one text part (``output_text`` for the assistant)."""
    part = {"type": "input_text", "text": text}
    if role == "assistant":
        part = {"type": "output_text", "text": text, "annotations": []}
    return {"id": item_id, "type": "message", "role": role, "status": "completed", "content": [part]}


def output_text(output: str | list[Item]) -> str:
    """A function call's output as the text of a ``tool`` message: the string, or the
    text parts of an array joined (images and files have no place in a chat tool message)."""
    if isinstance(output, str):
        return output
    return "\n".join(p["text"] for p in output if isinstance(p.get("text"), str))


def _pending(history: list[Message]) -> set[str]:
    """The call ids of the history's tool calls that no ``tool`` message answered."""
    pending: set[str] = set()
    for message in history:
        if message.get("tool_calls"):
            pending.update(call["id"] for call in message["tool_calls"])
        elif message.get("role") == "tool":
            pending.discard(message.get("tool_call_id"))
    return pending


def turn_messages(items: list[Item], history: list[Message] | None = None) -> list[Message]:
    """The chat messages for ``items``, in order, after ``history``. An assistant
    message right after calls still waiting for their outputs joins the message that
    holds them (chat providers want the ``tool`` messages next). Raises
    ``InvalidValueError`` for a ``function_call_output`` whose ``call_id`` matches no
    earlier call (``input[i]``), and for a call left without an output before the next
    user message or the end (its item, or ``input`` for a call of the history), as
    OpenAI does ("No tool output found for function call ...")."""
    messages: list[Message] = []
    unanswered = dict.fromkeys(_pending(history), "input") if history else {}
    calls: set[str] = set(unanswered)
    for i, entry in enumerate(items):
        kind = entry["type"]
        if kind == "message":
            if unanswered:
                _answered(unanswered, entry["role"] == "user")
                _add_text(messages, entry)
            else:  # the common case: a conversation of messages
                text = "\n".join(part["text"] for part in entry["content"])
                messages.append({"role": entry["role"], "content": text})
        elif kind == "function_call":
            _add_call(messages, entry)
            calls.add(entry["call_id"])
            unanswered[entry["call_id"]] = f"input[{i}]"
        elif kind == "function_call_output":
            call_id = entry["call_id"]
            _check(call_id in calls, f"input[{i}] answers call_id {call_id[:64]!r}, which no earlier "
                   "function_call has.", f"input[{i}]")  # fmt: skip
            unanswered.pop(call_id, None)
            messages.append({"role": "tool", "tool_call_id": call_id, "content": output_text(entry["output"])})
    _answered(unanswered, True)
    return messages


def _answered(unanswered: dict[str, str], needed: bool) -> None:
    if needed and unanswered:
        call_id, param = next(iter(unanswered.items()))
        raise InvalidValueError(f"No tool output found for function call {call_id[:64]}.", param=param)


def _add_text(messages: list[Message], entry: Item) -> None:
    """A message while calls wait for their outputs."""
    text = "\n".join(part["text"] for part in entry["content"])
    last = messages[-1] if messages else None
    if entry["role"] == "assistant" and last is not None and last.get("tool_calls"):
        last["content"] = f"{last['content']}\n{text}" if last["content"] else text
    else:
        messages.append({"role": entry["role"], "content": text})


def _add_call(messages: list[Message], entry: Item) -> None:
    call = {"id": entry["call_id"], "type": "function",
            "function": {"name": entry["name"], "arguments": entry["arguments"]}}  # fmt: skip
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant":
        last.setdefault("tool_calls", []).append(call)
        last["content"] = last["content"] or None
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
