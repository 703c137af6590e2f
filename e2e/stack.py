"""The real processes of the e2e suite: hermes-api and Open WebUI, each a child process on
a loopback port, started with a log file and stopped by PID (its own process group).

Installed by ``e2e/setup.sh`` under ``$HERMES_E2E_CACHE`` (default
``~/.cache/hermes-api-e2e``). Open WebUI 0.12.4 runs headless and offline with the
environment ``open_webui_env`` gives it (its settings: Open WebUI's
``backend/open_webui/env.py`` and ``config.py``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import yaml

from hermes_api.demo import free_port

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("HERMES_E2E_ARTIFACTS", ROOT / "e2e" / "artifacts"))
CACHE = Path(os.environ.get("HERMES_E2E_CACHE", Path.home() / ".cache" / "hermes-api-e2e"))


def versions() -> dict[str, str]:
    """The pinned client versions, from ``e2e/versions.sh``."""
    out = {}
    for line in (ROOT / "e2e" / "versions.sh").read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            out[name.strip()] = value.strip().strip('"')
    return out


OPEN_WEBUI_VERSION = versions()["OPEN_WEBUI_VERSION"]
SDK_VERSIONS = versions()["OPENAI_SDK_VERSIONS"].split()
OPEN_WEBUI_BIN = CACHE / f"open-webui-{OPEN_WEBUI_VERSION}" / "bin" / "open-webui"


def sdk_python(version: str) -> Path:
    """The interpreter of the venv that holds ``openai==version`` and nothing else."""
    return CACHE / f"openai-{version}" / "bin" / "python"


def record_figure(name: str, value: Any) -> None:
    """Add one measured figure to ``artifacts/figures.json`` (read by the report)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / "figures.json"
    figures = json.loads(path.read_text()) if path.exists() else {}
    figures[name] = value
    path.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    print(f"\nfigure: {name} = {value}")


class Service:
    """A child process with a health URL. ``start()`` waits until it answers (or fails
    with the log's tail); ``stop()`` sends SIGTERM to its process group, then SIGKILL."""

    def __init__(self, name: str, command: list[str], env: Mapping[str, str], health: str, log: Path) -> None:
        self.name, self.command, self.env, self.health, self.log = name, command, dict(env), health, log
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None

    def start(self, timeout: float = 120.0) -> Service:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.tail()}")
            try:
                if httpx.get(self.health, timeout=2).status_code == 200:
                    self.startup_seconds = time.monotonic() - started
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer {self.health} in {timeout} s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def write_home(root: Path, upstream: str, profiles: Mapping[str, str], max_tokens: int | None = None) -> Path:
    """A Hermes home with one profile per ``name -> upstream model id``; each profile's
    SOUL.md is ``You are <NAME>-PERSONA.``, its provider the keyless ``upstream``;
    ``max_tokens`` is the profile's default answer limit."""
    for name, model in profiles.items():
        home = root if name == "default" else root / "profiles" / name
        (home / "memories").mkdir(parents=True, exist_ok=True)
        model_config: dict[str, Any] = {"default": model, "provider": "custom", "base_url": upstream}
        if max_tokens:
            model_config["max_tokens"] = max_tokens
        config = {"model": model_config}
        (home / "config.yaml").write_text(yaml.safe_dump(config))
        (home / "SOUL.md").write_text(f"You are {name.upper()}-PERSONA.")
    return root


SCRIPTED_UPSTREAM = ROOT / "tests" / "scriptedupstream.py"


