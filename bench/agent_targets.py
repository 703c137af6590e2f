"""The systems of the agent benchmark, each started pinned to the gateway CPU:

- ``hermes``: Hermes's own API server, ``hermes -p NAME gateway run`` with
  ``API_SERVER_ENABLED``, one gateway process per profile, each in a HOME of its own
  (how Hermes serves one profile to Open WebUI today; hermes-agent 0.19
  ``gateway/platforms/api_server.py``);
- ``hermes[multiplex]``: Hermes's own profile multiplexer, one gateway for every
  profile (``start_multiplexer``), for the memory and concurrency figures;
- ``hermes-api``: ``hermes-api serve`` with every profile on the agent runtime: one
  server, one worker process per profile (``hermes_api/agent/``), started by the
  profile's first turn; ``hermes-api[NAME]`` runs another checkout (``--compare``).

Every profile is written the same way for both (``write_profile``): a custom endpoint
on the scripted upstream (``agent_upstream.py``), the two settings that spare Hermes its
slow first-turn probes (``model.context_length``, ``agent.environment_probe: false``),
and the toolsets hermes-api gives an agent profile by default (memory, skills,
session_search, todo) as the profile's ``platform_toolsets.api_server``, so both
systems send the model the same tools. A variant's ``env`` (e.g.
``HERMES_SKIP_SSL_GUARD=1``) goes to both sides alike: the gateway's environment, and
the hermes-api workers' through ``agent.env``.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .procs import GATEWAY_CPU, LOAD_CPU, Proc, free_port, pinned, start, stop, wait_listening
from .targets import HERMES_KEY, MEMORY, SOUL, USER, hermes_env

GATEWAY_KEY = "sk-bench-gateway-key-0123456789"  # Hermes wants >= 16 characters, even on loopback
UPSTREAM_KEY = "sk-bench-upstream-key"
TOOLSETS = ["memory", "skills", "session_search", "todo"]
BENCH_DIR = Path(__file__).resolve().parent


def hermes_bin() -> Path:
    """The ``hermes`` command of hermes-agent, beside this interpreter."""
    return Path(sys.executable).with_name("hermes")


def write_profile(home: Path, upstream_port: int) -> None:
    """One profile's Hermes home, as ``hermes config set`` would write it."""
    (home / "memories").mkdir(parents=True, exist_ok=True)
    config = {
        "model": {
            "default": "bench-agent-model",
            "provider": "custom",
            "base_url": f"http://127.0.0.1:{upstream_port}/v1",
            "api_key": UPSTREAM_KEY,
            "context_length": 65536,
        },
        "agent": {"environment_probe": False},
        "platform_toolsets": {"api_server": TOOLSETS},
    }
    (home / "config.yaml").write_text(yaml.safe_dump(config))
    (home / "SOUL.md").write_text(SOUL)
    reset_memory(home)


def reset_memory(home: Path) -> None:
    """The profile's memories as written at the start (memory turns add entries)."""
    (home / "memories" / "MEMORY.md").write_text("\n§\n".join(MEMORY))
    (home / "memories" / "USER.md").write_text("\n§\n".join(USER))


@dataclass
class Upstream:
    port: int
    proc: Proc

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"


def start_upstream(work: Path) -> Upstream:
    port = free_port()
    argv = pinned(LOAD_CPU, [sys.executable, str(BENCH_DIR / "agent_upstream.py"), str(port)])
    proc = start("agent-upstream", argv, log=work / "agent-upstream.log")
    wait_listening(proc, port, timeout=20)
    return Upstream(port, proc)


@dataclass
class AgentTarget:
    """A running system: where each profile is served, and the processes whose CPU and
    memory are its cost."""

    name: str
    kind: str  # "hermes" | "hermes-api"
    key: str
    work: Path
    upstream_port: int
    env: Mapping[str, str] = field(default_factory=dict)  # the variant's environment, both sides
    ports: dict[str, int] = field(default_factory=dict)  # profile -> port ("*": every profile)
    procs: dict[str, Proc] = field(default_factory=dict)  # profile (or "server") -> process
    homes: dict[str, Path] = field(default_factory=dict)  # profile -> its Hermes home
    prefixed: bool = False  # Hermes's multiplexer: a profile's routes are under /p/<profile>
    spare: bool = False  # hermes-api with a spare worker (``agent.spare_worker``)

    def url(self, profile: str) -> str:
        port = self.ports.get(profile) or self.ports["*"]
        prefix = f"/p/{profile}" if self.prefixed else ""
        return f"http://127.0.0.1:{port}{prefix}/v1/chat/completions"

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values() if p.popen.poll() is None]

    def stop(self) -> None:
        for proc in self.procs.values():
            stop(proc)


# -- Hermes's own gateway ---------------------------------------------------------------


def hermes_target(
    name: str, work: Path, upstream_port: int, env: Mapping[str, str], folder: str | None = None
) -> AgentTarget:
    """Hermes's side, its gateways' HOMEs and logs under ``work/<folder or name>``."""
    return AgentTarget(name, "hermes", GATEWAY_KEY, work / (folder or name), upstream_port, dict(env))


def start_gateway(target: AgentTarget, profile: str) -> float:
    """Start ``hermes -p profile gateway run`` in a HOME of its own, pinned to the gateway
    CPU; seconds from the launch to its port accepting."""
    root = target.work / f"home-{profile}"
    home = root / ".hermes" / "profiles" / profile
    write_profile(home, target.upstream_port)
    port = free_port()
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(root),
        "API_SERVER_ENABLED": "true",
        "API_SERVER_KEY": GATEWAY_KEY,
        "API_SERVER_HOST": "127.0.0.1",
        "API_SERVER_PORT": str(port),
        **target.env,
    }
    argv = pinned(GATEWAY_CPU, [str(hermes_bin()), "-p", profile, "gateway", "run", "--force"])
    proc = start(f"{target.name}-{profile}", argv, log=target.work / f"gateway-{profile}.log", env=env, cwd=root)
    target.procs[profile], target.ports[profile], target.homes[profile] = proc, port, home
    return wait_listening(proc, port, timeout=120)


