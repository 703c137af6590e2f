"""Figures into tables: medians over rounds, min–max spread, ratios, the issue's targets.

Every part of the benchmark saves its raw figures as JSON (``bench/results/<part>.json``);
``render`` turns whichever parts exist into ``bench/RESULTS.md``, each part with the
date, machine, command and load it was measured under.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
PARTS = ("summary", "gateways", "ops", "scale", "streams", "agent")


# -- conditions -------------------------------------------------------------------------


def _run(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr).strip() else "?"


def _version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return "-"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        pass
    root = Path(__file__).resolve().parent.parent
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "hermes_api_commit": _run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"]),
        "packages": {
            m: _version(m)
            for m in (
                "uvicorn",
                "uvloop",
                "httptools",
                "starlette",
                "sse-starlette",
                "httpx",
                "httpx-aiohttp",
                "aiohttp",
                "orjson",
            )
        },
        "nginx": _run(["nginx", "-v"]),
        "wrk": " ".join(_run(["wrk", "-v"]).split()[:2]),
    }


def conditions(command: str, banner: str = "") -> dict[str, Any]:
    """Date, machine, command, a note on the conditions, and the load average when a
    part starts."""
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "banner": banner,
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
        "machine": machine(),
    }


def save(part: str, data: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    data["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for path in (RESULTS_DIR / f"{part}.json", RESULTS_DIR / f"{part}-{stamp}.json"):
        path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    return RESULTS_DIR / f"{part}.json"


def load(part: str) -> dict[str, Any] | None:
    path = RESULTS_DIR / f"{part}.json"
    return orjson.loads(path.read_bytes()) if path.exists() else None


# -- aggregation ------------------------------------------------------------------------


def med(values: Iterable[float | None]) -> float | None:
    xs = [v for v in values if v is not None]
    return statistics.median(xs) if xs else None


def aggregate(runs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(scenario, target) -> medians, min/max of req/s and CPU, max RSS, errors."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["scenario"], run["target"]), []).append(run)
    out = {}
    for key, rs in groups.items():
        agg: dict[str, Any] = {
            k: med(r[k] for r in rs)
            for k in ("rps", "p50_ms", "p90_ms", "p99_ms", "cpu_ms_per_req", "other_load_cores")
        }
        agg["aux_cpu_ms_per_req"] = med(r.get("aux_cpu_ms_per_req") for r in rs)
        agg["rps_min"], agg["rps_max"] = min(r["rps"] for r in rs), max(r["rps"] for r in rs)
        cpus = [r["cpu_ms_per_req"] for r in rs if r["cpu_ms_per_req"] is not None]
        agg["cpu_min"], agg["cpu_max"] = (min(cpus), max(cpus)) if cpus else (None, None)
        agg["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rs)
        agg["errors"] = sum(r["errors"] for r in rs)
        agg["rounds"] = len(rs)
        out[key] = agg
    return out


def paired(runs: list[dict[str, Any]], scenario: str, a: str, b: str, field: str) -> float | None:
    """Median over rounds of ``a``'s ``field`` minus ``b``'s in the same round."""
    by = {(r["round"], r["target"]): r[field] for r in runs if r["scenario"] == scenario}
    diffs = [by[(n, a)] - by[(n, b)] for (n, t) in by if t == a and (n, b) in by]
    return med(diffs)


def _ratio(x: float | None, y: float | None) -> float | None:
    return x / y if x is not None and y else None


# -- markdown ---------------------------------------------------------------------------


def _f(x: float | None, fmt: str = "{:.1f}") -> str:
    return "–" if x is None else fmt.format(x)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _conditions_md(data: dict[str, Any]) -> str:
    m = data["machine"]
    pk = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    note = f"> {data['banner']}\n\n" if data.get("banner") else ""
    return note + (
        f"- date: {data['date']}; command: `{data['command']}`\n"
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}, "
        f"Python {m['python']}, hermes-api {m['hermes_api_commit']}; {m['nginx']}; {m['wrk']}\n"
        f"- packages: {pk}\n"
        f"- load average (1/5/15 min) at start {' '.join(data['loadavg_start'])}, at end "
        f"{' '.join(data.get('loadavg_end', ['?']))}"
    )


def gateways_md(
    data: dict[str, Any],
    targets_check: Callable[..., list[list[str]]] | None = None,
    title: str = "Gateways side by side",
) -> str:
    runs = data["runs"]
    agg = aggregate(runs)
    scenarios = list(dict.fromkeys(r["scenario"] for r in runs))
    targets = list(dict.fromkeys(r["target"] for r in runs))
    portkey = "portkey" in targets
    database = any(a["aux_cpu_ms_per_req"] is not None for a in agg.values())
    parts = [
        f"## {title}\n",
        _conditions_md(data),
        f"- {data['rounds']} interleaved rounds of {data['seconds']} s per run; gateway pinned to CPU 0, "
        "wrk and nginx (and the harness) to CPU 1; one worker each (`[w2]`: two workers on CPU 0, "
        "`[w2-2cpu]`: two workers on CPUs 0 and 1, beside wrk and nginx).",
        "- req/s and CPU: median (min–max) over rounds; latencies: medians of each run's wrk percentiles; "
        "peak RSS: the largest VmHWM seen; 'other load': CPU cores busy with work that was not the "
        "benchmark's during the runs (median) — the noise.\n",
    ]
    for scenario in scenarios:
        direct, litellm = agg.get((scenario, "direct")), agg.get((scenario, "litellm"))
        peer = agg.get((scenario, "portkey"))
        rows = []
        for target in targets:
            a = agg.get((scenario, target))
            if a is None:
                continue
            rows.append(
                [
                    target,
                    f"{_f(a['rps'], '{:.0f}')} ({_f(a['rps_min'], '{:.0f}')}–{_f(a['rps_max'], '{:.0f}')})",
                    _f(a["p50_ms"], "{:.2f}"),
                    _f(a["p90_ms"], "{:.2f}"),
                    _f(a["p99_ms"], "{:.2f}"),
                    f"{_f(a['cpu_ms_per_req'], '{:.3f}')} ({_f(a['cpu_min'], '{:.3f}')}–{_f(a['cpu_max'], '{:.3f}')})",
                    *([_f(a["aux_cpu_ms_per_req"], "{:.3f}")] if database else []),
                    _f(a["peak_rss_mb"], "{:.0f}"),
                    _f(_ratio(a["rps"], direct["rps"] if direct else None), "{:.2f}"),
                    _f(_ratio(a["rps"], litellm["rps"] if litellm else None), "{:.1f}×"),
                    *([_f(_ratio(a["rps"], peer["rps"] if peer else None), "{:.1f}×")] if portkey else []),
                    _f(a["other_load_cores"], "{:.2f}"),
                    str(a["errors"]),
                ]
            )
        parts.append(f"### {scenario}\n")
        parts.append(
            table(
                [
                    "target",
                    "req/s",
                    "p50 ms",
                    "p90 ms",
                    "p99 ms",
                    "CPU ms/req",
                    *(["DB CPU ms/req"] if database else []),
                    "peak RSS MB",
                    "÷ direct",
                    "× LiteLLM",
                    *(["× Portkey"] if portkey else []),
                    "other load",
                    "errors",
                ],
                rows,
            )
            + "\n"
        )
    parts += tools_md(agg, targets)
    skipped = {k: v for k, v in data.get("skipped", {}).items() if "does not offer" not in v}
    if skipped:
        parts.append("Skipped: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()) + "\n")
    if targets_check:
        parts.append("### Targets of issue 6 (hermes-api)\n")
        parts.append(table(["target", "wanted", "measured", "met"], targets_check(data)) + "\n")
    return "\n".join(parts)


TEXT_VS_TOOLS = ("responses c=32", "responses tools c=32", "responses stream c=32", "responses tools stream c=32")


def tools_md(agg: dict[tuple[str, str], dict[str, Any]], targets: list[str]) -> list[str]:
    """CPU per request of the Responses scenarios, text answer beside function call
    (issue 10), for each target that ran a function-call scenario."""
    rows = [
        [target, *(_f((agg.get((s, target)) or {}).get("cpu_ms_per_req"), "{:.3f}") for s in TEXT_VS_TOOLS)]
        for target in targets
        if any((s, target) in agg for s in TEXT_VS_TOOLS[1::2])
    ]
    if not rows:
        return []
    header = ["target", "text", "function call", "text, stream", "function call, stream"]
    return ["### Responses: CPU ms per request, text answer beside function call\n", table(header, rows) + "\n"]


def gateway_targets(data: dict[str, Any], name: str = "hermes-api") -> list[list[str]]:
    """The issue's gateway targets, checked on the medians of this run."""
    runs = data["runs"]
    agg = aggregate(runs)

    def get(scenario: str, target: str, field: str) -> float | None:
        a = agg.get((scenario, target))
        return a[field] if a else None

    rows = []

    def check(label: str, wanted: str, value: float | None, ok: bool | None, fmt: str = "{:.2f}") -> None:
        rows.append([label, wanted, _f(value, fmt), "–" if ok is None else ("yes" if ok else "**no**")])

    for scenario, factor in (("chat c=32", 15), ("chat stream c=32", 25)):
        r = _ratio(get(scenario, name, "rps"), get(scenario, "litellm", "rps"))
        check(f"{scenario}: req/s vs LiteLLM", f"≥ {factor}×", r, None if r is None else r >= factor, "{:.1f}×")
    for scenario, limit in (("chat c=32", 0.45), ("chat stream c=32", 0.7)):
        cpu = get(scenario, name, "cpu_ms_per_req")
        check(f"{scenario}: CPU ms/request", f"≤ {limit}", cpu, None if cpu is None else cpu <= limit, "{:.3f}")
        r = _ratio(cpu, get(scenario, "floor", "cpu_ms_per_req"))
        check(f"{scenario}: CPU vs floor passthrough", "≤ 1.6×", r, None if r is None else r <= 1.6, "{:.2f}×")
    added = paired(runs, "chat c=1", name, "direct", "p50_ms")
    check("chat c=1: added p50 over direct (ms)", "≤ 0.5", added, None if added is None else added <= 0.5, "{:.3f}")
    c1, c32 = get("chat c=1", name, "rps"), get("chat c=32", name, "rps")
    r = _ratio(c32, c1)
    check("req/s at c=32 ÷ req/s at c=1", "≥ 1", r, None if r is None else r >= 1, "{:.2f}")
    return rows


