"""The profile-scale benchmark: 10, 1,000 and 10,000 profiles in one Hermes home.

For each size: a generated home (every profile with config.yaml, .env, SOUL.md and
memories, all pointing at nginx), served with ``expose: "*"``; then

- startup: seconds from launching ``hermes-api serve`` to its port accepting;
- idle RSS after a few requests;
- ``GET /v1/models``: p50 and p90 latency over sequential keep-alive requests, and size;
- routing cost in-process: µs per ``registry.select`` + ``registry.resolve`` for random
  profile names (the per-request work that grows with the number of profiles, if any);
- routing cost end to end: chat c=1 through wrk, each request on a random profile (of
  all ``count``), after every profile was used once: p50 and CPU/request.
"""

from __future__ import annotations

import http.client
import random
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import yaml

from . import fixtures
from .procs import GATEWAY_CPU, cpu_seconds, free_port, memory_kib, pinned, start, stop, wait_listening
from .targets import HERMES_KEY, SOUL, UPSTREAM_KEY, hermes_config, hermes_env
from .wrk import run_wrk

SIZES = (10, 1_000, 10_000)


def profile_name(i: int) -> str:
    return f"p{i:05d}"


def make_home(home: Path, count: int, upstream_port: int) -> None:
    """``count`` profiles: ``default`` plus ``p00001`` … (each a distinct persona)."""
    base = f"http://127.0.0.1:{upstream_port}/v1"
    for i in range(count):
        d = home if i == 0 else home / "profiles" / profile_name(i)
        (d / "memories").mkdir(parents=True, exist_ok=True)
        model = {"default": fixtures.MODEL_ID, "provider": "custom", "base_url": base, "key_env": "BENCH_UPSTREAM_KEY"}
        (d / "config.yaml").write_text(yaml.safe_dump({"model": model}))
        (d / ".env").write_text(f"BENCH_UPSTREAM_KEY={UPSTREAM_KEY}\n")
        (d / "SOUL.md").write_text(SOUL + f"\nYour call sign is unit {i}.\n")
        (d / "memories" / "MEMORY.md").write_text(f"Unit {i} was set up by the benchmark.\n§\nBe brief.")
        (d / "memories" / "USER.md").write_text("The user is a load generator.")


def models_latency(port: int, count: int) -> dict[str, Any]:
    """Sequential ``GET /v1/models`` on one keep-alive connection: p50/p90 in ms."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"authorization": f"Bearer {HERMES_KEY}"}
    times, size, listed = [], 0, 0
    for _ in range(count):
        began = time.perf_counter()
        conn.request("GET", "/v1/models", headers=headers)
        answer = conn.getresponse()
        raw = answer.read()
        times.append((time.perf_counter() - began) * 1000)
        size = len(raw)
    listed = len(orjson.loads(raw)["data"])
    conn.close()
    times.sort()
    return {
        "models_p50_ms": times[len(times) // 2],
        "models_p90_ms": times[int(len(times) * 0.9)],
        "models_bytes": size,
        "models_listed": listed,
    }


def use_every_profile(port: int, count: int) -> None:
    """``GET /v1/models/<name>`` for every profile once: each persona is read on its
    profile's first use, a one-time cost a long-running server has already paid, which
    would otherwise land in the steady-state figures below."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"authorization": f"Bearer {HERMES_KEY}"}
    for i in range(1, count):
        conn.request("GET", f"/v1/models/{profile_name(i)}", headers=headers)
        conn.getresponse().read()
    conn.close()


def routing_cost(home: Path, count: int, calls: int = 20_000) -> float:
    """µs per ``select`` + ``resolve`` of a random profile, in this process (best of 5
    passes over the same 20,000 names)."""
    from starlette.datastructures import Headers

    from hermes_api.keys import Caller
    from hermes_api.registry import ProfileRegistry
    from hermes_api.settings import Settings

    settings = Settings.load(None, {}, {"hermes_home": str(home), "expose": "*"})
    registry = ProfileRegistry(settings, {})
    registry.load()
    caller = Caller(None)
    rng = random.Random(6)
    names = [profile_name(rng.randrange(1, count)) for _ in range(calls)]
    headers = Headers({"content-type": "application/json", "authorization": "Bearer x", "user-agent": "bench"})
    best = float("inf")
    for _ in range(5):
        began = time.perf_counter()
        for name in names:
            registry.resolve(registry.select(headers, model=name), caller)
        best = min(best, time.perf_counter() - began)
    return best / calls * 1e6


def measure(work: Path, count: int, upstream_port: int, seconds: float, log: Any = print) -> dict[str, Any]:
    home = work / f"home-{count}"
    began = time.perf_counter()
    make_home(home, count, upstream_port)
    log(f"{count} profiles written in {time.perf_counter() - began:.1f} s")
    port = free_port()
    config = hermes_config(work, home, port, "*")
    argv = pinned(GATEWAY_CPU, [sys.executable, "-m", "hermes_api", "serve", "--config", str(config)])
    began = time.perf_counter()
    proc = start(f"hermes-api-{count}", argv, log=work / f"hermes-{count}.log", env=hermes_env(None), cwd=work)
    try:
        startup = wait_listening(proc, port, timeout=300)
        startup_cpu = cpu_seconds(proc.pid)
        models = models_latency(port, 5)  # warm: the first listing builds the cache
        models = models_latency(port, 200)
        use_every_profile(port, count)  # as on a server that has been running: personas read
        body = work / f"scale-body-{count}.json"
        body.write_bytes(orjson.dumps(fixtures.chat_request("__PROFILE__")))  # a random profile per request
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        run_wrk(url, body, connections=1, seconds=1, auth=HERMES_KEY, profiles=count)
        cpu0 = cpu_seconds(proc.pid)
        chat = run_wrk(url, body, connections=1, seconds=seconds, auth=HERMES_KEY, profiles=count)
        chat_cpu = (cpu_seconds(proc.pid) - cpu0) / chat.requests * 1000 if chat.requests else None
        time.sleep(1)
        rss = memory_kib(proc.pid, "VmRSS") / 1024
    finally:
        stop(proc)
    return {
        "profiles": count,
        "startup_s": startup,
        "startup_cpu_s": startup_cpu,
        "idle_rss_mb": rss,
        **models,
        "routing_us": routing_cost(home, count),
        "chat_c1_p50_ms": chat.latency_us["p50"] / 1000,
        "chat_c1_cpu_ms": chat_cpu,
        "chat_errors": chat.failed,
    }


def run_all(
    work: Path, upstream_port: int, seconds: float, sizes: tuple[int, ...] = SIZES, log: Any = print
) -> list[dict[str, Any]]:
    out = []
    for count in sizes:
        figures = measure(work, count, upstream_port, seconds, log)
        log(
            f"{count:>6} profiles: startup {figures['startup_s']:.2f} s, idle RSS {figures['idle_rss_mb']:.0f} MB, "
            f"/v1/models p50 {figures['models_p50_ms']:.2f} ms ({figures['models_listed']} listed), "
            f"routing {figures['routing_us']:.1f} µs, chat c=1 p50 {figures['chat_c1_p50_ms']:.2f} ms"
        )
        out.append(figures)
    return out
