"""The worker's ``delegate_to_profile`` tool on its own: what it sends, what the agent gets
back for each answer, and that a timeout or the turn's interrupt closes the connection
(which is what stops the delegated turn on the server)."""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from hermes_api.agent import delegate_tool

from .conftest import free_port

if importlib.util.find_spec("tools") is None:
    pytest.skip("the tool runs inside hermes-agent: pip install -e '.[agent]'", allow_module_level=True)


class Peer:
    """A stand-in for hermes-api on loopback: answers ``status`` and ``body``, or holds
    the request (``hold``) until the client closes its connection."""

    def __init__(self) -> None:
        self.status, self.body, self.hold = 200, {}, False
        self.seen: list[dict[str, Any]] = []
        self.arrived, self.closed = threading.Event(), threading.Event()
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                peer.seen.append({"path": self.path, "headers": dict(self.headers),
                                  "body": json.loads(self.rfile.read(length))})  # fmt: skip
                peer.arrived.set()
                if peer.hold:
                    self.rfile.read(1)  # returns at EOF: the client closed its connection
                    peer.closed.set()
                    return
                data = json.dumps(peer.body).encode()
                self.send_response(peer.status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def grant(self, timeout: float = 30.0) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/chat/completions"
        return {"targets": ["coder", "writer"], "url": url, "credential": "hermes-delegation.c.s",
                "timeout": timeout, "depth": 0}  # fmt: skip


@pytest.fixture
def peer() -> Iterator[Peer]:
    found = Peer()
    yield found
    found.server.shutdown()
    found.server.server_close()


def run(grant: dict[str, Any] | None, **args: Any) -> dict[str, Any]:
    with delegate_tool.granted(grant):
        return json.loads(delegate_tool.handle(args, task_id="t", session_id="s"))


def test_the_answer_of_the_target_is_the_result(peer: Peer) -> None:
    peer.body = {"choices": [{"message": {"role": "assistant", "content": "s[::-1]"}}]}
    result = run(peer.grant(), profile="coder", task="reverse s", context="Python")
    assert result == {"profile": "coder", "answer": "s[::-1]"}
    (sent,) = peer.seen
    assert sent["path"] == "/v1/chat/completions"
    assert sent["headers"]["Authorization"] == "Bearer hermes-delegation.c.s"
    assert sent["headers"]["X-Hermes-Delegate-Depth"] == "1"
    assert sent["body"] == {
        "model": "coder",
        "messages": [{"role": "system", "content": "Context for this task:\nPython"},
                     {"role": "user", "content": "reverse s"}],
        "stream": False,
    }  # fmt: skip


def test_a_refusal_is_a_result_the_agent_can_explain(peer: Peer) -> None:
    peer.status = 403
    peer.body = {"error": {"message": "nope", "type": "invalid_request_error", "param": None,
                           "code": "delegation_not_allowed"}}  # fmt: skip
    result = run(peer.grant(), profile="writer", task="a poem")
    assert result == {"profile": "writer", "status": 403, "code": "delegation_not_allowed", "error": "nope"}
    assert list(result)[:3] == ["profile", "status", "code"]  # the code shows in a short view


def test_no_grant_or_bad_arguments_call_nobody(peer: Peer) -> None:
    assert "not available" in run(None, profile="coder", task="x")["error"]
    assert "'task'" in run(peer.grant(), profile="coder", task="  ")["error"]
    assert "'profile'" in run(peer.grant(), task="x")["error"]
    assert peer.seen == []


def test_an_unreachable_server_is_a_tool_error() -> None:
    grant = {"targets": ["coder"], "url": f"http://127.0.0.1:{free_port()}/v1/chat/completions",
             "credential": "hermes-delegation.c.s", "timeout": 5, "depth": 0}  # fmt: skip
    result = run(grant, profile="coder", task="x")
    assert result["profile"] == "coder" and "could not be reached" in result["error"]
    assert "hermes-delegation" not in json.dumps(result)


def test_the_timeout_closes_the_connection(peer: Peer) -> None:
    peer.hold = True
    result = run(peer.grant(timeout=0.5), profile="coder", task="x")
    assert result["code"] == "delegation_stopped" and "no answer within 0.5 s" in result["error"]
    assert peer.closed.wait(10)


def test_the_turns_interrupt_closes_the_connection(peer: Peer) -> None:
    from tools.interrupt import set_interrupt

    peer.hold = True
    found: list[dict[str, Any]] = []
    worker = threading.Thread(target=lambda: found.append(run(peer.grant(), profile="coder", task="x")))
    worker.start()
    assert peer.arrived.wait(10)
    set_interrupt(True, worker.ident)  # what AIAgent.interrupt does for the thread a tool runs on
    try:
        worker.join(10)
        assert not worker.is_alive()
    finally:
        set_interrupt(False, worker.ident)
    assert found[0]["code"] == "delegation_stopped" and "interrupted" in found[0]["error"]
    assert peer.closed.wait(10)


def test_the_schema_lists_the_targets() -> None:
    schema = delegate_tool.schema(("coder", "writer"))
    assert "Profiles you may ask: coder, writer." in schema["description"]
    assert schema["parameters"]["properties"]["profile"]["enum"] == ["coder", "writer"]
    assert schema["parameters"]["required"] == ["profile", "task"]
