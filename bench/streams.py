"""The concurrency benchmark: many slow streams at once through one worker.

``slow_upstream.py`` trickles each answer over a few seconds; the harness opens
``count`` streaming chat requests at once through the gateway, reads every one to the
end and checks it: every word of the answer, the usage chunk and ``[DONE]``. While they
run it samples the gateway's RSS; after, it reads its peak (VmHWM) and CPU time.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from . import fixtures
from .procs import LOAD_CPU, cpu_seconds, free_port, memory_kib, pinned, start, stop, wait_listening
from .targets import BENCH_DIR, HERMES_KEY, Target, hermes_config, hermes_env, write_hermes_home

WORDS = "".join(fixtures.STREAM_WORDS)


async def one_stream(session: aiohttp.ClientSession, target: Target, body: dict[str, Any]) -> tuple[bool, float, str]:
    """(complete, seconds, problem) for one streamed request read to its end."""
    began = time.perf_counter()
    headers = {"authorization": f"Bearer {target.auth}"} if target.auth else {}
    try:
        async with session.post(target.url("chat", True), json=body, headers=headers) as answer:
            raw = await answer.read()
            status = answer.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        return False, time.perf_counter() - began, type(exc).__name__
    text = raw.decode(errors="replace")
    if status != 200:
        return False, time.perf_counter() - began, f"HTTP {status}"
    content = "".join(
        c for c in (_content(line) for line in text.splitlines() if line.startswith("data: {")) if c is not None
    )
    ok = content == WORDS and '"usage":{"prompt_tokens"' in text and text.rstrip().endswith("data: [DONE]")
    return ok, time.perf_counter() - began, "" if ok else "incomplete answer"


def _content(line: str) -> str | None:
    import orjson

    chunk = orjson.loads(line[6:])
    choices = chunk.get("choices") or []
    return (choices[0].get("delta") or {}).get("content") if choices else None


async def _load(target: Target, count: int, pid: int) -> dict[str, Any]:
    body = fixtures.chat_request(target.model("chat", True), stream=True)
    samples: list[int] = []
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [asyncio.ensure_future(one_stream(session, target, body)) for _ in range(count)]
        while not all(t.done() for t in tasks):
            samples.append(memory_kib(pid, "VmRSS"))
            await asyncio.sleep(0.25)
        results = [t.result() for t in tasks]
    problems: dict[str, int] = {}
    for ok, _, why in results:
        if not ok:
            problems[why] = problems.get(why, 0) + 1
    times = sorted(s for _, s, _ in results)
    return {
        "streams": count,
        "completed": sum(ok for ok, _, _ in results),
        "problems": problems,
        "stream_s_p50": times[len(times) // 2],
        "stream_s_max": times[-1],
        "rss_mb_max_sampled": max(samples, default=0) / 1024,
    }


def run(target: Target, count: int, work: Path) -> dict[str, Any]:
    """``count`` streams at once through ``target``; completeness, time, RSS, CPU."""
    assert target.proc is not None
    pid = target.proc.pid
    rss_idle = memory_kib(pid, "VmRSS") / 1024
    cpu0, began = cpu_seconds(pid), time.perf_counter()
    figures = asyncio.run(_load(target, count, pid))
    figures |= {
        "target": target.name,
        "wall_s": time.perf_counter() - began,
        "cpu_s": cpu_seconds(pid) - cpu0,
        "rss_idle_mb": rss_idle,
        "peak_rss_mb": memory_kib(pid, "VmHWM") / 1024,
    }
    return figures


def start_slow_upstream(work: Path, seconds: float) -> tuple[Any, int]:
    port = free_port()
    argv = pinned(LOAD_CPU, [sys.executable, str(BENCH_DIR / "slow_upstream.py"), str(port), str(seconds)])
    env = {**hermes_env(None), "PYTHONPATH": str(BENCH_DIR.parent)}
    proc = start("slow-upstream", argv, log=work / "slow-upstream.log", env=env)
    wait_listening(proc, port)
    return proc, port


def start_gateways(work: Path, upstream_port: int, count: int) -> list[Target]:
    """hermes-api and the floor passthrough, both in front of the slow upstream;
    hermes-api with room for ``count`` concurrent streams."""
    from .procs import GATEWAY_CPU

    home = work / "slow-home"
    write_hermes_home(home, upstream_port)
    port = free_port()
    # An operator serving 1,000 concurrent streams raises the concurrency caps (defaults:
    # 512 in all, 128 per profile), or 872 of them would get 429 concurrency_limit_exceeded;
    # past 2,048 streams, also the cap on open connections (503 too_many_connections).
    caps = {"max_concurrent": 2 * count, "max_concurrent_per_profile": 2 * count}
    caps["max_connections"] = max(2 * count, 2048)
    config = hermes_config(work, home, port, ["bench"], **caps)
    argv = pinned(GATEWAY_CPU, [sys.executable, "-m", "hermes_api", "serve", "--config", str(config)])
    hermes = Target("hermes-api", port, auth=HERMES_KEY, routes={("chat", True): ("/v1/chat/completions", "bench")})
    hermes.proc = start("hermes-api", argv, log=work / "hermes-slow.log", env=hermes_env(None), cwd=work)
    hermes.startup_s = wait_listening(hermes.proc, port)
    port = free_port()
    argv = pinned(
        GATEWAY_CPU, [sys.executable, str(BENCH_DIR / "passthrough.py"), str(port), f"http://127.0.0.1:{upstream_port}"]
    )
    floor = Target("floor", port, routes={("chat", True): ("/v1/chat/completions", "bench")})
    floor.proc = start("floor", argv, log=work / "floor-slow.log")
    floor.startup_s = wait_listening(floor.proc, port)
    return [hermes, floor]


def run_all(work: Path, count: int, seconds: float, log: Any = print) -> list[dict[str, Any]]:
    upstream, port = start_slow_upstream(work, seconds)
    gateways: list[Target] = []
    try:
        gateways = start_gateways(work, port, count)
        out = []
        for target in gateways:
            figures = run(target, count, work)
            log(
                f"{target.name}: {figures['completed']}/{count} streams complete in {figures['wall_s']:.1f} s, "
                f"peak RSS {figures['peak_rss_mb']:.0f} MB, CPU {figures['cpu_s']:.2f} s"
                + (f", problems {figures['problems']}" if figures["problems"] else "")
            )
            out.append(figures)
        return out
    finally:
        for t in gateways:
            if t.proc:
                stop(t.proc)
        stop(upstream)
