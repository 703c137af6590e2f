"""The side-by-side benchmark: every target, every scenario, interleaved over rounds.

Each round runs every scenario against every target in turn (the target order rotates
from round to round), so slow drifts of a noisy machine fall on all targets alike. A
run is one bounded wrk run; around it the harness reads, from /proc, the gateway's CPU
seconds and peak RSS (reset before each run), and how busy the machine was with work
that is not the benchmark's (``other_load``, in cores), to judge the noise.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from . import fixtures
from .procs import cpu_seconds, machine_busy, memory_kib
from .targets import Target
from .wrk import run_wrk


@dataclass(frozen=True)
class Scenario:
    """``kind`` "chat", "responses" or "tools" (Responses with function tools, answered
    by a function call); ``connections`` kept open by wrk."""

    name: str
    kind: str
    stream: bool
    connections: int


SCENARIOS = (
    Scenario("chat c=1", "chat", False, 1),
    Scenario("chat c=32", "chat", False, 32),
    Scenario("chat stream c=32", "chat", True, 32),
    Scenario("responses c=32", "responses", False, 32),
    Scenario("responses stream c=32", "responses", True, 32),
    Scenario("responses tools c=32", "tools", False, 32),
    Scenario("responses tools stream c=32", "tools", True, 32),
)


class Skip(Exception):
    """This target cannot run this scenario (the message says why)."""


def request_body(target: Target, scenario: Scenario) -> dict[str, Any]:
    model = target.model(scenario.kind, scenario.stream)
    if scenario.kind == "responses":
        return fixtures.responses_request(model, stream=scenario.stream)
    if scenario.kind == "tools":
        return fixtures.responses_tools_request(model, stream=scenario.stream)
    return fixtures.chat_request(model, stream=scenario.stream)


def preflight(target: Target, scenario: Scenario) -> None:
    """One request, checked: a 200 with the fixture's answer (non-stream) or every
    streamed word and the closing event (stream); for "tools", the fixture's call with
    its arguments. Raises ``Skip`` when the target has no such route (hermes-api without
    ``/v1/responses`` yet) or answers no function call (before issue 10),
    ``RuntimeError`` when the answer is wrong."""
    if (scenario.kind, scenario.stream) not in target.routes:
        raise Skip(f"{target.name} does not offer {scenario.kind}")
    headers = {"authorization": f"Bearer {target.auth}"} if target.auth else {}
    headers |= target.headers.get((scenario.kind, scenario.stream), {})
    url = target.url(scenario.kind, scenario.stream)
    answer = httpx.post(url, json=request_body(target, scenario), headers=headers, timeout=30)
    if answer.status_code == 404 and '"not_found"' in answer.text:
        raise Skip(f"{target.name} answers 404 on {url.split(str(target.port), 1)[1]}: not built yet (issue 3)")
    if answer.status_code != 200:
        raise RuntimeError(f"{target.name} {scenario.name}: HTTP {answer.status_code}: {answer.text[:300]}")
    text = answer.text
    if scenario.kind == "tools":
        if '"function_call"' not in text:  # a checkout from before issue 10 answers with text
            raise Skip(f"{target.name} answers no function_call item")
        done = "response.function_call_arguments.done" in text if scenario.stream else True
        ok = done and '"arguments":' + orjson.dumps(fixtures.TOOL_ARGUMENTS).decode() in text
    elif scenario.stream:
        words = "".join(fixtures.STREAM_WORDS)
        ok = "[DONE]" in text if scenario.kind == "chat" else "response.completed" in text
        ok = ok and all(w.strip(" ,.") in text for w in words.split())
    else:
        ok = fixtures.ANSWER in text
    if not ok:
        raise RuntimeError(f"{target.name} {scenario.name}: unexpected answer: {text[:300]}")


def clear_peak_rss(pid: int) -> None:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0, writing 5 to clear_refs)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


def measure(target: Target, scenario: Scenario, body: Path, seconds: float, upstream: Target) -> dict[str, Any]:
    """One wrk run against ``target``; the figures of that run."""
    assert target.proc is not None and upstream.proc is not None
    pid, up_pid = target.proc.pid, upstream.proc.pid
    clear_peak_rss(pid)
    own = [pid] if pid == up_pid else [pid, up_pid]
    if target.aux_pid is not None:
        own.append(target.aux_pid)
    cpu0 = [cpu_seconds(p) for p in own]
    busy0, wall0 = machine_busy()[0], time.perf_counter()
    kids0, self0 = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    result = run_wrk(
        target.url(scenario.kind, scenario.stream),
        body,
        connections=scenario.connections,
        seconds=seconds,
        auth=target.auth,
        headers=target.headers.get((scenario.kind, scenario.stream)),
    )
    cpu1 = [cpu_seconds(p) for p in own]
    busy1, wall1 = machine_busy()[0], time.perf_counter()
    kids1, self1 = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    gateway_cpu = cpu1[0] - cpu0[0]
    ours = sum(b - a for a, b in zip(cpu0, cpu1, strict=True))
    ours += (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
    ours += (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
    lat = result.latency_us
    return {
        "rps": result.rps,
        "requests": result.requests,
        "errors": result.failed,
        "p50_ms": lat["p50"] / 1000,
        "p90_ms": lat["p90"] / 1000,
        "p99_ms": lat["p99"] / 1000,
        "cpu_ms_per_req": 1000 * gateway_cpu / result.requests if result.requests else None,
        # the target's own database server (PostgreSQL), apart from its CPU
        "aux_cpu_ms_per_req": (
            1000 * (cpu1[-1] - cpu0[-1]) / result.requests if target.aux_pid is not None and result.requests else None
        ),
        "peak_rss_mb": memory_kib(pid) / 1024,
        "other_load_cores": max(0.0, (busy1 - busy0 - ours) / (wall1 - wall0)),
    }


def plan(rounds: int, scenarios: list[Scenario], targets: list[Target]) -> Iterator[tuple[int, Scenario, Target]]:
    """Round by round, scenario by scenario, targets in an order rotated per round."""
    for r in range(rounds):
        for scenario in scenarios:
            shift = r % len(targets)
            for target in targets[shift:] + targets[:shift]:
                yield r, scenario, target


def run(
    targets: list[Target],
    upstream: Target,
    scenarios: list[Scenario],
    *,
    work: Path,
    rounds: int,
    seconds: float,
    warmup: float,
    log: Any = print,
) -> dict[str, Any]:
    """Preflight and warm up every (scenario, target), then the interleaved rounds.
    Returns ``{"runs": [...], "skipped": {...}, "startup_s": {...}}``."""
    bodies: dict[tuple[str, str], Path] = {}
    skipped: dict[str, str] = {}
    for scenario in scenarios:
        for target in targets:
            key = f"{scenario.name} / {target.name}"
            try:
                preflight(target, scenario)
            except Skip as exc:
                skipped[key] = str(exc)
                log(f"skip {key}: {exc}")
                continue
            path = work / f"body-{target.name}-{scenario.name.replace(' ', '_').replace('=', '')}.json"
            path.write_bytes(orjson.dumps(request_body(target, scenario)))
            bodies[(scenario.name, target.name)] = path
            if warmup:
                run_wrk(
                    target.url(scenario.kind, scenario.stream),
                    path,
                    connections=scenario.connections,
                    seconds=warmup,
                    auth=target.auth,
                    headers=target.headers.get((scenario.kind, scenario.stream)),
                )
    runs = []
    for r, scenario, target in plan(rounds, scenarios, targets):
        body = bodies.get((scenario.name, target.name))
        if body is None:
            continue
        figures = measure(target, scenario, body, seconds, upstream)
        runs.append({"round": r + 1, "scenario": scenario.name, "target": target.name, **figures})
        log(
            f"round {r + 1} {scenario.name:<22} {target.name:<18} {figures['rps']:9.1f} req/s  "
            f"p50 {figures['p50_ms']:7.2f} ms  cpu {figures['cpu_ms_per_req'] or 0:6.3f} ms/req  "
            f"rss {figures['peak_rss_mb']:6.1f} MB  other load {figures['other_load_cores']:.2f}"
            + (f"  ERRORS {figures['errors']}" if figures["errors"] else "")
        )
    return {"runs": runs, "skipped": skipped, "startup_s": {t.name: t.startup_s for t in targets}}