class ScriptedUpstream:
    """``tests/scriptedupstream.py`` in its own process: a provider that answers the
    ``[[tool:NAME {json}]]`` marker of the last user message with that tool call, then,
    once the tool's result comes back, ``done: <the result>`` (what the Hermes agent needs
    to run a real tool; a 135M model cannot drive one). ``chats()``: every chat request
    it got, in order. Stopped by closing its stdin, then by PID."""

    def __init__(self, record: Path) -> None:
        self.record = record
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> ScriptedUpstream:
        self.process = subprocess.Popen(
            [sys.executable, str(SCRIPTED_UPSTREAM), str(self.record)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.url = f"http://127.0.0.1:{json.loads(self.process.stdout.readline())['port']}/v1"
        return self

    def chats(self) -> list[dict[str, Any]]:
        """The chat-completions request bodies so far, oldest first."""
        if not self.record.exists():
            return []
        lines = [json.loads(line) for line in self.record.read_text().splitlines() if line]
        return [r["body"] for r in lines if r["method"] == "POST" and r["path"].endswith("/chat/completions")]

    def __exit__(self, *exc: object) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        assert process.stdin is not None and process.stdout is not None
        process.stdin.close()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


def write_agent_home(root: Path, upstream: str, name: str) -> Path:
    """A Hermes home whose profile ``name`` is the agent's: its provider the keyless
    scripted ``upstream``, with the two settings that spare Hermes its slow probes of a
    new worker's first turn (``model.context_length``, ``agent.environment_probe``)."""
    home = root / "profiles" / name
    (home / "memories").mkdir(parents=True, exist_ok=True)
    model = {"default": "scripted-model", "provider": "custom", "base_url": upstream, "context_length": 65536}
    (home / "config.yaml").write_text(yaml.safe_dump({"model": model, "agent": {"environment_probe": False}}))
    (home / "SOUL.md").write_text(f"You are {name.upper()}-PERSONA.")
    return root


def hermes_api(workdir: Path, config: Mapping[str, Any], env: Mapping[str, str]) -> Service:
    """``hermes-api serve`` on a free port with ``config`` (a hermes-api.yaml mapping)."""
    port = free_port()
    path = workdir / "hermes-api.yaml"
    path.write_text(yaml.safe_dump({**config, "host": "127.0.0.1", "port": port, "state_dir": str(workdir / "state")}))
    command = [sys.executable, "-m", "hermes_api", "serve", "--config", str(path)]
    service = Service(
        "hermes-api", command, {**os.environ, **env}, f"http://127.0.0.1:{port}/health", workdir / "hermes-api.log"
    )
    service.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    return service


def open_webui_env(data_dir: Path, base_url: str, key: str, **extra: str) -> dict[str, str]:
    """The recipe's offline environment for one connection to ``base_url`` with ``key``;
    ``extra`` adds or overrides variables (e.g. ``OPENAI_API_CONFIGS``)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(data_dir),
        "DATA_DIR": str(data_dir),
        "WEBUI_SECRET_KEY": "e2e-secret-key-0123456789abcdef0123456789",
        "WEBUI_AUTH": "false",
        "USE_SLIM_DOCKER": "true",
        "ENABLE_OLLAMA_API": "false",
        "ENABLE_OPENAI_API": "true",
        "OPENAI_API_BASE_URL": base_url,
        "OPENAI_API_BASE_URLS": base_url,
        "OPENAI_API_KEY": key,
        "OPENAI_API_KEYS": key,
        "OFFLINE_MODE": "true",
        "HF_HUB_OFFLINE": "1",
        "BYPASS_EMBEDDING_AND_RETRIEVAL": "true",
        "RAG_EMBEDDING_ENGINE": "openai",
        "ENABLE_PERSISTENT_CONFIG": "false",
        "ENABLE_VERSION_UPDATE_CHECK": "false",
        "ENABLE_TITLE_GENERATION": "false",
        "ENABLE_TAGS_GENERATION": "false",
        "ENABLE_FOLLOW_UP_GENERATION": "false",
        "ENABLE_AUTOCOMPLETE_GENERATION": "false",
        "ENABLE_FORWARD_USER_INFO_HEADERS": "true",
        "ANONYMIZED_TELEMETRY": "false",
        "SCARF_NO_ANALYTICS": "true",
        "DO_NOT_TRACK": "true",
    }
    return {**env, **extra}


def open_webui(workdir: Path, base_url: str, key: str, **extra: str) -> Service:
    """Open WebUI on a free port, a fresh DATA_DIR under ``workdir``."""
    port = free_port()
    data_dir = workdir / "open-webui-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    command = [str(OPEN_WEBUI_BIN), "serve", "--host", "127.0.0.1", "--port", str(port)]
    env = open_webui_env(data_dir, base_url, key, **extra)
    service = Service("open-webui", command, env, f"http://127.0.0.1:{port}/health", workdir / "open-webui.log")
    service.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    return service


class OpenWebUIClient:
    """Open WebUI's own HTTP API, signed in as the WEBUI_AUTH=false admin."""

    def __init__(self, url: str) -> None:
        self.url = url
        signin = httpx.post(f"{url}/api/v1/auths/signin", json={"email": "", "password": ""}, timeout=30)
        signin.raise_for_status()
        self.user = signin.json()
        self.http = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {self.user['token']}"}, timeout=httpx.Timeout(300.0)
        )

    def model_ids(self) -> list[str]:
        r = self.http.get("/api/models")
        r.raise_for_status()
        return sorted(m["id"] for m in r.json()["data"])

    def chat(self, model: str, text: str, **extra: Any) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": text}], "stream": False, **extra}
        return self.http.post("/api/chat/completions", json=body)

    def connections(self) -> dict[str, Any]:
        r = self.http.get("/openai/config")
        r.raise_for_status()
        return r.json()

    def set_connections(self, config: dict[str, Any]) -> None:
        """``POST /openai/config/update``: what Admin Settings → Connections saves."""
        r = self.http.post("/openai/config/update", json=config)
        r.raise_for_status()

    def close(self) -> None:
        self.http.close()
