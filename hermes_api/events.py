"""The Responses API stream: chat-completion chunks in, Responses events out.

Framing as OpenAI's Responses streaming events define it (and the SDK's ``responses.stream()`` helper
needs: openai-python ``lib/streaming/responses/_responses.py``): ``event: <type>`` plus a
JSON ``data:`` with the same ``type`` and an increasing ``sequence_number``; no
``[DONE]``. ``response.created`` and ``response.in_progress`` open the stream; then the
response's ``output`` list (``Output``) grows an item each time a new one first appears
upstream, each item with its own ``output_index`` in that order:

    a message       response.output_item.added, response.content_part.added,
                    response.output_text.delta × N, ...
    a function call response.output_item.added, response.function_call_arguments.delta × N, ...

    a tool the server ran (the agent runtime's ``ToolEvent``s), ``ServerToolRun``:
                    an ``mcp_call`` item, added when the tool starts (response.mcp_call.in_progress,
                    response.mcp_call_arguments.delta / .done) and done when it ends
                    (response.mcp_call.completed); with the ``openwebui`` tool display, a
                    ``function_call`` and its ``function_call_output``, both added and done when
                    the tool ends. Text after a tool goes to a new message item.

When the provider's stream ends, every item still open is closed in ``output_index`` order
(``response.output_text.done``, ``response.content_part.done`` /
``response.function_call_arguments.done``; then ``response.output_item.done``), and
``response.completed`` carries the full output. Deltas of two calls interleave when the
provider interleaves them: no item is closed before the provider's stream has ended,
since a chat stream never says that one call is complete. An answer with no text and no
call is one empty message, as before.

A response cut at the token limit also ends with ``response.completed``, its response
``status: "incomplete"`` with ``incomplete_details`` (OpenAI sends ``response.incomplete``
there, which the SDK's ``get_final_response()`` rejects). A failure after the first byte
ends the stream with ``response.failed`` carrying ``error{code, message}`` (docs/contract.md §5).
``finish`` (the store write) runs before the last event, so a client that saw the final
event can retrieve the response.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from . import response_objects
from .errors import HermesAPIError, ServerError, stream_failure
from .response_objects import new_id
from .turns import ToolEvent

if TYPE_CHECKING:
    from .tool_activity import ToolDisplay

logger = logging.getLogger("hermes_api")

Finish = Callable[[dict[str, Any]], Awaitable[None]]
Item = dict[str, Any]


class EventWriter:
    """Frames events with one increasing ``sequence_number``, from 0."""

    def __init__(self) -> None:
        self._sequence = itertools.count()

    def __call__(self, type_: str, **data: Any) -> bytes:
        payload = {"type": type_, "sequence_number": next(self._sequence), **data}
        return b"event: " + type_.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class StreamedMessage:
    """The assistant's text as one ``message`` item with one ``output_text`` part."""

    __slots__ = ("id", "index", "parts", "where")

    def __init__(self, index: int) -> None:
        self.id, self.index, self.parts = new_id("msg"), index, []
        self.where = {"item_id": self.id, "output_index": index, "content_index": 0}

    def opened(self, event: EventWriter) -> bytes:
        item = {"id": self.id, "type": "message", "role": "assistant", "status": "in_progress", "content": []}
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return event("response.output_item.added", output_index=self.index, item=item) + event(
            "response.content_part.added", **self.where, part=part
        )

    def closed(self, event: EventWriter, status: str) -> tuple[bytes, Item]:
        item = response_objects.output_message(self.id, "".join(self.parts), status)
        part = item["content"][0]
        return event("response.output_text.done", **self.where, text=part["text"], logprobs=[]) + event(
            "response.content_part.done", **self.where, part=part
        ) + event("response.output_item.done", output_index=self.index, item=item), item


