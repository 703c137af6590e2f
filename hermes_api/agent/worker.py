"""An agent worker: the Hermes agent of ONE profile, in a process of its own.

Started by ``agent.process.WorkerProcess`` as ``<python> -I <this file>`` with
``HERMES_HOME`` = the profile's home (and the environment ``agent.environment`` builds),
or started ahead as a spare (``--spare``, ``agent.spare``: the modules of ``PRELOAD``
imported, then the profile's environment, working directory and log from its one
``bind`` line), it imports hermes-agent, says ``ready``, then runs every ``turn`` it is sent in a thread
of its own, exactly as Hermes's API server runs one (hermes-agent 0.19
``gateway/platforms/api_server.py``: ``_handle_chat_completions`` for the messages,
``_create_agent`` and ``_run_agent`` for the turn): a new ``AIAgent`` per turn, built by
Hermes's own helpers from the profile's config; the client's system messages as the
ephemeral system prompt; the last user message as the input and the earlier ones as the
history, or the history from the profile's ``state.db`` for an explicit session.

Only the standard library and hermes-agent are imported here: the interpreter may be
one with hermes-agent and without hermes-api (``agent.python``). The messages are
``wire.py``'s, loaded by path. Hermes prints to stdout, so the protocol keeps the
original fd 1 and fd 1 then points at stderr (a log file the parent opened).
"""

from __future__ import annotations

import gc
import hashlib
import importlib
import importlib.util
import json
import os
import re
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, BinaryIO


