"""``bench/`` stays runnable: its modules import, its fixtures are what nginx can serve,
its report renders. No process is started and nothing is timed here (the benchmark
itself is ``bench/run.sh``, never part of the test suite)."""

from __future__ import annotations

import importlib
import subprocess
from pathlib import Path

import orjson
import pytest

from bench import fixtures, gateways, report
from bench.__main__ import main as bench_main
from hermes_api.sse import EventDecoder

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.parametrize(
    "module", ["clients", "gateways", "postgres", "procs", "profile", "report", "scale", "streams", "targets", "wrk"]
)
def test_bench_modules_import(module: str) -> None:
    importlib.import_module(f"bench.{module}")


def test_fixtures_are_realistic_and_servable_by_nginx(tmp_path: Path) -> None:
    completion = orjson.loads(fixtures.completion_body())
    assert 600 <= len(fixtures.completion_body()) <= 700 and completion["usage"]["total_tokens"]
    events = EventDecoder().feed(fixtures.stream_body())
    assert events[-1] == b"[DONE]" and len(events) == 24
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "".join(
        fixtures.STREAM_WORDS
    )
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]
    call = orjson.loads(fixtures.tool_completion_body())["choices"][0]["message"]["tool_calls"][0]
    assert (call["id"], call["function"]["arguments"]) == (fixtures.TOOL_CALL_ID, fixtures.TOOL_ARGUMENTS)
    tool_events = [orjson.loads(e) for e in EventDecoder().feed(fixtures.tool_stream_body())[:-1]]
    fragments = [f for c in tool_events if c["choices"] for f in c["choices"][0]["delta"].get("tool_calls", [])]
    assert "".join(f["function"]["arguments"] for f in fragments) == fixtures.TOOL_ARGUMENTS
    assert fragments[0]["function"]["name"] == fixtures.TOOL_NAME and len(fragments) > 20
    conf = fixtures.nginx_conf(tmp_path, 8080)
    assert "$" not in fixtures.stream_body().decode() and conf.count("return 200") == 4
    assert all(len(line) < 4000 for line in conf.splitlines())  # nginx's limit per parameter


def test_scripts_parse() -> None:
    subprocess.run(["bash", "-n", str(BENCH / "run.sh")], check=True)
    assert "function done(summary, latency, requests)" in (BENCH / "post.lua").read_text()
    assert "BENCH_HEADERS" in (BENCH / "post.lua").read_text()
    assert "127.0.0.1" in (BENCH / "loopback.mjs").read_text()  # Portkey listens on the loopback only


def test_ops_report_gives_each_variant_and_the_cost_of_observing() -> None:
    """The ops part: peers' ratios, each hermes-api variant beside hermes-api, and the
    observation cost checked against its 10 % target, from per-round pairs."""
    runs = []
    figures = (("hermes-api", 0.36, 3000), ("hermes-api[off]", 0.30, 3300), ("hermes-api[no-usage]", 0.31, 3200),
               ("hermes-api[no-metrics]", 0.32, 3100), ("hermes-api[pg]", 0.40, 2500), ("litellm", 6.0, 150),
               ("portkey", 2.0, 600))  # fmt: skip
    for r in (1, 2, 3):
        for target, cpu, rps in figures:
            runs.append({"round": r, "scenario": "chat c=32", "target": target, "rps": rps, "requests": 1000,
                         "errors": 0, "p50_ms": 1.0, "p90_ms": 1.0, "p99_ms": 2.0, "cpu_ms_per_req": cpu,
                         "aux_cpu_ms_per_req": 0.05 if target == "hermes-api[pg]" else None,
                         "peak_rss_mb": 50.0, "other_load_cores": 0.1})  # fmt: skip
    text = report.ops_md({**report.conditions("python -m bench ops"), "runs": runs, "rounds": 3, "seconds": 10})
    assert "× Portkey" in text and "| hermes-api | 3000 (3000–3000)" in text and "DB CPU ms/req" in text
    assert "| hermes-api[pg] | PostgreSQL store (SQLite: hermes-api) | chat c=32 | 0.83 | 1.11 | 1.00 |" in text
    assert "| chat c=32 | metrics and usage rows | +20.0 % | ≤ 10 % | **no** |" in text
    assert "| chat c=32 | usage rows alone | +6.7 % | ≤ 10 % | yes |" in text


def test_every_variant_is_a_target() -> None:
    from bench.__main__ import KNOWN, OPS_TARGETS
    from bench.targets import VARIANTS

    assert set(OPS_TARGETS) <= set(KNOWN) and {"litellm", "portkey"} <= set(OPS_TARGETS)
    assert {f"hermes-api[{v}]" for v in VARIANTS} == set(report.VARIANT_NOTES)


def test_report_renders_and_checks_targets() -> None:
    runs = []
    for r in (1, 2, 3):
        for scenario, target, rps, p50, cpu in (
            ("chat c=1", "direct", 40000, 0.02, 0.01),
            ("chat c=1", "hermes-api", 2000, 0.42, 0.40),
            ("chat c=32", "hermes-api", 3000, 9.0, 0.31),
            ("chat c=32", "floor", 2700, 11.0, 0.35),
            ("chat c=32", "litellm", 150, 200.0, 6.3),
        ):
            runs.append({"round": r, "scenario": scenario, "target": target, "rps": rps + r, "requests": 1000,
                         "errors": 0, "p50_ms": p50, "p90_ms": p50, "p99_ms": p50, "cpu_ms_per_req": cpu,
                         "peak_rss_mb": 50.0, "other_load_cores": 0.1})  # fmt: skip
    data = {**report.conditions("python -m bench gateways"), "runs": runs, "rounds": 3, "seconds": 10, "skipped": {}}
    text = report.gateways_md(data, report.gateway_targets)
    assert "| hermes-api | 3002 (3001–3003)" in text
    rows = {row[0]: row for row in report.gateway_targets(data)}
    assert rows["chat c=32: req/s vs LiteLLM"][3] == "yes"
    assert rows["chat c=1: added p50 over direct (ms)"][2] == "0.400"
    assert rows["chat stream c=32: CPU ms/request"][3] == "–"  # not measured: no verdict
    assert "text answer beside function call" not in text  # no function-call scenario ran
    runs += [{**runs[1], "scenario": s, "cpu_ms_per_req": cpu} for s, cpu in
             (("responses c=32", 0.6), ("responses tools c=32", 0.7))]  # fmt: skip
    text = report.gateways_md({**data, "runs": runs})
    assert "| hermes-api | 0.600 | 0.700 | – | – |" in text


def test_cli_knows_every_scenario() -> None:
    assert {s.name for s in gateways.SCENARIOS} >= {
        "chat c=1",
        "chat c=32",
        "chat stream c=32",
        "responses c=32",
        "responses tools c=32",
        "responses tools stream c=32",
    }
    with pytest.raises(SystemExit) as exc:
        bench_main(["--help"])
    assert exc.value.code == 0
