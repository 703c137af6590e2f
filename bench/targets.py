"""The systems measured side by side, each started pinned to the gateway CPU:

- ``direct``: wrk straight to the fake upstream (nginx): the limit;
- ``floor``: ``passthrough.py``, the minimal passthrough on our stack;
- ``hermes-api``: ``hermes-api serve``, one uvicorn worker, an API key, profiles with
  a persona (``bench`` on the JSON location, ``bench-stream`` on the SSE one,
  ``bench-tools`` and ``bench-tools-stream`` on the function-call ones);
- ``litellm``: LiteLLM proxy 1.106.2, one worker, its own venv, no database;
- ``portkey``: Portkey's open-source gateway (npm ``@portkey-ai/gateway``) under Node,
  its default logging, told the upstream per request (``x-portkey-provider: openai``,
  ``x-portkey-custom-host``), as its docs show for an OpenAI-compatible host;
- ``hermes-api[NAME]``: another checkout of hermes-api (``--compare NAME=DIR``), run
  from the same venv with ``PYTHONPATH=DIR``, for before/after figures in one run;
- ``hermes-api[VARIANT]`` (``VARIANTS``): this checkout with other settings: the
  PostgreSQL store, ``--workers 2``, metrics and usage recording off.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import fixtures
from .postgres import Cluster
from .procs import GATEWAY_CPU, LOAD_CPU, Proc, free_port, pinned, start, wait_listening

BENCH_DIR = Path(__file__).resolve().parent
HERMES_KEY = "hk-bench-0123456789abcdef"
LITELLM_KEY = "sk-bench-master-0123456789"
UPSTREAM_KEY = "sk-upstream-bench"
SOUL = (
    "You are Atlas, the operations assistant of a small platform team. You know our "
    "services, our on-call rota and our runbooks. Be brief and concrete; prefer a "
    "command or a link to a runbook over a paragraph. When a question touches "
    "production data, say which dashboard or log to check first. Never guess a "
    "hostname or a credential.\n"
)
MEMORY = ["The staging cluster is rebuilt every Monday at 06:00 UTC.", "Alerts go to #ops-alerts, not #general."]
USER = ["Maya, SRE, prefers answers as bullet lists."]


@dataclass
class Target:
    """A running system under test: where to send each kind of request, and the PID
    whose CPU and memory are its cost (``None``: not measured)."""

    name: str
    port: int
    auth: str = ""
    proc: Proc | None = None
    # kind, stream -> headers sent besides auth (Portkey is told its upstream in them)
    headers: dict[tuple[str, bool], dict[str, str]] = field(default_factory=dict)
    aux_pid: int | None = None  # a process of its own whose CPU is reported apart (PostgreSQL)
    # kind ("chat" | "responses" | "tools", stream) -> (path, model)
    routes: dict[tuple[str, bool], tuple[str, str]] = field(default_factory=dict)
    startup_s: float = 0.0

    def url(self, kind: str, stream: bool) -> str:
        return f"http://127.0.0.1:{self.port}{self.routes[(kind, stream)][0]}"

    def model(self, kind: str, stream: bool) -> str:
        return self.routes[(kind, stream)][1]


def start_upstream(work: Path) -> Target:
    """nginx on the load CPU, serving ``fixtures``' answers."""
    port = free_port()
    prefix = work / "nginx"
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "nginx.conf").write_text(fixtures.nginx_conf(prefix, port))
    nginx = "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "nginx"
    argv = pinned(LOAD_CPU, [nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf")])
    proc = start("nginx", argv, log=work / "nginx.log")
    wait_listening(proc, port, timeout=20)
    return Target(
        "direct",
        port,
        proc=proc,
        routes={
            ("chat", False): ("/v1/chat/completions", "bench"),
            ("chat", True): ("/stream/v1/chat/completions", "bench"),
        },
    )


def start_floor(work: Path, upstream: Target) -> Target:
    port = free_port()
    argv = [sys.executable, str(BENCH_DIR / "passthrough.py"), str(port), f"http://127.0.0.1:{upstream.port}"]
    proc = start("floor", pinned(GATEWAY_CPU, argv), log=work / "floor.log")
    t = Target("floor", port, proc=proc, routes=dict(upstream.routes))
    t.startup_s = wait_listening(proc, port)
    return t


PROFILES = {"bench": "/v1", "bench-stream": "/stream/v1", "bench-tools": "/tools/v1",
            "bench-tools-stream": "/tools-stream/v1"}  # fmt: skip


def write_hermes_home(home: Path, upstream_port: int) -> None:
    """Profiles ``bench`` (JSON answers), ``bench-stream`` (SSE answers) and their
    function-call twins ``bench-tools`` and ``bench-tools-stream``, each with a SOUL.md
    and memories, so the persona is injected as in real use."""
    for name, base in PROFILES.items():
        d = home / "profiles" / name
        (d / "memories").mkdir(parents=True, exist_ok=True)
        model = {
            "default": fixtures.MODEL_ID,
            "provider": "custom",
            "base_url": f"http://127.0.0.1:{upstream_port}{base}",
        }
        (d / "config.yaml").write_text(yaml.safe_dump({"model": {**model, "key_env": "BENCH_UPSTREAM_KEY"}}))
        (d / ".env").write_text(f"BENCH_UPSTREAM_KEY={UPSTREAM_KEY}\n")
        (d / "SOUL.md").write_text(SOUL)
        (d / "memories" / "MEMORY.md").write_text("\n§\n".join(MEMORY))
        (d / "memories" / "USER.md").write_text("\n§\n".join(USER))


def hermes_config(work: Path, home: Path, port: int, expose: list[str] | str, **extra: object) -> Path:
    """A hermes-api.yaml for one benchmark server; ``extra`` adds settings (e.g. caps)."""
    path = work / f"hermes-api-{port}.yaml"
    config = {
        "hermes_home": str(home),
        "host": "127.0.0.1",
        "port": port,
        "expose": expose,
        "default_profile": None,
        "keys": [{"name": "bench", "key_sha256": hashlib.sha256(HERMES_KEY.encode()).hexdigest()}],
        "state_dir": str(work / f"state-{port}"),
        "log_level": "warning",
        **extra,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def hermes_env(src: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HERMES_API_CONFIG", "API_SERVER_KEY", "PYTHONPATH")}
    if src is not None:
        env["PYTHONPATH"] = str(src)
    return env


@dataclass(frozen=True)
class Variant:
    """hermes-api with other settings: ``settings`` added to its config, ``workers``
    processes, pinned to ``cpus``; ``postgres``: its store on a PostgreSQL cluster of
    the bench's own."""

    settings: dict[str, Any] = field(default_factory=dict)
    workers: int = 1
    cpus: str = str(GATEWAY_CPU)
    postgres: bool = False


VARIANTS = {
    "pg": Variant(postgres=True),
    "w2": Variant(workers=2),
    "w2-2cpu": Variant(workers=2, cpus=f"{GATEWAY_CPU},{LOAD_CPU}"),
    "off": Variant({"metrics": False, "record_usage": False}),
    "no-usage": Variant({"record_usage": False}),
    "no-metrics": Variant({"metrics": False}),
}


def start_hermes(
    work: Path,
    upstream: Target,
    *,
    name: str = "hermes-api",
    src: Path | None = None,
    variant: Variant = Variant(),
    postgres: Callable[[], Cluster] | None = None,
) -> Target:
    """hermes-api (``src``: another checkout) pinned to the gateway CPU, or as ``variant``
    says; ``postgres`` gives the cluster a PostgreSQL variant's store lives in."""
    port = free_port()
    home = work / "hermes-home"
    if not home.exists():
        write_hermes_home(home, upstream.port)
    settings, aux_pid = dict(variant.settings), None
    if variant.postgres:
        assert postgres is not None, "a PostgreSQL variant needs the cluster"
        cluster = postgres()
        settings["store"], aux_pid = cluster.create_database(f"bench_{port}"), cluster.pid
    config = hermes_config(work, home, port, list(PROFILES), **settings)
    argv = [sys.executable, "-m", "hermes_api", "serve", "--config", str(config)]
    if variant.workers > 1:
        argv += ["--workers", str(variant.workers)]
    argv = ["taskset", "-c", variant.cpus, *argv] if (os.cpu_count() or 1) >= 2 else argv
    proc = start(name, argv, log=work / f"{name}.log", env=hermes_env(src), cwd=work)
    t = Target(name, port, auth=HERMES_KEY, proc=proc, aux_pid=aux_pid)
    for kind, path in (("chat", "/v1/chat/completions"), ("responses", "/v1/responses")):
        t.routes[(kind, False)] = (path, "bench")
        t.routes[(kind, True)] = (path, "bench-stream")
    t.routes[("tools", False)] = ("/v1/responses", "bench-tools")
    t.routes[("tools", True)] = ("/v1/responses", "bench-tools-stream")
    t.startup_s = wait_listening(proc, port)
    return t


def litellm_bin() -> Path:
    cache = Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "hermes-api-bench"))
    return cache / "litellm-venv" / "bin" / "litellm"


def start_litellm(work: Path, upstream: Target) -> Target:
    port = free_port()
    base = f"http://127.0.0.1:{upstream.port}"
    config = {
        "model_list": [
            {
                "model_name": name,
                "litellm_params": {
                    "model": f"openai/{fixtures.MODEL_ID}",
                    "api_base": base + path,
                    "api_key": UPSTREAM_KEY,
                },
            }
            for name, path in (("bench", "/v1"), ("bench-stream", "/stream/v1"))
        ],
        "general_settings": {"master_key": LITELLM_KEY},
    }
    path = work / "litellm.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False"}
    env.pop("DATABASE_URL", None)
    argv = [str(litellm_bin()), "--config", str(path), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    proc = start("litellm", pinned(GATEWAY_CPU, argv), log=work / "litellm.log", env=env, cwd=work)
    t = Target("litellm", port, auth=LITELLM_KEY, proc=proc)
    t.routes = {
        ("chat", False): ("/v1/chat/completions", "bench"),
        ("chat", True): ("/v1/chat/completions", "bench-stream"),
    }
    t.startup_s = wait_listening(proc, port, timeout=180)
    return t


def portkey_script() -> Path:
    cache = Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "hermes-api-bench"))
    return cache / "portkey" / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"


def start_portkey(work: Path, upstream: Target) -> Target:
    """Portkey's gateway on the gateway CPU, headless, on 127.0.0.1 only (its server
    binds every address; ``loopback.mjs`` narrows that)."""
    port = free_port()
    argv = ["node", "--import", str(BENCH_DIR / "loopback.mjs"), str(portkey_script()), f"--port={port}", "--headless"]
    env = {**os.environ, "NODE_ENV": "production"}
    proc = start("portkey", pinned(GATEWAY_CPU, argv), log=work / "portkey.log", env=env, cwd=work)
    t = Target("portkey", port, auth=UPSTREAM_KEY, proc=proc)
    base = f"http://127.0.0.1:{upstream.port}"
    t.routes = {("chat", False): ("/v1/chat/completions", "bench"), ("chat", True): ("/v1/chat/completions", "bench")}
    for stream, path in ((False, "/v1"), (True, "/stream/v1")):
        t.headers[("chat", stream)] = {"x-portkey-provider": "openai", "x-portkey-custom-host": base + path}
    t.startup_s = wait_listening(proc, port, timeout=60)
    return t
