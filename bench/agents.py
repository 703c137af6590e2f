"""The agent benchmark: Hermes's own API server beside hermes-api's agent runtime, for
the same profile, against the same scripted upstream, in one run.

- **warm**: rounds of sequential turns (text and memory tool, non-streamed and streamed
  to the last byte) to each system and straight to the upstream, the order of the
  systems rotated per round; each block of turns also reads the system's CPU seconds
  and how busy the machine was with other work;
- **cold**: the first turn of a new profile: Hermes's gateway from its launch
  (listening, then the first request answered), hermes-api's on its running server
  (the worker spawn, read from the server's log, and the whole turn; with its spare
  worker, once the spare waits for a profile, and without), interleaved, with the CPU
  seconds each took;
- **rss**: the warm profile's process (hermes-api's worker, Hermes's gateway), then
  ``WIDE`` profiles warm (hermes-api's server and its workers; that many gateways;
  Hermes's multiplexer, one gateway for them all);
- **concurrency**: ``CLIENTS`` clients turning over ``SPREAD`` of those profiles at
  once for a bounded time, systems interleaved over rounds.
"""

from __future__ import annotations

import resource
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

from .agent_targets import (
    AgentTarget,
    Upstream,
    reset_memory,
    spare_pid,
    start_gateway,
    stop_gateway,
    worker_pids,
)
from .agent_turns import SCENARIOS, Scenario, agent_turn, direct_turn
from .procs import CLK_TCK, cpu_seconds, machine_busy

WIDE, SPREAD, CLIENTS = 10, 4, 8
WARM_PROFILE = "bench"
Log = Callable[[str], None]


class Counter:
    """A fresh number for every turn's message (every turn is a new conversation)."""

    def __init__(self) -> None:
        self._n, self._lock = 0, threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            self._n += 1
            return self._n


class Meter:
    """CPU seconds of some processes, and of the whole machine, across a block of work:
    ``cpu_s`` the systems', ``other_cores`` the machine's busy cores minus everything
    the benchmark runs (systems, upstream, harness)."""

    def __init__(self, pids: list[int], ours: list[int]) -> None:
        self.pids, self.ours = pids, ours
        self._at = self._read()

    def _read(self) -> tuple[float, float, float, float]:
        own = resource.getrusage(resource.RUSAGE_SELF)
        return (
            sum(cpu_seconds(p) for p in self.pids),
            sum(cpu_seconds(p) for p in self.ours) + own.ru_utime + own.ru_stime,
            machine_busy()[0],
            time.perf_counter(),
        )

    def read(self) -> dict[str, float]:
        cpu0, ours0, busy0, wall0 = self._at
        cpu1, ours1, busy1, wall1 = self._read()
        wall = wall1 - wall0
        other = (busy1 - busy0) - (cpu1 - cpu0) - (ours1 - ours0)
        return {"cpu_s": cpu1 - cpu0, "wall_s": wall, "other_cores": max(0.0, other / wall) if wall else 0.0}


def _rotated(items: list[Any], r: int) -> list[Any]:
    shift = r % len(items)
    return items[shift:] + items[:shift]


# -- warm turns ------------------------------------------------------------------------


def warm_block(
    client: httpx.Client, target: AgentTarget | None, upstream: Upstream, scenario: Scenario, turns: int, n: Counter
) -> dict[str, Any]:
    """``turns`` sequential turns of ``scenario`` (``target`` None: straight to the upstream)."""
    if target is not None:
        reset_memory(target.homes[WARM_PROFILE])
    meter = Meter(target.pids() if target else [], [upstream.proc.pid])
    latencies, problems = [], []
    for _ in range(turns):
        if target is None:
            seconds, problem = direct_turn(client, upstream.url, scenario.kind, scenario.stream, n())
        else:
            url = target.url(WARM_PROFILE)
            seconds, problem = agent_turn(client, url, target.key, WARM_PROFILE, scenario.kind, scenario.stream, n())
        latencies.append(seconds * 1000)
        if problem:
            problems.append(problem)
    figures = meter.read()
    return {
        "latencies_ms": latencies,
        "cpu_ms_per_turn": 1000 * figures["cpu_s"] / turns if target else None,
        "other_load_cores": figures["other_cores"],
        "errors": len(problems),
        "problem": problems[0] if problems else "",
    }


