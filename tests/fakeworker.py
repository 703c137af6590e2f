"""A stand-in for ``hermes_api/agent/worker.py``: it speaks the worker protocol
(``hermes_api/agent/wire.py``) and runs no agent, for loads on hermes-api's side of the
protocol that Hermes itself is too slow to make (it spends milliseconds on each streamed
chunk). A test points ``agent.python`` at a script that runs this file; the worker path
it is given is ignored.

Each turn runs in a thread of its own. Its last user message decides the answer:

    [[deltas:N:CHARS]]   streamed: N ``delta`` messages of CHARS characters each, as fast
                         as the pipe takes them (an ``interrupt`` stops them), then the
                         file ``deltas-sent`` in the working directory, then the
                         ``result``; not streamed: only the ``result``
    otherwise            the ``result`` "echo: <text>" at once (and that as one ``delta``
                         when streamed)

Started as a spare (``--spare``) it says ``spare``, then takes its ``bind`` as the real
worker does (environment, working directory), except that it exits at once when the
profile's environment has ``FAKE_BIND_FAILS``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any

WIRE = Path(__file__).resolve().parent.parent / "hermes_api" / "agent" / "wire.py"
_spec = importlib.util.spec_from_file_location("_fake_worker_wire", WIRE)
assert _spec is not None and _spec.loader is not None
wire = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(wire)

OUT = os.fdopen(os.dup(1), "wb")
LOCK = threading.Lock()
STOPPED: set[str] = set()


def send(message: dict[str, Any]) -> None:
    with LOCK:
        OUT.write(wire.encode(message))
        OUT.flush()


def run(message: dict[str, Any]) -> None:
    turn, stream = message["id"], bool(message.get("stream"))
    text = str(message["messages"][-1].get("content") or "")
    answer = "echo: " + re.sub(r"\[\[.*?\]\]", "", text).strip()
    if found := re.search(r"\[\[deltas:(\d+):(\d+)\]\]", text):
        count, size = int(found.group(1)), int(found.group(2))
        answer = "x" * (count * size)
        for _ in range(count if stream else 0):
            if turn in STOPPED:
                break
            send({"type": "delta", "id": turn, "text": "x" * size})
        Path("deltas-sent").touch()  # all but the last pipeful have been read by hermes-api
    elif stream:
        send({"type": "delta", "id": turn, "text": answer})
    usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    send({"type": "result", "id": turn, "ok": True, "text": answer, "finish_reason": "stop", "usage": usage,
          "session_id": "fake", "interrupted": turn in STOPPED, "error": None})  # fmt: skip


def bind() -> None:
    """A spare's ``bind``: the profile's environment and working directory, or exit."""
    send({"type": "spare", "protocol": wire.PROTOCOL, "pid": os.getpid()})
    message = wire.decode(sys.stdin.buffer.readline(wire.MAX_LINE), wire.TO_SPARE)
    if "FAKE_BIND_FAILS" in message["env"]:
        os._exit(3)
    os.environ.clear()
    os.environ.update(message["env"])
    os.chdir(message["cwd"])


def main() -> None:
    if "--spare" in sys.argv[1:]:
        bind()
    send({"type": "ready", "protocol": wire.PROTOCOL, "hermes_version": "0.19.0", "pid": os.getpid()})
    for line in iter(lambda: sys.stdin.buffer.readline(wire.MAX_LINE), b""):
        message = wire.decode(line, wire.TO_WORKER)
        if message["type"] == "turn":
            threading.Thread(target=run, args=(message,), daemon=True).start()
        elif message["type"] == "interrupt":
            STOPPED.add(message["id"])
        else:
            break
    os._exit(0)


if __name__ == "__main__":
    main()