class StreamedCall:
    """One of the provider's ``tool_calls`` as a ``function_call`` item. Its call id
    and name are the first non-empty ones the provider sent (some repeat them in
    every fragment); its arguments are every fragment's, joined."""

    __slots__ = ("id", "index", "call_id", "name", "arguments")

    def __init__(self, index: int, fragment: dict[str, Any]) -> None:
        self.id, self.index, self.arguments = new_id("fc"), index, []
        call_id = fragment.get("id")
        self.call_id = call_id if isinstance(call_id, str) and call_id else new_id("call")
        function = fragment.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        self.name = name if isinstance(name, str) else ""

    def opened(self, event: EventWriter) -> bytes:
        item = response_objects.function_call(self.id, self.call_id, self.name, "", "in_progress")
        return event("response.output_item.added", output_index=self.index, item=item)

    def delta(self, event: EventWriter, fragment: dict[str, Any]) -> bytes:
        function = fragment.get("function")
        if not isinstance(function, dict):
            return b""
        name, arguments = function.get("name"), function.get("arguments")
        if not self.name and isinstance(name, str):
            self.name = name
        if not isinstance(arguments, str) or not arguments:
            return b""
        self.arguments.append(arguments)
        return event("response.function_call_arguments.delta", item_id=self.id, output_index=self.index,
                     delta=arguments)  # fmt: skip

    def closed(self, event: EventWriter, status: str) -> tuple[bytes, Item]:
        arguments = "".join(self.arguments)
        item = response_objects.function_call(self.id, self.call_id, self.name, arguments, status)
        return event("response.function_call_arguments.done", item_id=self.id, output_index=self.index,
                     arguments=arguments, name=self.name) + event(
            "response.output_item.done", output_index=self.index, item=item
        ), item  # fmt: skip


class ServerToolRun:
    """A tool the server ran (``turns.ToolEvent``) as an ``mcp_call`` item, opened when
    it starts and closed when it ends (openai-python ``ResponseMcpCall*Event``)."""

    __slots__ = ("id", "index", "tool")

    def __init__(self, index: int, tool: ToolEvent) -> None:
        self.id, self.index, self.tool = new_id("mcp"), index, tool

    def opened(self, event: EventWriter) -> bytes:
        where = {"item_id": self.id, "output_index": self.index}
        item = response_objects.mcp_call(self.id, replace(self.tool, arguments="", output=None), "in_progress")
        arguments = self.tool.arguments
        return (
            event("response.output_item.added", output_index=self.index, item=item)
            + event("response.mcp_call.in_progress", **where)
            + event("response.mcp_call_arguments.delta", **where, delta=arguments)
            + event("response.mcp_call_arguments.done", **where, arguments=arguments)
        )

    def closed(self, event: EventWriter, status: str) -> tuple[bytes, Item]:
        ended = self.tool.status == "completed"
        item = response_objects.mcp_call(self.id, self.tool, "completed" if ended else "incomplete")
        kind = "response.mcp_call.completed" if ended else "response.mcp_call.failed"
        return event(kind, item_id=self.id, output_index=self.index) + event(
            "response.output_item.done", output_index=self.index, item=item
        ), item


class StreamedItem(Protocol):
    """An entry of ``response.output`` while it streams: its events when it is added
    and when it is done (with the final item). Another kind of item (a tool the server
    ran, say) is another class with these two methods."""

    index: int

    def opened(self, event: EventWriter) -> bytes: ...

    def closed(self, event: EventWriter, status: str) -> tuple[bytes, Item]: ...


class _Finished:
    """An item complete when it is added (the ``openwebui`` display's call and output)."""

    __slots__ = ("index", "item")

    def __init__(self, index: int, item: Item) -> None:
        self.index, self.item = index, item

    def opened(self, event: EventWriter) -> bytes:
        return event("response.output_item.added", output_index=self.index, item=self.item)

    def closed(self, event: EventWriter, status: str) -> tuple[bytes, Item]:
        return event("response.output_item.done", output_index=self.index, item=self.item), self.item


