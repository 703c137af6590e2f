"""Factories for Hermes homes, settings and apps; respx mocks only the upstream host.

``home`` builds a Hermes home on disk; ``make_app`` serves it with an injected respx
transport; ``live`` runs an app under uvicorn on a loopback port (the OpenAI SDK 3.x
speaks httpx2, so it cannot use Starlette's TestClient transport).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import respx
import uvicorn
import yaml
from hypothesis.configuration import set_hypothesis_home_dir
from starlette.applications import Starlette
from starlette.testclient import TestClient

from hermes_api.app import create_app
from hermes_api.protocol import bounded_protocol
from hermes_api.settings import Settings

UPSTREAM = "http://upstream.test/v1"
KEEP_ALIVE = Settings.__dataclass_fields__["keep_alive_timeout"].default
# Downloads and caches the tests keep between runs, outside the work tree.
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hermes-api-tests"


def pytest_configure(config: pytest.Config) -> None:
    # Hypothesis (schemathesis's engine, tests/test_fuzz.py) writes its caches to
    # ./.hypothesis from collection on, unless told otherwise: keep them out of the tree.
    set_hypothesis_home_dir(CACHE / "hypothesis")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that starts ``hermes-api serve`` as a process (``serve_process``) is
    ``slow``: a few seconds each, so not part of the everyday loop."""
    for item in items:
        if "serve_process" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


