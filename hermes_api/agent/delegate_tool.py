"""``delegate_to_profile``: the agent's tool to hand a task to another profile.

Loaded by path into an agent worker (``worker.py``), so it imports only the standard
library, and Hermes's registry once it is registered. The tool lives in Hermes's own
registry (hermes-agent 0.19 ``tools/registry.py`` ``ToolRegistry.register``), in a
toolset of hermes-api's own, ``hermes_api_delegation``, which a turn enables only when
its ``turn`` message carries a ``delegation`` grant (``wire.py``); the description
lists that grant's targets.

A call is an ordinary, non-streamed chat completion to hermes-api on loopback
(``grant["url"]``), with the turn's credential as its bearer token: the server checks
the target, the caller's key and the depth, and runs the target's turn as any other.
The answer, or the server's error (status, code, message), is the tool's result, so
the agent can use it or explain the refusal. The wait ends at ``grant["timeout"]``, and
within ``POLL`` seconds of the turn being interrupted (``AIAgent.interrupt`` sets
``tools.interrupt``'s flag for the thread the tool runs on): the connection is then
closed, which interrupts the target's turn too.

The grant of the turn a call belongs to is a ContextVar set around the turn
(``granted``); Hermes carries a turn's context into the threads that run its tools
(``agent/tool_executor.py``, ``propagate_context_to_thread``).
"""

from __future__ import annotations

import contextlib
import contextvars
import http.client
import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

TOOL = "delegate_to_profile"
TOOLSET = "hermes_api_delegation"
POLL = 0.1  # seconds between checks of the turn's interrupt
MAX_ANSWER_BYTES = 8 * 1024 * 1024
DEPTH_HEADER = "X-Hermes-Delegate-Depth"

_grant: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("hermes_api_grant", default=None)
_registered: list[tuple[str, ...]] = []  # the targets the registered description lists
_lock = threading.Lock()


def enable(grant: dict[str, Any]) -> str:
    """Register the tool for ``grant``'s targets (again, when they changed: its
    description lists them); the toolset to enable for the turn."""
    targets = tuple(grant["targets"])
    with _lock:
        if not _registered or _registered[-1] != targets:
            from tools.registry import registry

            registry.register(
                name=TOOL, toolset=TOOLSET, schema=schema(targets), handler=handle,
                check_fn=lambda: True, emoji="📨", override=True,
            )  # fmt: skip
            _registered.append(targets)
    return TOOLSET


@contextlib.contextmanager
def granted(grant: dict[str, Any] | None) -> Iterator[None]:
    """The tool's calls in this block (the turn's thread and the threads Hermes runs
    its tools on) use ``grant``."""
    token = _grant.set(grant)
    try:
        yield
    finally:
        _grant.reset(token)


def schema(targets: tuple[str, ...]) -> dict[str, Any]:
    """The tool's OpenAI function schema, naming ``targets``."""
    names = ", ".join(targets)
    return {
        "name": TOOL,
        "description": (
            "Hand a task to another profile (another agent or assistant served alongside you) and wait for "
            f"its answer. Profiles you may ask: {names}. It sees only the task and context you give it, plus "
            "the earlier tasks you gave that profile in this conversation, never this conversation itself: "
            "say everything it needs. Returns its answer, or an error that says why it could not answer."
        ),
        "parameters": {
            "type": "object",
            "properties": {
                "profile": {"type": "string", "enum": list(targets), "description": "The profile to ask."},
                "task": {"type": "string", "description": "What it should do, as a complete request."},
                "context": {"type": "string", "description": "Optional background it needs for the task."},
            },
            "required": ["profile", "task"],
        },
    }


def handle(args: dict[str, Any], **_: Any) -> str:
    """The tool's handler (Hermes's contract: arguments in, result text out)."""
    grant = _grant.get()
    profile, task, context = args.get("profile"), args.get("task"), args.get("context")
    if grant is None:
        return _error(str(profile), "Delegation is not available in this turn.")
    if not isinstance(profile, str) or not profile or not isinstance(task, str) or not task.strip():
        return _error(str(profile), "Give 'profile' (one of the listed profiles) and 'task' (text).")
    messages = [{"role": "user", "content": task}]
    if isinstance(context, str) and context.strip():
        messages.insert(0, {"role": "system", "content": f"Context for this task:\n{context}"})
    status, answer = call(grant, {"model": profile, "messages": messages, "stream": False})
    if status == 200:
        try:
            text = answer["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            return _error(profile, "The profile's answer could not be read.")
        return json.dumps({"profile": profile, "answer": text}, ensure_ascii=False)
    error = answer.get("error") if isinstance(answer, dict) else None
    error = error if isinstance(error, dict) else {}
    return _error(profile, str(error.get("message") or "no answer"), status=status, code=error.get("code"))


def _error(profile: str, message: str, **detail: Any) -> str:
    """A result that says the delegation failed: code first, so that a short view shows it."""
    found = {k: v for k, v in detail.items() if v is not None}
    return json.dumps({"profile": profile, **found, "error": message}, ensure_ascii=False)


def call(grant: dict[str, Any], body: dict[str, Any]) -> tuple[int, Any]:
    """POST ``body`` to ``grant["url"]`` with its credential: ``(HTTP status, parsed JSON
    answer)``; status 0 with ``{"error": {...}}`` when there was no answer (timeout,
    interrupt, connection refused)."""
    url = urllib.parse.urlsplit(grant["url"])
    timeout = float(grant["timeout"])
    # The socket's own timeout is a backstop: the loop below ends the wait at ``timeout``.
    connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=timeout + 10 * POLL)
    headers = {
        "Authorization": f"Bearer {grant['credential']}",
        "Content-Type": "application/json",
        DEPTH_HEADER: str(int(grant.get("depth", 0)) + 1),
        "Connection": "close",
    }
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            connection.request("POST", url.path, body=json.dumps(body).encode(), headers=headers)
            response = connection.getresponse()
            outcome["status"], outcome["body"] = response.status, response.read(MAX_ANSWER_BYTES)
        except (OSError, http.client.HTTPException) as exc:
            outcome["failure"] = f"{type(exc).__name__}: {exc}"
        finally:
            connection.close()

    worker = threading.Thread(target=run, name="delegate-to-profile", daemon=True)
    worker.start()
    deadline = time.monotonic() + timeout
    while worker.is_alive():
        worker.join(POLL)
        if worker.is_alive() and (_interrupted() or time.monotonic() > deadline):
            _abort(connection)
            reason = "the turn was interrupted" if _interrupted() else f"no answer within {timeout:g} s"
            return 0, {"error": {"message": f"The delegation was stopped: {reason}.", "code": "delegation_stopped"}}
    if "status" not in outcome:
        failure = outcome.get("failure", "no answer")
        return 0, {"error": {"message": f"hermes-api could not be reached ({failure}).", "code": None}}
    try:
        return outcome["status"], json.loads(outcome["body"])
    except ValueError:
        return outcome["status"], {"error": {"message": "The answer was not JSON.", "code": None}}


def _interrupted() -> bool:
    from tools.interrupt import is_interrupted

    return bool(is_interrupted())


def _abort(connection: http.client.HTTPConnection) -> None:
    """Close the connection under the thread waiting on it: the server sees the client
    leave and interrupts the delegated turn."""
    sock = connection.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    connection.close()