def run_warm(
    targets: list[AgentTarget], upstream: Upstream, *, rounds: int, turns: int, warmup: int, log: Log
) -> list[dict[str, Any]]:
    n = Counter()
    systems: list[AgentTarget | None] = [None, *targets]
    with httpx.Client(timeout=300) as client:
        for target in targets:
            for scenario in SCENARIOS:
                warm_block(client, target, upstream, scenario, warmup, n)
        runs = []
        for r in range(rounds):
            for scenario in SCENARIOS:
                for target in _rotated(systems, r):
                    block = warm_block(client, target, upstream, scenario, turns, n)
                    name = target.name if target else "upstream"
                    runs.append({"round": r + 1, "scenario": scenario.name, "target": name, **block})
                    lat = sorted(block["latencies_ms"])
                    log(
                        f"round {r + 1} {scenario.name:<19} {name:<28} p50 {lat[len(lat) // 2]:8.1f} ms  "
                        f"cpu {block['cpu_ms_per_turn'] or 0:7.1f} ms/turn  other load {block['other_load_cores']:.2f}"
                        + (f"  ERRORS {block['errors']}: {block['problem']}" if block["errors"] else "")
                    )
    return runs


# -- cold first turns ------------------------------------------------------------------


def cold_hermes(target: AgentTarget, profile: str, n: Counter) -> dict[str, Any]:
    """Launch → listening → first turn answered, for a new gateway of a new profile."""
    began, busy0 = time.perf_counter(), machine_busy()[0]
    listening = start_gateway(target, profile)
    try:
        with httpx.Client(timeout=300) as client:
            seconds, problem = agent_turn(client, target.url(profile), target.key, profile, "text", False, n())
        total = time.perf_counter() - began
        pid = target.procs[profile].pid
        rss, cpu = rss_mb(pid)["rss_mb"], cpu_seconds(pid)
    finally:
        stop_gateway(target, profile)
    other = max(0.0, (machine_busy()[0] - busy0 - cpu) / total)
    return {"listening_s": listening, "first_turn_s": seconds, "total_s": total, "cpu_s": cpu, "rss_mb": rss,
            "other_load_cores": other, "problem": problem}  # fmt: skip


SPARE_WAIT = 60.0  # seconds a sample waits for hermes-api's spare to be ready


def cold_hermes_api(target: AgentTarget, profile: str, n: Counter) -> dict[str, Any]:
    """First turn of a profile on a running hermes-api: the whole, and the worker spawn
    (the request to the server's ``agent worker ... started`` log line). A server with
    a spare worker is first given the time to have one waiting (the sample says whether
    the profile's worker was that spare). CPU: the server's own and the profile's
    worker's during the turn (a spare's imports, done before, are ``spare_cpu_s``)."""
    deadline, spare = time.monotonic() + (SPARE_WAIT if target.spare else 0), None
    while target.spare and (spare := spare_pid(target)) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    server = target.procs["server"].pid
    ahead = _own_cpu(spare) if spare else 0.0
    cpu0, busy0 = _own_cpu(server), machine_busy()[0]
    sent = time.time()
    with httpx.Client(timeout=300) as client:
        seconds, problem = agent_turn(client, target.url(profile), target.key, profile, "text", False, n())
    worker = worker_pids(target).get(profile)
    cpu = _own_cpu(server) - cpu0 + (_own_cpu(worker) if worker else 0.0) - (ahead if worker == spare else 0.0)
    started = worker_started(target.work / "server.log", profile)
    return {
        "first_turn_s": seconds,
        "total_s": seconds,
        "spawn_s": started - sent if started else None,
        "cpu_s": cpu,
        "other_load_cores": max(0.0, (machine_busy()[0] - busy0 - cpu) / seconds) if seconds else None,
        "spare_cpu_s": ahead if spare and worker == spare else None,
        "from_spare": bool(spare and worker == spare),
        "problem": problem,
    }