class HermesHome:
    """A Hermes home under a temporary directory; ``add`` writes one profile."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def dir(self, name: str) -> Path:
        return self.root if name == "default" else self.root / "profiles" / name

    def add(
        self,
        name: str,
        *,
        model: Any = None,
        soul: str | None = None,
        memory: list[str] | None = None,
        user: list[str] | None = None,
        env: dict[str, str] | None = None,
        config: dict[str, Any] | None = None,
    ) -> Path:
        d = self.dir(name)
        (d / "memories").mkdir(parents=True, exist_ok=True)
        if model is None:
            model = {
                "default": f"model-{name}",
                "provider": "custom",
                "base_url": UPSTREAM,
                "key_env": "UPSTREAM_KEY",
            }
        cfg = {"model": model, **(config or {})}
        (d / "config.yaml").write_text(yaml.safe_dump(cfg))
        env = {"UPSTREAM_KEY": f"sk-{name}-secret"} if env is None else env
        (d / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        (d / "SOUL.md").write_text(f"You are {name.upper()}-PERSONA." if soul is None else soul)
        if memory is not None:
            (d / "memories" / "MEMORY.md").write_text("\n§\n".join(memory))
        if user is not None:
            (d / "memories" / "USER.md").write_text("\n§\n".join(user))
        return d


@pytest.fixture
def home(tmp_path: Path) -> HermesHome:
    """A home with profiles default, alpha, beta and gamma, each with its own persona,
    model (model-<name>) and upstream secret (sk-<name>-secret)."""
    h = HermesHome(tmp_path / "hermes")
    for name in ("default", "alpha", "beta", "gamma"):
        h.add(name)
    return h


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture
def make_settings(home: HermesHome, tmp_path: Path) -> Callable[..., Settings]:
    def make(environ: dict[str, str] | None = None, **raw: Any) -> Settings:
        raw.setdefault("hermes_home", str(home.root))
        raw.setdefault("expose", ["default", "alpha", "beta", "gamma"])
        raw.setdefault("state_dir", str(tmp_path / "state"))
        config = tmp_path / "hermes-api.yaml"
        config.write_text(yaml.safe_dump(raw))
        return Settings.load(config, environ or {})

    return make


@pytest.fixture
def upstream() -> Iterator[respx.MockRouter]:
    """The mocked provider at http://upstream.test/v1. Only the app's injected transport
    uses it: nothing is patched globally, so real clients in a test stay real."""
    yield respx.MockRouter(base_url=UPSTREAM, assert_all_called=False)


def completion(content: str = "Hello!", model: str = "upstream-model", **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-up1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
        **extra,
    }


def sse_body(*events: Any, done: bool = True) -> bytes:
    out = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events)
    return out + (b"data: [DONE]\n\n" if done else b"")


def chunks(text: str = "Hello there", model: str = "upstream-model", usage: bool = False) -> list[dict[str, Any]]:
    base = {"id": "chatcmpl-up2", "object": "chat.completion.chunk", "created": 1700000001, "model": model}
    events = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    for word in text.split(" "):
        events.append({**base, "choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}]})
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if usage:
        events.append({**base, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}})
    return events


def tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def tool_completion(*calls: tuple[str, str, str], content: str | None = None) -> dict[str, Any]:
    """A ``chat.completion`` whose message calls ``calls`` ((call id, name, arguments)
    each), with ``finish_reason: tool_calls``."""
    answer = completion()
    answer["choices"][0]["message"] = {"role": "assistant", "content": content,
                                       "tool_calls": [tool_call(*call) for call in calls]}  # fmt: skip
    answer["choices"][0]["finish_reason"] = "tool_calls"
    return answer


def tool_chunks(*calls: tuple[str, str, str], size: int = 3, text: str = "", interleave: bool = False) -> list[dict]:
    """Stream chunks calling ``calls``: ``text`` first (if any), then each call's id and
    name in its first fragment and its arguments in pieces of ``size`` characters; with
    ``interleave`` the calls' pieces alternate, as some providers send them."""
    base = {"id": "chatcmpl-up3", "object": "chat.completion.chunk", "created": 1700000002, "model": "upstream-model"}

    def chunk(delta: dict, finish: str | None = None) -> dict:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    out = [chunk({"role": "assistant", "content": text or None})]
    streams = []
    for index, (call_id, name, arguments) in enumerate(calls):
        first = {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
        pieces = [{"index": index, "function": {"arguments": arguments[i : i + size]}}
                  for i in range(0, len(arguments), size)]  # fmt: skip
        streams.append([first, *pieces])
    if interleave:
        fragments = [f for group in itertools.zip_longest(*streams) for f in group if f is not None]
    else:
        fragments = [f for group in streams for f in group]
    out += [chunk({"tool_calls": [fragment]}) for fragment in fragments]
    out.append(chunk({}, "tool_calls"))
    return out


@pytest.fixture
def make_app(make_settings: Callable[..., Settings], upstream: respx.MockRouter) -> Callable[..., Starlette]:
    def make(environ: dict[str, str] | None = None, **raw: Any) -> Starlette:
        settings = make_settings(environ, **raw)
        return create_app(settings, environ=environ or {}, transport=httpx.MockTransport(upstream.async_handler))

    return make


@pytest.fixture
def client(make_app: Callable[..., Starlette]) -> Iterator[TestClient]:
    """An open server (no keys) on the four-profile home."""
    with TestClient(make_app(), raise_server_exceptions=False) as c:
        yield c


class LiveServer:
    """An ASGI app under uvicorn in a thread, on 127.0.0.1 and a free port, with the
    HTTP protocol ``hermes-api serve`` uses."""

    def __init__(self, app: Any) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            http=bounded_protocol(64 * 1024),  # as hermes-api serve runs, with its default bounds
            timeout_keep_alive=KEEP_ALIVE,  # as hermes-api serve runs: longer than any client pool here
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def live() -> Iterator[Callable[[Any], LiveServer]]:
    servers: list[LiveServer] = []

    def start(app: Any) -> LiveServer:
        server = LiveServer(app).__enter__()
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):
        server.__exit__()


FAKE_UPSTREAM = Path(__file__).resolve().parent / "fakeupstream.py"