def _load(name: str) -> Any:
    """A module of this package, by path (hermes-api itself may not be importable here)."""
    spec = importlib.util.spec_from_file_location(f"_hermes_api_{name}", Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wire = _load("wire")
delegate_tool = _load("delegate_tool")

SYSTEM_ROLES = ("system", "developer")
# What a spare imports before it has a profile: the modules a worker of hermes-agent 0.19
# has loaded after its first turn, except Hermes's own (its modules read HERMES_HOME and
# load the profile's .env at import): the third-party packages, with the parts Hermes
# loads lazily (``openai.resources``: its ``_OpenAIProxy``; ``aiohttp.web``), and the
# standard library's bigger ones. A name missing in this interpreter is skipped.
PRELOAD = (
    "yaml", "requests", "urllib3", "certifi", "charset_normalizer", "idna", "aiohttp", "aiohttp.web", "httpx",
    "httpcore", "anyio", "h11", "rich", "rich.console", "rich.markdown", "pygments", "pydantic", "pydantic_core",
    "jiter", "openai", "openai.resources", "openai.types.chat", "openai.lib.streaming.chat", "dotenv", "dateutil",
    "croniter", "pytz", "click", "distro", "websockets", "websockets.asyncio.client",
    "asyncio", "concurrent.futures", "sqlite3", "ssl", "email.message", "email.parser", "http.client",
    "http.server", "subprocess", "uuid", "zoneinfo", "tarfile", "zipfile", "difflib", "csv", "decimal",
    "fractions", "argparse", "mimetypes", "netrc", "webbrowser", "ctypes", "unittest.mock", "ipaddress",
    "logging.handlers", "faulthandler",
)  # fmt: skip
_HTTP_STATUS = re.compile(r"\bHTTP (\d{3})\b")


class Channel:
    """The protocol's output: one line per message, written under a lock (turn threads
    write concurrently). A parent that has gone away ends the worker."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        line = wire.encode(message)
        try:
            with self._lock:
                self._out.write(line)
                self._out.flush()
        except (BrokenPipeError, OSError):
            os._exit(1)


def session_id(namespace: str, explicit: str | None, system_prompt: str | None, first_user: Any) -> str:
    """The ``state.db`` session of a turn: the client's ``X-Hermes-Session-Id`` or, like
    Hermes's ``_derive_chat_session_id``, the system prompt and first user message, in
    both cases under the caller's ``namespace`` so that two API keys never share one."""
    seed = f"id\0{explicit}" if explicit else f"derived\0{system_prompt or ''}\n{first_user}"
    return "api-" + hashlib.sha256(f"{namespace}\0{seed}".encode("utf-8", "replace")).hexdigest()[:24]


class Worker:
    """The turns of this process: one thread each, their agents kept for ``interrupt``."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self._agents: dict[str, Any] = {}
        self._interrupted: dict[str, str] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self._db: Any = None
        self._db_lock = threading.Lock()

    # -- the loop -------------------------------------------------------------------

    def serve(self, commands: BinaryIO) -> None:
        """Read commands until ``shutdown`` or the parent closes our stdin."""
        for line in iter(lambda: commands.readline(wire.MAX_LINE), b""):
            message = wire.decode(line, wire.TO_WORKER)
            kind = message["type"]
            if kind == "turn":
                thread = threading.Thread(target=self.run, args=(message,), name=f"turn-{message['id']}", daemon=True)
                with self._lock:
                    self._threads[message["id"]] = thread
                thread.start()
            elif kind == "interrupt":
                self.interrupt(message["id"], message.get("reason") or "interrupted")
            else:
                break
        self.stop()

    def interrupt(self, turn: str, reason: str) -> None:
        with self._lock:
            agent = self._agents.get(turn)
            if agent is None:
                self._interrupted[turn] = reason  # not built yet: interrupted once it is
        if agent is not None:
            agent.interrupt(reason)

    def stop(self, grace: float = 5.0) -> None:
        """Interrupt every turn, give them ``grace`` seconds to end, exit."""
        with self._lock:
            turns = list(self._threads)
        for turn in turns:
            self.interrupt(turn, "hermes-api is stopping")
        for thread in list(self._threads.values()):
            thread.join(grace)
        os._exit(0)

    # -- one turn -------------------------------------------------------------------

    def run(self, message: dict[str, Any]) -> None:
        turn = message["id"]
        try:
            self.channel.send(self.execute(message))
        except Exception as exc:  # a bug here or in Hermes: the parent logs it, the turn fails
            traceback.print_exc()  # to the worker's log (stderr)
            self.channel.send(_failure(turn, "internal", f"{type(exc).__name__}: {_redact(str(exc))}"))
        finally:
            with self._lock:
                self._agents.pop(turn, None)
                self._interrupted.pop(turn, None)
                self._threads.pop(turn, None)

    def execute(self, message: dict[str, Any]) -> dict[str, Any]:
        """Run the turn ``message`` describes; the ``result`` message."""
        from gateway.platforms import api_server

        turn = message["id"]
        system_prompt, conversation = None, []
        for idx, msg in enumerate(message["messages"]):
            role, raw = msg.get("role", ""), msg.get("content", "")
            if role in SYSTEM_ROLES:
                text = api_server._normalize_chat_content(raw)
                system_prompt = text if system_prompt is None else system_prompt + "\n" + text
            elif role in ("user", "assistant"):
                try:
                    content = api_server._normalize_multimodal_content(raw)
                except ValueError as exc:
                    code, _, text = str(exc).partition(":")
                    return _failure(turn, "input", text or code, code=code, param=f"messages[{idx}].content")
                conversation.append({"role": role, "content": content})
        user_message = conversation[-1]["content"] if conversation else ""
        history = conversation[:-1]
        if not api_server._content_has_visible_payload(user_message):
            return _failure(turn, "input", "No user message found in messages.", param="messages")
        explicit = message["session"].get("id")
        first_user = next((m["content"] for m in conversation if m["role"] == "user"), "")
        sid = session_id(message["session"]["namespace"], explicit, system_prompt, first_user)
        if explicit:
            history = self.session_db().get_messages_as_conversation(sid)
        return self.converse(message, user_message, history, system_prompt, sid)

    def converse(
        self, message: dict[str, Any], user_message: Any, history: list[dict[str, Any]], system: str | None, sid: str
    ) -> dict[str, Any]:
        """``_run_agent._run`` of Hermes's API server, with our callbacks."""
        from gateway.session_context import clear_session_vars, set_session_vars

        turn = message["id"]
        tokens = set_session_vars(
            platform="api_server", chat_id=sid, session_key=sid, session_id=sid, async_delivery=False
        )
        agent = None
        try:
            agent = self.create_agent(message, system, sid)
            with self._lock:
                self._agents[turn] = agent
                reason = self._interrupted.pop(turn, None)
            if reason is not None:
                agent.interrupt(reason)
            with delegate_tool.granted(message.get("delegation")):
                result = agent.run_conversation(user_message=user_message, conversation_history=history, task_id=sid)
            return _outcome(turn, result, _usage(agent), getattr(agent, "session_id", None) or sid)
        finally:
            clear_session_vars(tokens)
            if agent is not None:
                agent.release_clients()

    def create_agent(self, message: dict[str, Any], system: str | None, sid: str) -> Any:
        """``APIServerAdapter._create_agent``: model, provider, key, iterations, fallback and
        reasoning from the profile's own config through Hermes's helpers; the toolsets
        hermes-api allows this profile (never the profile's own api_server list), and
        the delegation tool when the turn has a grant (``delegate_tool``)."""
        from agent.display import build_tool_preview, get_tool_emoji
        from gateway.run import (
            GatewayRunner,
            _current_max_iterations,
            _resolve_gateway_model,
            _resolve_runtime_agent_kwargs,
        )
        from run_agent import AIAgent

        turn, send = message["id"], self.channel.send
        stream = bool(message.get("stream"))
        started: set[str] = set()

        def on_delta(text: str | None) -> None:
            if text and stream:  # None closes Hermes's CLI display box: not text
                send({"type": "delta", "id": turn, "text": text})

        def on_tool_start(call_id: str, name: str, args: Any) -> None:
            if not call_id or name.startswith("_"):  # Hermes's server shows neither
                return
            started.add(call_id)
            send(
                {
                    "type": "tool", "id": turn, "call_id": call_id, "name": name, "status": "running",
                    "arguments": _json(args), "emoji": get_tool_emoji(name),
                    "label": build_tool_preview(name, args) or name,
                }
            )  # fmt: skip

        def on_tool_complete(call_id: str, name: str, args: Any, output: Any) -> None:
            if call_id not in started:
                return
            started.discard(call_id)
            send(
                {
                    "type": "tool", "id": turn, "call_id": call_id, "name": name, "status": "completed",
                    "arguments": _json(args), "output": wire.clip(str(output)),
                }
            )  # fmt: skip

        toolsets = list(message["toolsets"])
        if message.get("delegation"):
            toolsets.append(delegate_tool.enable(message["delegation"]))
        runtime = _resolve_runtime_agent_kwargs()
        model = runtime.pop("model", None) or _resolve_gateway_model()
        return AIAgent(
            model=model,
            **runtime,
            max_iterations=_current_max_iterations(),
            quiet_mode=True,
            verbose_logging=False,
            ephemeral_system_prompt=system or None,
            enabled_toolsets=toolsets,
            session_id=sid,
            platform="api_server",
            stream_delta_callback=on_delta,
            tool_start_callback=on_tool_start,
            tool_complete_callback=on_tool_complete,
            session_db=self.session_db(),
            fallback_model=GatewayRunner._load_fallback_model(),
            reasoning_config=GatewayRunner._load_reasoning_config(),
            gateway_session_key=sid,
        )

    def session_db(self) -> Any:
        """One ``SessionDB`` (``<HERMES_HOME>/state.db``) per process, like the API server's.
        Made under a lock: the first turns of a new worker ask for it at once, from their
        threads, and two ``SessionDB``s creating the schema together fail ("vtable
        constructor failed: messages_fts_trigram"). Hermes's server makes it on its one
        event-loop thread."""
        with self._db_lock:
            if self._db is None:
                from hermes_constants import get_hermes_home
                from hermes_state import SessionDB

                self._db = SessionDB(db_path=get_hermes_home() / "state.db")
            return self._db


def _usage(agent: Any) -> dict[str, int] | None:
    """The turn's token counts, summed by Hermes over its provider calls; None when no
    call reported any (llama.cpp's streams never do: Hermes counts only the calls with
    ``usage``, in ``session_api_calls``), since unknown is not zero."""
    if not getattr(agent, "session_api_calls", 0):
        return None
    return {
        "prompt_tokens": getattr(agent, "session_prompt_tokens", 0) or 0,
        "completion_tokens": getattr(agent, "session_completion_tokens", 0) or 0,
        "total_tokens": getattr(agent, "session_total_tokens", 0) or 0,
    }


def _json(value: Any) -> str:
    try:
        return wire.clip(json.dumps(value, ensure_ascii=False))
    except (TypeError, ValueError):
        return wire.clip(str(value))


def _redact(text: str) -> str:
    """Hermes's own redaction of provider error texts (keys, tokens)."""
    from gateway.platforms.api_server import _redact_api_error_text

    return _redact_api_error_text(text, limit=500)


def _failure(turn: str, kind: str, message: str, **detail: Any) -> dict[str, Any]:
    error = {"kind": kind, "message": message, **detail}
    return {"type": "result", "id": turn, "ok": False, "text": "", "usage": None, "interrupted": False, "error": error}


def _outcome(turn: str, result: dict[str, Any], usage: dict[str, int] | None, sid: str) -> dict[str, Any]:
    """The ``result`` message for ``run_conversation``'s dict, read as Hermes's API server
    reads it (``_handle_chat_completions``: failed, partial, completed, error)."""
    text = result.get("final_response") or ""
    error = _redact(result["error"]) if result.get("error") else None
    interrupted = bool(result.get("interrupted"))
    failed = bool(result.get("failed")) or (not result.get("completed", True) and bool(error) and not interrupted)
    partial = bool(result.get("partial"))
    reason = "length" if partial and error and "truncat" in error.lower() else "stop"
    message = {
        "type": "result", "id": turn, "ok": not failed, "text": "" if failed else text, "finish_reason": reason,
        "usage": usage, "session_id": sid, "interrupted": interrupted, "error": None,
    }  # fmt: skip
    if failed:
        status = _HTTP_STATUS.search(error or "")
        message["error"] = {
            "kind": "provider",
            "message": error or "The agent run did not produce a response.",
            "status": int(status.group(1)) if status else None,
            "failure_reason": result.get("failure_reason"),
        }
    return message


def preload(names: tuple[str, ...]) -> None:
    """Import ``names`` if they are installed (a module missing here is Hermes's to
    report, or not needed)."""
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001, S112  (ImportError, or a library failing on this platform)
            continue


def wait_for_binding(channel: Channel, commands: BinaryIO) -> None:
    """A spare's life before its profile: the third-party modules imported, ``spare``
    said, then the one ``bind`` line applied: ``os.environ`` becomes exactly the
    profile's worker environment, the working directory and the log its own. Anything
    else on stdin (or none) ends the process: a spare is bound once, or never."""
    preload(PRELOAD)
    gc.freeze()  # what it imported stays: later collections need not look at it again
    channel.send({"type": "spare", "protocol": wire.PROTOCOL, "pid": os.getpid()})
    try:
        message = wire.decode(commands.readline(wire.MAX_LINE), wire.TO_SPARE)
        env, cwd, log = dict(message["env"]), str(message["cwd"]), str(message["log"])
    except (ValueError, KeyError, TypeError):
        os._exit(1)
    try:
        os.chdir(cwd)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError as exc:
        channel.send({"type": "fatal", "message": f"cannot be bound: {exc.strerror}: {exc.filename}"})
        os._exit(1)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    added = startup_additions()
    os.environ.clear()
    os.environ.update(env)
    os.environ.update((name, value) for name, value in added.items() if name not in env)


def startup_additions() -> dict[str, str]:
    """What the interpreter added to its environment as it started (PEP 538's
    ``LC_CTYPE=C.UTF-8`` when the locale is C): ``os.environ`` less what the process was
    started with (``/proc/self/environ``). The profile's environment has the same locale
    variables as a spare's, so a worker started with it would have had them too."""
    try:
        started = Path("/proc/self/environ").read_bytes().split(b"\0")
    except OSError:
        return {}
    names = {os.fsdecode(item.partition(b"=")[0]) for item in started if item}
    return {name: value for name, value in os.environ.items() if name not in names}


def reread_import_settings() -> None:
    """What ``openai`` read from the environment when a spare imported it, read again
    now that the environment is the profile's (``openai/__init__.py``: the module
    client's settings; ``_utils/_logs.py``: ``OPENAI_LOG``), as if imported now."""
    openai = sys.modules.get("openai")
    if openai is None:
        return
    for attribute, name in (
        ("api_type", "OPENAI_API_TYPE"),
        ("api_version", "OPENAI_API_VERSION"),
        ("azure_endpoint", "AZURE_OPENAI_ENDPOINT"),
        ("azure_ad_token", "AZURE_OPENAI_AD_TOKEN"),
    ):
        setattr(openai, attribute, os.environ.get(name))
    openai._setup_logging()


def main() -> None:
    """Take fd 1 for the protocol, point fd 1 at stderr, (a spare: wait for the
    profile, ``wait_for_binding``), import Hermes, serve."""
    protocol = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    channel = Channel(protocol)
    spare = sys.argv[1:] == ["--spare"]
    if spare:
        wait_for_binding(channel, sys.stdin.buffer)
    try:
        import importlib.metadata

        version = importlib.metadata.version("hermes-agent")
        import gateway.platforms.api_server  # noqa: F401  (the helpers each turn uses)
        import gateway.run  # noqa: F401  (bridges config.yaml -> TERMINAL_* as the gateway does)
        import run_agent  # noqa: F401  (loads <HERMES_HOME>/.env)
    except Exception as exc:
        channel.send({"type": "fatal", "message": f"cannot import hermes-agent: {type(exc).__name__}: {exc}"})
        sys.exit(1)
    if spare:
        reread_import_settings()
    channel.send({"type": "ready", "protocol": wire.PROTOCOL, "hermes_version": version, "pid": os.getpid()})
    Worker(channel).serve(sys.stdin.buffer)


if __name__ == "__main__":
    main()
