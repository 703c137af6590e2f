"""The agent benchmark's figures (``bench/results/agent.json``) as tables, with the
targets of issue 9 checked: a warm turn's time added over the upstream within 1.2× of
Hermes's own server, a profile's first turn on a running hermes-api within 1.5 s, and
no more memory per profile than Hermes's own server."""

from __future__ import annotations

import math
from typing import Any

from .report import _conditions_md, _f, _row, med, table

HERMES, API, UPSTREAM = "hermes", "hermes-api", "upstream"
WARM_RATIO, COLD_S = 1.2, 1.5


def pct(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (nearest rank) of ``values``."""
    xs = sorted(values)
    return xs[max(0, math.ceil(q / 100 * len(xs)) - 1)] if xs else None


def _sub(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def warm_summary(runs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(scenario, target) -> p50 and p99 over every turn of every round, the same less
    the upstream's (the turn sent straight to it), CPU ms per turn (median over rounds),
    other load (median), errors."""
    pooled: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        pooled.setdefault((run["scenario"], run["target"]), []).append(run)
    out = {}
    for key, rs in pooled.items():
        lat = [x for r in rs for x in r["latencies_ms"]]
        out[key] = {
            "turns": len(lat),
            "p50_ms": pct(lat, 50),
            "p99_ms": pct(lat, 99),
            "cpu_ms_per_turn": med(r["cpu_ms_per_turn"] for r in rs),
            "other_load_cores": med(r["other_load_cores"] for r in rs),
            "errors": sum(r["errors"] for r in rs),
        }
    for (scenario, _), agg in out.items():
        up = out.get((scenario, UPSTREAM), {})
        agg["added_p50_ms"] = _sub(agg["p50_ms"], up.get("p50_ms"))
        agg["added_p99_ms"] = _sub(agg["p99_ms"], up.get("p99_ms"))
    return out


def round_ratios(runs: list[dict[str, Any]], scenario: str, a: str, b: str) -> list[float]:
    """Per round: ``a``'s added p50 ÷ ``b``'s (both less the upstream's p50 that round)."""
    by = {(r["round"], r["target"]): pct(r["latencies_ms"], 50) for r in runs if r["scenario"] == scenario}
    out = []
    for rnd in sorted({k[0] for k in by}):
        up, x, y = by.get((rnd, UPSTREAM)), by.get((rnd, a)), by.get((rnd, b))
        ratio = _div(_sub(x, up), _sub(y, up))
        if ratio is not None:
            out.append(ratio)
    return out


def _peer(target: str, targets: list[str]) -> str | None:
    """The Hermes system a hermes-api system is compared with: the same variant
    (``hermes-api[skip-ssl-guard]`` with ``hermes[skip-ssl-guard]``), else plain Hermes."""
    if not target.startswith(API):
        return None
    same = HERMES + target[len(API) :]
    return same if same in targets else HERMES


def warm_md(data: dict[str, Any]) -> list[str]:
    runs = data["warm"]
    agg = warm_summary(runs)
    scenarios = list(dict.fromkeys(r["scenario"] for r in runs))
    targets = list(dict.fromkeys(r["target"] for r in runs))
    rows = []
    for scenario in scenarios:
        for target in targets:
            a = agg.get((scenario, target))
            if a is None:
                continue
            base = _peer(target, targets)
            ratio = _div(a["added_p50_ms"], (agg.get((scenario, base)) or {}).get("added_p50_ms")) if base else None
            rr = round_ratios(runs, scenario, target, base) if base else []
            spread = f" ({min(rr):.2f}–{max(rr):.2f})" if rr else ""
            cpu = _div(a["cpu_ms_per_turn"], (agg.get((scenario, base)) or {}).get("cpu_ms_per_turn")) if base else None
            rows.append([scenario, target, str(a["turns"]), _f(a["p50_ms"]), _f(a["p99_ms"]),
                         _f(a["added_p50_ms"]) if target != UPSTREAM else "–",
                         _f(a["added_p99_ms"]) if target != UPSTREAM else "–",
                         _f(ratio, "{:.2f}×") + (spread if ratio is not None else ""),
                         _f(a["cpu_ms_per_turn"]), _f(cpu, "{:.2f}×"), _f(a["other_load_cores"], "{:.2f}"),
                         str(a["errors"])])  # fmt: skip
    header = ["turn", "system", "turns", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms",
              "added p50 ÷ Hermes's (rounds)", "CPU ms/turn", "CPU ÷ Hermes's", "other load", "errors"]  # fmt: skip
    return ["### Warm turns\n", table(header, rows) + "\n"]


def cold_md(data: dict[str, Any]) -> list[str]:
    runs = data["cold"]
    rows = []
    for target in dict.fromkeys(r["target"] for r in runs):
        rs = [r for r in runs if r["target"] == target]
        spare = [r for r in rs if r.get("from_spare")]
        rows.append([target, str(len(rs)), _f(med(r.get("listening_s") for r in rs), "{:.2f}"),
                     _f(med(r.get("spawn_s") for r in rs), "{:.2f}"), _f(med(r["first_turn_s"] for r in rs), "{:.2f}"),
                     _f(med(r["total_s"] for r in rs), "{:.2f}"),
                     f"{min(r['total_s'] for r in rs):.2f}–{max(r['total_s'] for r in rs):.2f}",
                     _f(med(r.get("cpu_s") for r in rs), "{:.2f}"),
                     f"{len(spare)} ({_f(med(r.get('spare_cpu_s') for r in spare), '{:.2f}')} s)" if spare else "–",
                     _f(med(r.get("other_load_cores") for r in rs), "{:.2f}"),
                     str(sum(bool(r["problem"]) for r in rs))])  # fmt: skip
    header = ["system", "samples", "launch → listening s", "worker spawn s", "first request → answer s",
              "whole s (median)", "whole s (min–max)", "CPU s (median)", "from the spare (its imports' CPU, ahead)",
              "other load", "errors"]  # fmt: skip
    return ["### Cold: the first turn of a new profile\n", table(header, rows) + "\n"]


def memory_md(data: dict[str, Any]) -> list[str]:
    warm, wide = data["warm_memory"], data["wide"]
    worker = warm.get("hermes_api_worker") or {}
    w = wide["hermes_api_workers"]
    gw = wide["hermes_per_gateway"]
    rows = [
        ["one warm profile: its process", _f(warm["hermes_gateway"]["rss_mb"], "{:.0f}"),
         _f(worker.get("rss_mb"), "{:.0f}"), _f(warm["hermes_gateway"]["pss_mb"], "{:.0f}"),
         _f(worker.get("pss_mb"), "{:.0f}")],
        [f"{wide['profiles']} warm profiles: per profile process (median)", _f(med(g["rss_mb"] for g in gw), "{:.0f}"),
         _f(med(x["rss_mb"] for x in w), "{:.0f}"), _f(med(g["pss_mb"] for g in gw), "{:.0f}"),
         _f(med(x["pss_mb"] for x in w), "{:.0f}")],
        [f"{wide['profiles']} warm profiles: everything (hermes-api: server + {len(w)} workers)",
         _f(wide["hermes_total"]["rss_mb"], "{:.0f}"), _f(wide["hermes_api_total"]["rss_mb"], "{:.0f}"),
         _f(wide["hermes_total"]["pss_mb"], "{:.0f}"), _f(wide["hermes_api_total"]["pss_mb"], "{:.0f}")],
        ["hermes-api's server alone (10 profiles)", "–", _f(wide["hermes_api_server"]["rss_mb"], "{:.0f}"), "–",
         _f(wide["hermes_api_server"]["pss_mb"], "{:.0f}")],
    ]  # fmt: skip
    if wide.get("multiplexer"):
        mx = wide["multiplexer"]
        rows.append([f"{wide['profiles']} warm profiles: Hermes's multiplexer (one gateway for all)",
                     _f(mx["rss_mb"], "{:.0f}"), "–", _f(mx["pss_mb"], "{:.0f}"), "–"])  # fmt: skip
    header = ["", "Hermes RSS MB", "hermes-api RSS MB", "Hermes PSS MB", "hermes-api PSS MB"]
    return ["### Memory\n", table(header, rows) + "\n"]


def concurrency_md(data: dict[str, Any]) -> list[str]:
    runs = data["concurrency"]
    rows = []
    for target in dict.fromkeys(r["target"] for r in runs):
        rs = [r for r in runs if r["target"] == target]
        tps = [r["turns_per_s"] for r in rs]
        rows.append([target, f"{_f(med(tps), '{:.2f}')} ({min(tps):.2f}–{max(tps):.2f})",
                     _f(med(r["p50_ms"] for r in rs), "{:.0f}"), _f(med(r["cpu_ms_per_turn"] for r in rs)),
                     _f(med(r["other_load_cores"] for r in rs), "{:.2f}"),
                     str(sum(r["errors"] for r in rs))])  # fmt: skip
    header = ["system", "turns/s (min–max)", "turn p50 ms", "CPU ms/turn", "other load", "errors"]
    return ["### 8 concurrent turns over 4 profiles\n", table(header, rows) + "\n"]


def agent_targets(data: dict[str, Any]) -> list[list[str]]:
    """Issue 9's targets, checked on this run."""
    agg = warm_summary(data["warm"])
    rows = []
    for scenario in dict.fromkeys(r["scenario"] for r in data["warm"]):
        ratio = _div((agg.get((scenario, API)) or {}).get("added_p50_ms"),
                     (agg.get((scenario, HERMES)) or {}).get("added_p50_ms"))  # fmt: skip
        if ratio is not None:
            rows.append(_row(f"warm {scenario} turn: added p50 vs Hermes's server", f"≤ {WARM_RATIO}×",
                             f"{ratio:.2f}×", ratio <= WARM_RATIO))  # fmt: skip
        cpu = _div((agg.get((scenario, API)) or {}).get("cpu_ms_per_turn"),
                   (agg.get((scenario, HERMES)) or {}).get("cpu_ms_per_turn"))  # fmt: skip
        if cpu is not None:
            rows.append(_row(f"warm {scenario} turn: CPU per turn vs Hermes's server", f"≤ {WARM_RATIO}×",
                             f"{cpu:.2f}×", cpu <= WARM_RATIO))  # fmt: skip
    cold = med(r["total_s"] for r in data["cold"] if r["target"] == API)
    if cold is not None:
        rows.append(_row("first turn of a profile on a running hermes-api", f"≤ {COLD_S} s", f"{cold:.2f} s",
                         cold <= COLD_S))  # fmt: skip
    worker, gateway = data["warm_memory"].get("hermes_api_worker"), data["warm_memory"]["hermes_gateway"]
    if worker:
        rows.append(_row("RSS of a warm profile's process", f"≤ Hermes's {gateway['rss_mb']:.0f} MB",
                         f"{worker['rss_mb']:.0f} MB", worker["rss_mb"] <= gateway["rss_mb"]))  # fmt: skip
    wide = data["wide"]
    mine, theirs = wide["hermes_api_total"]["rss_mb"], wide["hermes_total"]["rss_mb"]
    rows.append(_row(f"RSS of {wide['profiles']} warm profiles, all processes", f"≤ Hermes's {theirs:.0f} MB",
                     f"{mine:.0f} MB", mine <= theirs))  # fmt: skip
    if wide.get("multiplexer"):
        one = wide["multiplexer"]["rss_mb"]
        rows.append(_row("the same, against Hermes's multiplexer (one process)", f"≤ {one:.0f} MB",
                         f"{mine:.0f} MB", mine <= one))  # fmt: skip
    return rows


def agent_md(data: dict[str, Any]) -> str:
    variants = {k: v["env"] for k, v in data["targets"].items() if v["env"]}
    parts = [
        "## The agent runtime beside Hermes's own API server (issue 9)\n",
        _conditions_md(data),
        f"- hermes-agent {data['hermes_agent']}; Hermes's side: `hermes -p NAME gateway run` with its API server, "
        "one gateway per profile, each in a HOME of its own; hermes-api's: one server, the profiles on the agent "
        "runtime (a worker process each). Same profile files on both (`bench/agent_targets.py`): a custom endpoint "
        "on the scripted upstream (`bench/agent_upstream.py`, stdlib, keep-alive, TCP_NODELAY, answers at once), "
        "`model.context_length` and `agent.environment_probe: false`, toolsets memory, skills, session_search, todo.",
        "- Pinning: every process of the systems on CPU 0 (hermes-api's workers inherit it); the upstream and the "
        "harness on CPU 1. 'other load': CPU cores busy with work that was not the benchmark's (median) — the noise.",
        f"- Warm: {data['rounds']} interleaved rounds of {data['turns']} sequential turns per system and turn kind; "
        "p50/p99 over all of them; 'added' = less the same turn sent straight to the upstream (a memory turn: its "
        "two calls); streams timed to the last byte. CPU ms/turn: the system's processes (median over rounds).",
    ]
    if variants:
        parts.append("- Variants: " + "; ".join(f"`{k}` with {v}" for k, v in variants.items()) + " (both sides).")
    parts.append("")
    parts += warm_md(data) + cold_md(data) + memory_md(data) + concurrency_md(data)
    parts += ["### Targets of issue 9\n", table(["target", "wanted", "measured", "met"], agent_targets(data)) + "\n"]
    return "\n".join(parts)