class FakeUpstream:
    """``tests/fakeupstream.py`` in its own process: a provider that misbehaves on
    purpose. ``base_url(behaviour)`` is a profile's ``model.base_url``."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(FAKE_UPSTREAM)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            ports = json.loads(self.process.stdout.readline())
        except ValueError:
            self.stop()
            raise RuntimeError("the fake upstream did not start") from None
        self.port, self.refused, self.blackhole = ports["port"], ports["refused"], ports["blackhole"]

    def base_url(self, behaviour: str) -> str:
        if behaviour in ("refused", "blackhole"):
            return f"http://127.0.0.1:{getattr(self, behaviour)}/v1"
        return f"http://127.0.0.1:{self.port}/{behaviour}/v1"

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"http://127.0.0.1:{self.port}/stats", timeout=5).json()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()


@pytest.fixture(scope="module")
def fake_upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream()
    try:
        yield fake
    finally:
        fake.stop()


def wait_until(condition: Callable[[], Any], what: str, seconds: float = 10) -> Any:
    """``condition()``'s first truthy value, looked at every 20 ms; fails the test,
    naming ``what``, when none comes within ``seconds``."""
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {seconds} s")
        time.sleep(0.02)
    return value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """``hermes-api serve`` in a subprocess on a free loopback port; its log (stdout
    and stderr) goes to ``log_path``; ``args`` are more command-line arguments
    (``--workers 2``). It runs in a process group of its own, which ``kill()`` ends
    (its worker processes too): by that group's id, never by name."""

    def __init__(
        self,
        config: Path,
        log_path: Path,
        environ: dict[str, str] | None = None,
        *,
        uvicorn_factory: bool = False,
        args: tuple[str, ...] = (),
    ) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.logs_hermes_api = not uvicorn_factory  # plain uvicorn leaves our logger unconfigured
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(log_path.parent), **(environ or {})}
        command = [sys.executable, "-m", "hermes_api", "serve", "--config", str(config), "--port", str(self.port)]
        command += args
        if uvicorn_factory:  # the README's other way to run it
            env["HERMES_API_CONFIG"] = str(config)
            command = [sys.executable, "-m", "uvicorn", "--factory", "hermes_api.app:create_app_from_env"]
            command += ["--port", str(self.port)]
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"hermes-api serve did not start:\n{self.log()}")
            time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the server and whatever else is left in its process group."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


@pytest.fixture
def serve_process() -> Iterator[Callable[..., ServeProcess]]:
    started: list[ServeProcess] = []

    def start(config: Path, log_path: Path, environ: dict[str, str] | None = None, **kw: Any) -> ServeProcess:
        server = ServeProcess(config, log_path, environ, **kw)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


def raw_http(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw request bytes (``Connection: close`` included by the caller) and read
    the answer to the end: for what an HTTP client would refuse or rewrite."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        answer = b""
        while data := s.recv(65536):
            answer += data
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines)}
    return int(status_line.split(" ")[1]), headers, body


class BrokenStream(httpx.AsyncByteStream):
    """A provider body that sends ``first`` and then fails the way a reset connection does."""

    def __init__(self, first: bytes) -> None:
        self.first = first

    async def __aiter__(self):
        yield self.first
        raise httpx.ReadError("connection reset")


def integrity(db: Path) -> str:
    """SQLite's ``PRAGMA integrity_check`` of the database file ``db`` ("ok" when sound)."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


SCRIPTED_UPSTREAM = Path(__file__).resolve().parent / "scriptedupstream.py"


class ScriptedUpstream:
    """``tests/scriptedupstream.py`` in its own process: a provider that answers tool calls
    and text as the last user message's markers say, recording every request."""

    def __init__(self, record: Path) -> None:
        self.record = record
        self.process = subprocess.Popen(
            [sys.executable, str(SCRIPTED_UPSTREAM), str(record)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.port = json.loads(self.process.stdout.readline())["port"]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def script(self, name: str, *calls: tuple[str, dict[str, Any]]) -> str:
        """Script the tool ``calls`` ((tool, arguments) each) under ``name``; the marker
        that makes the upstream answer with them (``[[call:<name>]]``)."""
        path = self.record.with_name(self.record.name.removesuffix(".jsonl") + ".scripts.json")
        found = json.loads(path.read_text()) if path.exists() else {}
        found[name] = [[tool, arguments] for tool, arguments in calls]
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(found))
        temporary.replace(path)  # the upstream never reads half a file
        return f"[[call:{name}]]"

    def requests(self) -> list[dict[str, Any]]:
        """Every chat-completions request so far, oldest first (method, path, auth, body)."""
        if not self.record.exists():
            return []
        lines = [json.loads(line) for line in self.record.read_text().splitlines() if line]
        return [r for r in lines if r["method"] == "POST" and r["path"].endswith("/chat/completions")]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScriptedUpstream]:
    upstream = ScriptedUpstream(tmp_path_factory.mktemp("scripted") / "requests.jsonl")
    try:
        yield upstream
    finally:
        upstream.stop()


