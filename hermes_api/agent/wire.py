"""The worker protocol: the messages between hermes-api and one agent worker process.

One JSON object per line (UTF-8, ``\\n``-terminated; JSON escapes every newline inside),
parent → worker on the worker's stdin, worker → parent on the file descriptor that was
the worker's stdout when it started (the worker then points fd 1 at stderr, because
Hermes prints to stdout). This module is the one writer and the one reader of both
directions; it imports nothing but the standard library, because the worker loads it by
path into an interpreter that may not have hermes-api installed (``agent.python``).

Version ``PROTOCOL`` is announced in ``ready`` (and ``spare``); the parent refuses a
worker that speaks another. A field added as optional (``turn``'s ``delegation``) keeps
the version: a worker that does not know it ignores it. Messages, by ``type`` (every turn-scoped
message carries the turn's ``id``):

parent → worker
    ``bind``       a spare's first and only line before ``ready`` (``worker.py
                   --spare``): ``env`` (the complete environment of the profile's
                   worker, ``environment.worker_environment``), ``cwd`` (its working
                   directory), ``log`` (the file its stdout and stderr go to from
                   then on); the worker replaces its ``os.environ`` with ``env``,
                   imports Hermes, says ``ready``; a second ``bind`` ends it
    ``turn``       ``id``, ``messages`` (the chat request's messages), ``session``
                   (``{"namespace": str, "id": str | None}``), ``toolsets`` (list of
                   Hermes toolset names), ``stream`` (bool: send ``delta``s),
                   ``delegation`` (optional; absent or None: the agent may not
                   delegate): ``{"targets": [profile, ...], "url": the server's chat
                   completions on loopback, "credential": the bearer credential of
                   this turn (``credentials.py``), "timeout": seconds to wait for one
                   answer, "depth": this turn's depth}``, for the
                   ``delegate_to_profile`` tool (``delegate_tool.py``)
    ``interrupt``  ``id``, ``reason``: ``AIAgent.interrupt(reason)``
    ``shutdown``   interrupt every turn, exit
worker → parent
    ``spare``      ``protocol``, ``pid``: a spare has imported the third-party modules
                   and waits for its ``bind``
    ``ready``      ``protocol``, ``hermes_version``, ``pid``: imports done, turns accepted
    ``fatal``      ``message``: the worker cannot run turns (sent instead of ``ready``)
    ``delta``      ``id``, ``text``: answer text as the model streams it
    ``tool``       ``id``, ``call_id``, ``name``, ``arguments`` (JSON text), ``status``
                   (``running`` | ``completed``), ``emoji``, ``label``, ``output`` (text,
                   with ``completed``): a tool the agent runs, as Hermes's API server
                   reports it (``gateway/platforms/api_server.py`` ``_on_tool_start``)
    ``result``     ``id``, ``ok``, ``text``, ``usage`` (``{prompt_tokens,
                   completion_tokens, total_tokens}``, or None when the provider reported
                   none), ``session_id``, ``interrupted``,
                   ``error`` (None, or ``{kind, message, status, failure_reason}``;
                   ``kind``: ``provider`` | ``input`` | ``internal``): the turn ended
"""

from __future__ import annotations

import json
from typing import Any

PROTOCOL = 2  # 2: ``spare`` and ``bind``
MAX_LINE = 32 * 1024 * 1024  # bytes: the longest line either side reads
MAX_TOOL_TEXT = 64 * 1024  # characters of a tool's arguments or output carried over the wire

TO_WORKER = frozenset({"turn", "interrupt", "shutdown"})
TO_PARENT = frozenset({"ready", "fatal", "delta", "tool", "result"})
TO_SPARE = frozenset({"bind"})
FROM_SPARE = frozenset({"spare", "fatal"})


class ProtocolError(ValueError):
    """A line that is not a message of this protocol."""


def encode(message: dict[str, Any]) -> bytes:
    """One message as a line. ``ensure_ascii`` keeps lone surrogates from breaking UTF-8."""
    return json.dumps(message, ensure_ascii=True, separators=(",", ":")).encode("ascii") + b"\n"


def decode(line: bytes, allowed: frozenset[str]) -> dict[str, Any]:
    """The message on ``line``. Raises ``ProtocolError`` for anything but a JSON object
    whose ``type`` is in ``allowed``."""
    try:
        message = json.loads(line)
    except ValueError:
        raise ProtocolError("not JSON") from None
    if not isinstance(message, dict) or message.get("type") not in allowed:
        raise ProtocolError(f"unexpected message {str(message)[:80]!r}")
    return message


def clip(text: str, limit: int = MAX_TOOL_TEXT) -> str:
    """``text`` cut to ``limit`` characters, saying so."""
    return text if len(text) <= limit else text[:limit] + f"\n[... {len(text) - limit} characters cut]"