def start_multiplexer(work: Path, upstream_port: int, profiles: list[str]) -> AgentTarget:
    """Hermes's profile multiplexer (hermes-agent 0.19 ``gateway.multiplex_profiles``,
    here ``GATEWAY_MULTIPLEX_PROFILES=true``): ONE gateway process, the default profile's,
    serving every profile of its HOME under ``/p/<profile>/v1/...``, each turn scoped to
    that profile's home and secrets. Its API server settings come from the default
    profile's ``.env`` (in this mode secrets are read from a profile's files, not the
    process environment)."""
    target = AgentTarget("hermes[multiplex]", "hermes", GATEWAY_KEY, work / "hermes-multiplex", upstream_port)
    root = target.work / "home" / ".hermes"
    write_profile(root, upstream_port)
    for profile in profiles:
        write_profile(root / "profiles" / profile, upstream_port)
        target.homes[profile] = root / "profiles" / profile
    port = free_port()
    settings = {"API_SERVER_ENABLED": "true", "API_SERVER_KEY": GATEWAY_KEY, "API_SERVER_HOST": "127.0.0.1",
                "API_SERVER_PORT": str(port)}  # fmt: skip
    (root / ".env").write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(root.parent),
           "GATEWAY_MULTIPLEX_PROFILES": "true"}  # fmt: skip
    argv = pinned(GATEWAY_CPU, [str(hermes_bin()), "gateway", "run", "--force"])
    proc = start(target.name, argv, log=target.work / "gateway.log", env=env, cwd=root.parent)
    target.procs["gateway"], target.ports["*"], target.prefixed = proc, port, True
    wait_listening(proc, port, timeout=120)
    return target


def stop_gateway(target: AgentTarget, profile: str) -> None:
    stop(target.procs.pop(profile))
    target.ports.pop(profile, None)


# -- hermes-api ------------------------------------------------------------------------


def start_hermes_api(
    name: str,
    work: Path,
    upstream_port: int,
    profiles: list[str],
    env: Mapping[str, str],
    src: Path | None = None,
    spare: bool = True,
) -> AgentTarget:
    """``hermes-api serve`` with ``profiles`` on the agent runtime (workers start on first
    use; with ``spare``, ``agent.spare_worker``, the default, one is started ahead),
    pinned to the gateway CPU (its workers inherit the pinning). Logs JSON at ``info``:
    the line saying a worker started times the worker spawn of a cold turn."""
    target = AgentTarget(name, "hermes-api", HERMES_KEY, work / name, upstream_port, dict(env))
    target.spare = spare and src is None  # another checkout: one without spares, or its own default
    target.work.mkdir(parents=True, exist_ok=True)
    root = target.work / "hermes-home"
    for profile in profiles:
        write_profile(root / "profiles" / profile, upstream_port)
        target.homes[profile] = root / "profiles" / profile
    port = free_port()
    config = {
        "hermes_home": str(root),
        "host": "127.0.0.1",
        "port": port,
        "expose": profiles,
        "default_profile": None,
        "keys": [{"name": "bench", "key_sha256": hashlib.sha256(HERMES_KEY.encode()).hexdigest()}],
        "state_dir": str(target.work / "state"),
        "log_level": "info",
        "log_format": "json",
        "agent": {
            "profiles": profiles,
            "idle_timeout": 3600,
            "startup_timeout": 120,
            "env": sorted(env),
            **({} if spare else {"spare_worker": False}),
        },
    }
    path = target.work / "hermes-api.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = pinned(GATEWAY_CPU, [sys.executable, "-m", "hermes_api", "serve", "--config", str(path)])
    server_env = {**hermes_env(src), **env}
    proc = start(name, argv, log=target.work / "server.log", env=server_env, cwd=target.work)
    target.procs["server"], target.ports["*"] = proc, port
    wait_listening(proc, port, timeout=60)
    return target


def worker_pids(target: AgentTarget) -> dict[str, int]:
    """hermes-api's live workers: profile -> PID (from the process table: the server's
    children running ``agent/worker.py`` whose working directory is the profile's
    ``workspace``; a worker bound from a spare has no ``HERMES_HOME`` in its
    ``/proc/<pid>/environ``)."""
    return {cwd.parent.name: pid for pid, cwd in _workers(target) if cwd.name == "workspace"}


def spare_pid(target: AgentTarget) -> int | None:
    """hermes-api's spare worker, once it waits for its profile (blocked reading its
    stdin: ``/proc/<pid>/syscall`` is ``read`` on fd 0, x86-64 or arm64), else None."""
    for pid, cwd in _workers(target):
        if cwd.name == "agent-spare":
            try:
                fields = Path(f"/proc/{pid}/syscall").read_text().split()
            except OSError:
                continue
            if len(fields) > 1 and fields[0] in ("0", "63") and fields[1] == "0x0":
                return pid
    return None


def _workers(target: AgentTarget) -> list[tuple[int, Path]]:
    from .procs import tree

    found = []
    for pid in tree(target.procs["server"].pid)[1:]:
        try:
            if b"agent/worker.py" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append((pid, Path(os.readlink(f"/proc/{pid}/cwd"))))
        except OSError:
            continue
    return found