def _own_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` alone (its threads, not its children)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def worker_started(log: Path, profile: str) -> float | None:
    """The time (epoch seconds) of the JSON log line saying ``profile``'s worker started."""
    needle = f"agent worker of profile {profile} started"
    for line in log.read_bytes().splitlines():
        if needle.encode() in line and line.startswith(b"{"):
            return datetime.fromisoformat(orjson.loads(line)["time"]).timestamp()
    return None


def run_cold(targets: list[AgentTarget], samples: int, log: Log) -> list[dict[str, Any]]:
    """``samples`` rounds of one cold first turn per system (a new profile each,
    ``cold-<round>``), the order of the systems rotated per round."""
    n, runs = Counter(), []
    for i in range(samples):
        for target in _rotated(targets, i):
            profile = f"cold-{i + 1}"
            figures = (cold_hermes if target.kind == "hermes" else cold_hermes_api)(target, profile, n)
            runs.append({"sample": i + 1, "target": target.name, **figures})
            log(f"cold {i + 1} {target.name:<20} " + "  ".join(
                f"{k} {v:.2f}" for k, v in figures.items() if isinstance(v, float)
            ) + (f"  PROBLEM {figures['problem']}" if figures["problem"] else ""))  # fmt: skip
    return runs


# -- memory and concurrency ------------------------------------------------------------


def rss_mb(pid: int) -> dict[str, float]:
    """VmRSS and PSS (``smaps_rollup``: shared pages split among their users) in MB, of
    ``pid`` alone (not its children)."""
    found = {"rss_mb": 0.0, "pss_mb": 0.0}
    for path, key, name in (
        (f"/proc/{pid}/status", "VmRSS:", "rss_mb"),
        (f"/proc/{pid}/smaps_rollup", "Pss:", "pss_mb"),
    ):
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    found[name] = int(line.split()[1]) / 1024
        except OSError:
            pass
    return found


def warm_profile_memory(hermes: AgentTarget, api: AgentTarget) -> dict[str, Any]:
    """The warm profile's process on each side, after the warm rounds."""
    worker = worker_pids(api).get(WARM_PROFILE)
    return {
        "hermes_gateway": rss_mb(hermes.procs[WARM_PROFILE].pid),
        "hermes_api_worker": rss_mb(worker) if worker else None,
        "hermes_api_server": rss_mb(api.procs["server"].pid),
    }


def warm_wide(
    hermes: AgentTarget, api: AgentTarget, multiplexer: AgentTarget, profiles: list[str], log: Log
) -> dict[str, Any]:
    """``profiles`` warm on every side (a text, a memory and a streamed turn each), then
    the memory of everything that serves them."""
    n = Counter()
    with httpx.Client(timeout=300) as client:
        for profile in profiles:
            seconds = start_gateway(hermes, profile)
            log(f"gateway {profile} listening after {seconds:.2f} s")
            for target in (hermes, api, multiplexer):
                for kind, stream in (("text", False), ("memory", False), ("text", True)):
                    _, problem = agent_turn(client, target.url(profile), target.key, profile, kind, stream, n())
                    if problem:
                        log(f"warm-up {target.name} {profile}: {problem}")
    gateways = [rss_mb(hermes.procs[p].pid) for p in profiles]
    workers = worker_pids(api)
    per_worker = [rss_mb(workers[p]) for p in profiles if p in workers]
    server = rss_mb(api.procs["server"].pid)
    total = {k: server[k] + sum(w[k] for w in per_worker) for k in ("rss_mb", "pss_mb")}
    return {
        "profiles": len(profiles),
        "multiplexer": rss_mb(multiplexer.procs["gateway"].pid),
        "hermes_total": {k: sum(g[k] for g in gateways) for k in ("rss_mb", "pss_mb")},
        "hermes_per_gateway": gateways,
        "hermes_api_total": total,
        "hermes_api_server": server,
        "hermes_api_workers": per_worker,
    }


def concurrent_run(target: AgentTarget, profiles: list[str], seconds: float, upstream: Upstream) -> dict[str, Any]:
    """``CLIENTS`` clients, each on one of ``profiles`` in turn, sending text turns until
    ``seconds`` have passed; every turn started is awaited."""
    n, lock = Counter(), threading.Lock()
    latencies: list[float] = []
    problems: list[str] = []
    deadline = time.perf_counter() + seconds

    def client_loop(profile: str) -> None:
        with httpx.Client(timeout=300) as client:
            while time.perf_counter() < deadline:
                took, problem = agent_turn(client, target.url(profile), target.key, profile, "text", False, n())
                with lock:
                    latencies.append(took * 1000)
                    if problem:
                        problems.append(problem)

    meter = Meter(target.pids(), [upstream.proc.pid])
    threads = [threading.Thread(target=client_loop, args=(profiles[i % len(profiles)],)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    figures = meter.read()
    lat = sorted(latencies)
    return {
        "turns": len(lat),
        "turns_per_s": len(lat) / figures["wall_s"],
        "p50_ms": lat[len(lat) // 2] if lat else None,
        "cpu_ms_per_turn": 1000 * figures["cpu_s"] / len(lat) if lat else None,
        "other_load_cores": figures["other_cores"],
        "errors": len(problems),
        "problem": problems[0] if problems else "",
    }


def run_concurrency(
    targets: list[AgentTarget], profiles: list[str], *, rounds: int, seconds: float, upstream: Upstream, log: Log
) -> list[dict[str, Any]]:
    runs = []
    for r in range(rounds):
        for target in _rotated(targets, r):
            figures = concurrent_run(target, profiles, seconds, upstream)
            runs.append({"round": r + 1, "target": target.name, **figures})
            log(
                f"round {r + 1} {CLIENTS} clients over {len(profiles)} profiles {target.name:<12} "
                f"{figures['turns_per_s']:6.2f} turns/s  p50 {figures['p50_ms'] or 0:7.1f} ms  "
                f"other load {figures['other_load_cores']:.2f}"
                + (f"  ERRORS {figures['errors']}" if figures["errors"] else "")
            )
    return runs