def paired_ratio(runs: list[dict[str, Any]], scenario: str, a: str, b: str, field: str) -> float | None:
    """Median over rounds of ``a``'s ``field`` divided by ``b``'s in the same round."""
    by = {(r["round"], r["target"]): r[field] for r in runs if r["scenario"] == scenario}
    return med(by[(n, a)] / by[(n, b)] for (n, t) in by if t == a and by.get((n, b)) and by[(n, a)] is not None)


# The variants' meaning, for the ops part's tables.
VARIANT_NOTES = {
    "hermes-api[pg]": "PostgreSQL store (SQLite: hermes-api)",
    "hermes-api[w2]": "--workers 2, both on CPU 0",
    "hermes-api[w2-2cpu]": "--workers 2 on CPUs 0 and 1 (shared with wrk, nginx)",
    "hermes-api[off]": "metrics: false, record_usage: false",
    "hermes-api[no-usage]": "record_usage: false (metrics on)",
    "hermes-api[no-metrics]": "metrics: false (usage rows on)",
}
OBSERVATION = (
    ("metrics and usage rows", "hermes-api"),
    ("metrics alone", "hermes-api[no-usage]"),
    ("usage rows alone", "hermes-api[no-metrics]"),
)
OBSERVATION_LIMIT = 0.10