def add_agent_profile(home: HermesHome, name: str, upstream: ScriptedUpstream, **kw: Any) -> Path:
    """A profile as ``hermes model`` writes one for a custom endpoint, pointed at
    ``upstream``, with the two settings that spare Hermes its slow first-turn probes
    (``model.context_length``, ``agent.environment_probe: false``)."""
    model = {
        "default": "scripted-model",
        "provider": "custom",
        "base_url": upstream.base_url,
        "api_key": f"sk-{name}-upstream-key",
        "context_length": 65536,
    }
    config = {"agent": {"environment_probe": False}, **kw.pop("config", {})}
    return home.add(name, model=model, config=config, **kw)


def worker_environ(tmp: Path, **extra: str) -> dict[str, str]:
    """What a test's app passes as its environment: what agent workers need (PATH, a
    HOME of the test's own), and ``extra`` (API keys)."""
    home = tmp / "user-home"
    home.mkdir(exist_ok=True)
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), **extra}


AGENTS_SDK = "openai-agents==0.24.0"  # the OpenAI Agents SDK the tests drive hermes-api with


def client_venv(requirement: str) -> Path:
    """The interpreter of a venv holding ``requirement`` (e.g. ``openai-agents==0.24.0``)
    and what it needs, for a client that cannot share the server's environment; made once
    under ``CACHE`` (``~/.cache/hermes-api-tests``), marked done
    only after its install succeeded. Fails the test when it cannot be made (no index)."""
    venv = CACHE / requirement.replace("==", "-")
    python = venv / "bin" / "python"
    if not (venv / ".done").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=120)
        done = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", requirement],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        if done.returncode != 0:
            pytest.fail(f"could not install {requirement} for the test client:\n{done.stderr[-2000:]}")
        (venv / ".done").touch()
    return python


# -- PostgreSQL ----------------------------------------------------------------------------

POSTGRES_REQUIRED = os.environ.get("HERMES_API_POSTGRES") == "required"


def postgres_bin() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl``: on PATH, else Debian's
    ``/usr/lib/postgresql/<version>/bin`` (newest first), else None."""
    import shutil

    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]), reverse=True)
    return versions[0].parent if versions else None


class PostgresCluster:
    """A throwaway PostgreSQL cluster: ``initdb`` in a temporary directory, the server on
    a free loopback port (its socket in that directory too), user ``hermes`` with a
    password. initdb refuses to run as root, so under root the cluster belongs to
    Debian's ``postgres`` user, in a directory of its own outside pytest's (which only
    root may enter). ``stop()`` ends it by its postmaster's PID (``pg_ctl``);
    ``remove()`` deletes the directory."""

    PASSWORD = "pg-secret-0f3a9c"

    def __init__(self) -> None:
        import pwd
        import tempfile

        found = postgres_bin()
        if found is None:
            message = "PostgreSQL's initdb/pg_ctl not found (Debian: apt-get install postgresql)"
            if POSTGRES_REQUIRED:
                pytest.fail(message + " and HERMES_API_POSTGRES=required", pytrace=False)
            pytest.skip(message)
        self.bin = found
        self.root = root = Path(tempfile.mkdtemp(prefix="hermes-api-pg-"))
        self.data = root / "data"
        self.port = free_port()
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres"
            owner = pwd.getpwnam(self.user)
            os.chown(root, owner.pw_uid, owner.pw_gid)
        (root / "pwfile").write_text(self.PASSWORD)
        os.chmod(root / "pwfile", 0o644)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "hermes",
            "--pwfile",
            str(root / "pwfile"),
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        )
        self.start()

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(self.bin / tool), *args], user=self.user, capture_output=True, text=True, timeout=60)
        if check and done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://hermes:{self.PASSWORD}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def remove(self) -> None:
        import shutil

        self.stop("immediate")  # no shutdown checkpoint: the files go anyway
        shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self, name: str) -> str:
        """A new, empty database; its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """One cluster for the session (skipped, or failed under HERMES_API_POSTGRES=required,
    when PostgreSQL is not installed)."""
    cluster = PostgresCluster()
    try:
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def postgres_url(postgres: PostgresCluster, request: pytest.FixtureRequest) -> str:
    """The URL of a fresh database on the session's cluster, for this test alone."""
    import re

    name = "t_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:40] + "_" + os.urandom(4).hex()
    return postgres.create_database(name)