class Output:
    """``response.output`` while it streams: items in the order they first appear,
    ``output_index`` = position. The provider's text goes to a message item, each of
    its ``tool_calls`` indexes to one function-call item. A call (or a tool the server
    ran) ends the message before it, as OpenAI's streams do (text after it is a new
    message); calls stay open until the provider is done, since their fragments may
    interleave."""

    def __init__(self, event: EventWriter, display: ToolDisplay = "none") -> None:
        self.event = event
        self.display = display
        self.items: list[StreamedItem] = []
        self.done: dict[int, Item] = {}  # items closed before the end, by output_index
        self.message: StreamedMessage | None = None
        self.calls: dict[Any, StreamedCall] = {}
        self.runs: dict[str, ServerToolRun] = {}

    def _open(self, item: StreamedItem) -> bytes:
        self.items.append(item)
        return item.opened(self.event)

    def text(self, delta: str) -> bytes:
        message = self.message
        opened = b""
        if message is None:
            message = self.message = StreamedMessage(len(self.items))
            opened = self._open(message)
        message.parts.append(delta)
        return opened + self.event("response.output_text.delta", **message.where, delta=delta, logprobs=[])

    def feed(self, chunks: list[Any], state: dict[str, Any]) -> bytes:
        """The events for a batch of chat chunks (their choice 0) and ``ToolEvent``s;
        notes the last ``finish_reason`` and ``usage`` in ``state``. The text-only
        answer's hot path."""
        out = []
        for chunk in chunks:
            if not isinstance(chunk, dict):
                out.append(self.tool(chunk))
                continue
            usage = chunk.get("usage")
            if usage and isinstance(usage, dict):
                state["usage"] = usage
            for choice in chunk.get("choices") or ():
                if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                    continue
                reason = choice.get("finish_reason")
                if reason:
                    state["finish_reason"] = reason
                delta = choice.get("delta")
                if not isinstance(delta, dict):
                    continue
                content = delta.get("content")
                if content and isinstance(content, str):
                    out.append(self.text(content))
                calls = delta.get("tool_calls")
                if calls and isinstance(calls, list):
                    out.append(self.tool_calls(calls))
        return b"".join(out)

    def tool_calls(self, fragments: list[Any]) -> bytes:
        out = b""
        for position, fragment in enumerate(fragments):
            if not isinstance(fragment, dict):
                continue
            key = fragment.get("index", position)
            call = self.calls.get(key)
            if call is None:
                if self.message is not None:  # OpenAI's order: the text is done before a call begins
                    out, self.message = out + self._close(self.message, "completed"), None
                call = self.calls[key] = StreamedCall(len(self.items), fragment)
                out += self._open(call)
            out += call.delta(self.event, fragment)
        return out

    def tool(self, tool: ToolEvent) -> bytes:
        """The events for a tool the server ran: it ends the message before it (later
        text is a new message), then is shown as ``display`` says (module docstring)."""
        out = b""
        if self.message is not None:
            out, self.message = self._close(self.message, "completed"), None
        if self.display == "openwebui":
            if tool.status != "completed":
                return out
            for item in response_objects.tool_items(tool, "openwebui"):
                finished = _Finished(len(self.items), item)
                out += self._open(finished) + self._close(finished, "completed")
            return out
        run = self.runs.get(tool.call_id)
        if run is None:
            run = self.runs[tool.call_id] = ServerToolRun(len(self.items), tool)
            out += self._open(run)
        if tool.status == "completed":
            run.tool = tool
            out += self._close(run, "completed")
        return out

    def _close(self, item: StreamedItem, status: str) -> bytes:
        events, self.done[item.index] = item.closed(self.event, status)
        return events

    def close(self, status: str) -> tuple[bytes, list[Item]]:
        """The closing events of every item still open, in order, and the final items."""
        opening = b""
        if not self.items:  # no text and no call: one empty message, as before
            self.message = StreamedMessage(0)
            opening = self._open(self.message)
        closing = b"".join(self._close(item, status) for item in self.items if item.index not in self.done)
        return opening + closing, [self.done[item.index] for item in self.items]


async def response_events(
    batches: AsyncIterator[list[Any]], draft: dict[str, Any], finish: Finish, display: ToolDisplay = "none"
) -> AsyncIterator[bytes]:
    """The SSE body for one streamed response, from batches of chat chunks
    (``turns.batches``: each batch's events go out in one write). ``draft`` is the
    in-progress response object; ``finish`` receives the final (or failed) response
    before it is sent; ``display`` says how tools the server ran are listed."""
    event = EventWriter()
    yield event("response.created", response=draft) + event("response.in_progress", response=draft)
    output = Output(event, display)
    state: dict[str, Any] = {}
    try:
        async for batch in batches:
            out = output.feed(batch, state)
            if out:
                yield out
    except Exception as exc:  # after the first byte: a response.failed, which ends it
        yield await _failed(event, draft, stream_failure(exc, "responses stream"), finish)
        return
    status, details = response_objects.final_status(state.get("finish_reason"))
    closing, items = output.close(status)
    final = response_objects.finished(draft, output=items, status=status, details=details,
                                      chat_usage=state.get("usage"))  # fmt: skip
    yield closing
    try:
        await finish(final)
    except Exception:
        logger.exception("could not store response %s", final["id"])
        error = ServerError("The response could not be stored; see the server log.")
        yield event("response.failed", response=response_objects.failed(draft, error))
        return
    yield event("response.completed", response=final)


async def _failed(event: EventWriter, draft: dict[str, Any], exc: HermesAPIError, finish: Finish) -> bytes:
    response = response_objects.failed(draft, exc)
    try:
        await finish(response)
    except Exception:
        logger.exception("could not store failed response %s", response["id"])
    return event("response.failed", response=response)