def _beside(a: dict[str, Any] | None, b: dict[str, Any] | None, field: str, fmt: str) -> str:
    """``a``'s median of ``field`` beside ``b``'s: "0.552 / 0.601"."""
    return f"{_f(a[field] if a else None, fmt)} / {_f(b[field] if b else None, fmt)}"


def variants_md(data: dict[str, Any], agg: dict[tuple[str, str], dict[str, Any]]) -> str:
    """Each variant beside ``hermes-api``: medians side by side, and the median of the
    per-round ratios (the steadier figure on a shared machine)."""
    runs = data["runs"]
    scenarios = list(dict.fromkeys(r["scenario"] for r in runs))
    rows = []
    for variant, note in VARIANT_NOTES.items():
        for scenario in scenarios:
            mine, base = agg.get((scenario, variant)), agg.get((scenario, "hermes-api"))
            if mine is None:
                continue
            fields = ("rps", "cpu_ms_per_req", "p99_ms")
            ratios = [paired_ratio(runs, scenario, variant, "hermes-api", f) for f in fields]
            rows.append([
                variant, note, scenario,
                _beside(mine, base, "rps", "{:.0f}"), _f(ratios[0], "{:.2f}"),
                _beside(mine, base, "cpu_ms_per_req", "{:.3f}"), _f(ratios[1], "{:.2f}"),
                _beside(mine, base, "p99_ms", "{:.1f}"), _f(ratios[2], "{:.2f}"),
            ])  # fmt: skip
    if not rows:
        return ""
    header = ["target", "what differs", "scenario", "req/s (it / hermes-api)", "req/s ×"]
    header += ["CPU ms/req (it / hermes-api)", "CPU/req ×", "p99 ms (it / hermes-api)", "p99 ×"]
    return (
        "### hermes-api's variants beside hermes-api: medians side by side, and the median of per-round ratios\n\n"
        + table(header, rows)
        + "\n"
    )


def observation_md(data: dict[str, Any], agg: dict[tuple[str, str], dict[str, Any]]) -> str:
    """CPU per request with metrics and usage rows on (each, both; and any ``--compare``
    checkout, both on) over ``hermes-api[off]``, against ``OBSERVATION_LIMIT``."""
    runs = data["runs"]
    scenarios = list(dict.fromkeys(r["scenario"] for r in runs))
    targets = list(dict.fromkeys(r["target"] for r in runs))
    if "hermes-api[off]" not in targets:
        return ""
    observed = list(OBSERVATION) + [
        (f"metrics and usage rows, checkout {t[len('hermes-api[') : -1]}", t)
        for t in targets
        if t.startswith("hermes-api[") and t not in VARIANT_NOTES
    ]
    rows = []
    for scenario in scenarios:
        off = agg.get((scenario, "hermes-api[off]"))
        for label, target in observed:
            r = paired_ratio(runs, scenario, target, "hermes-api[off]", "cpu_ms_per_req")
            if r is None:
                continue
            cost = r - 1
            met = "yes" if cost <= OBSERVATION_LIMIT else "**no**"
            rows.append([
                scenario, label, _beside(agg.get((scenario, target)), off, "cpu_ms_per_req", "{:.3f}"),
                f"{100 * cost:+.1f} %", f"≤ {100 * OBSERVATION_LIMIT:.0f} %", met,
            ])  # fmt: skip
    if not rows:
        return ""
    header = ["scenario", "on", "CPU ms/req (on / off, medians)", "cost: median of per-round ratios − 1"]
    return (
        "### What observing a request costs: CPU per request beside hermes-api[off]\n\n"
        + table([*header, "target", "met"], rows)
        + "\n"
    )


def ops_md(data: dict[str, Any]) -> str:
    """Issue 12's figures: both peers, and each variant of hermes-api beside the
    default one, medians and ratios paired per round; the cost of observing a request."""
    agg = aggregate(data["runs"])
    parts = [gateways_md(data, title="Running it as a service (issue 12): peers, store, workers, observation")]
    parts += [md for md in (variants_md(data, agg), observation_md(data, agg)) if md]
    return "\n".join(parts)


def render(parts_md: dict[str, str]) -> str:
    head = [
        "# hermes-api benchmark results\n",
        "Written by `bench/run.sh` (see `bench/README.md`); each part lists the date, machine, command "
        "and load it was measured under. Figures from a 2-core machine shared with other work are noisy: "
        "read the ratios between targets measured in the same run, not the absolute numbers.\n",
    ]
    return "\n".join(head + [parts_md[p] for p in PARTS if p in parts_md])


def scale_md(data: dict[str, Any]) -> str:
    rows = [
        [
            f"{r['profiles']:,}",
            _f(r["startup_s"], "{:.2f}"),
            _f(r["idle_rss_mb"], "{:.0f}"),
            _f(r["models_p50_ms"], "{:.2f}"),
            _f(r["models_p90_ms"], "{:.2f}"),
            f"{r['models_listed']:,}",
            _f(r["routing_us"], "{:.1f}"),
            _f(r["chat_c1_p50_ms"], "{:.2f}"),
            _f(r["chat_c1_cpu_ms"], "{:.3f}"),
        ]
        for r in data["sizes"]
    ]
    parts = [
        "## Profile scale\n",
        _conditions_md(data),
        '- one hermes-api worker on CPU 0, `expose: "*"`, every profile with config.yaml, .env, SOUL.md and '
        "memories; startup = launch to port accepting; routing = µs per `registry.select` + `resolve` of a "
        f"random profile, in-process; chat c=1 = wrk, {data['seconds']} s, one connection.\n",
        table(
            [
                "profiles",
                "startup s",
                "idle RSS MB",
                "/v1/models p50 ms",
                "p90 ms",
                "models listed",
                "routing µs",
                "chat c=1 p50 ms",
                "chat CPU ms/req",
            ],
            rows,
        )
        + "\n",
    ]
    rows = scale_targets(data)
    if rows:
        parts += ["### Targets of issue 6\n", table(["target", "wanted", "measured", "met"], rows) + "\n"]
    return "\n".join(parts)


def _row(label: str, wanted: str, shown: str, ok: bool) -> list[str]:
    return [label, wanted, shown, "yes" if ok else "**no**"]


def scale_targets(data: dict[str, Any]) -> list[list[str]]:
    """The issue's profile-scale targets, checked (10,000 profiles against 10)."""
    by = {r["profiles"]: r for r in data["sizes"]}
    big, small = by.get(10_000), by.get(10)
    if big is None:
        return []
    rows = [
        _row("startup at 10,000 profiles", "≤ 3 s", f"{big['startup_s']:.2f} s", big["startup_s"] <= 3),
        _row("/v1/models p50 at 10,000", "≤ 25 ms", f"{big['models_p50_ms']:.2f} ms", big["models_p50_ms"] <= 25),
        _row("idle RSS at 10,000", "≤ 80 MB", f"{big['idle_rss_mb']:.0f} MB", big["idle_rss_mb"] <= 80),
    ]
    if small is not None:
        r = big["routing_us"] / small["routing_us"]
        rows.append(_row("routing 10,000 ÷ 10: in-process select + resolve", "≤ 1.2×", f"{r:.2f}×", r <= 1.2))
        if big["chat_c1_cpu_ms"] and small["chat_c1_cpu_ms"]:
            r = big["chat_c1_cpu_ms"] / small["chat_c1_cpu_ms"]
            rows.append(_row("routing 10,000 ÷ 10: chat c=1 CPU per request", "≤ 1.2×", f"{r:.2f}×", r <= 1.2))
    return rows


def streams_md(data: dict[str, Any]) -> str:
    rows = [
        [
            r["target"],
            f"{r['completed']}/{r['streams']}",
            _f(r["wall_s"], "{:.1f}"),
            _f(r["stream_s_p50"], "{:.2f}"),
            _f(r["stream_s_max"], "{:.2f}"),
            _f(r["rss_idle_mb"], "{:.0f}"),
            _f(r["peak_rss_mb"], "{:.0f}"),
            _f(r["cpu_s"], "{:.2f}"),
            ", ".join(f"{k}: {v}" for k, v in r["problems"].items()) or "none",
        ]
        for r in data["targets"]
    ]
    parts = [
        "## Concurrent slow streams\n",
        _conditions_md(data),
        f"- {data['count']} streaming chat requests opened at once through one worker (CPU 0); the upstream "
        f"(`bench/slow_upstream.py`, CPU 1) trickles each answer over {data['stream_seconds']} s "
        "(24 events); each stream is checked for every word, the usage chunk and `[DONE]`.\n",
        table(
            [
                "target",
                "complete",
                "wall s",
                "stream p50 s",
                "stream max s",
                "idle RSS MB",
                "peak RSS MB",
                "CPU s",
                "problems",
            ],
            rows,
        )
        + "\n",
    ]
    rows = streams_targets(data)
    if rows:
        parts += ["### Targets of issue 6\n", table(["target", "wanted", "measured", "met"], rows) + "\n"]
    return "\n".join(parts)


def streams_targets(data: dict[str, Any]) -> list[list[str]]:
    hermes = next((r for r in data["targets"] if r["target"] == "hermes-api"), None)
    if hermes is None:
        return []
    n, done, peak = hermes["streams"], hermes["completed"], hermes["peak_rss_mb"]
    return [
        _row(f"{n:,} concurrent slow streams: all complete", f"{n}/{n}", f"{done}/{n}", done == n),
        _row(f"{n:,} concurrent slow streams: peak RSS", "≤ 300 MB", f"{peak:.0f} MB", peak <= 300),
    ]


def summary_md(rows: list[list[str]]) -> str:
    """Every target of issue 6 from the parts at hand, in one table."""
    return "## Targets of issue 6, all parts\n\n" + table(["target", "wanted", "measured", "met"], rows) + "\n"
