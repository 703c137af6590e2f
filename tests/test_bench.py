"""``bench/`` stays runnable: its modules import, its fixtures are what nginx can serve,
its report renders. No process is started and nothing is timed here (the benchmark
itself is ``bench/run.sh``, never part of the test suite)."""

from __future__ import annotations

import importlib
import subprocess
from pathlib import Path

import orjson
import pytest

from bench import agent_report, agent_turns, agent_upstream, fixtures, gateways, report
from bench.__main__ import main as bench_main
from bench.__main__ import write_results
from hermes_api.sse import EventDecoder

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.parametrize(
    "module",
    ["clients", "gateways", "postgres", "procs", "profile", "report", "scale", "streams", "targets", "wrk",
     "agents", "agent_report", "agent_targets", "agent_turns", "agent_upstream"],
)  # fmt: skip
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
               ("portkey", 2.0, 600), ("hermes-api[before]", 0.39, 2900))  # fmt: skip
    for r in (1, 2, 3):
        for target, cpu, rps in figures:
            runs.append({"round": r, "scenario": "chat c=32", "target": target, "rps": rps, "requests": 1000,
                         "errors": 0, "p50_ms": 1.0, "p90_ms": 1.0, "p99_ms": 2.0, "cpu_ms_per_req": cpu,
                         "aux_cpu_ms_per_req": 0.05 if target == "hermes-api[pg]" else None,
                         "peak_rss_mb": 50.0, "other_load_cores": 0.1})  # fmt: skip
    text = report.ops_md({**report.conditions("python -m bench ops"), "runs": runs, "rounds": 3, "seconds": 10})
    assert "× Portkey" in text and "| hermes-api | 3000 (3000–3000)" in text and "DB CPU ms/req" in text
    pg = "| hermes-api[pg] | PostgreSQL store (SQLite: hermes-api) | chat c=32 |"
    assert f"{pg} 2500 / 3000 | 0.83 | 0.400 / 0.360 | 1.11 | 2.0 / 2.0 | 1.00 |" in text
    assert "| chat c=32 | metrics and usage rows | 0.360 / 0.300 | +20.0 % | ≤ 10 % | **no** |" in text
    assert "| chat c=32 | usage rows alone | 0.320 / 0.300 | +6.7 % | ≤ 10 % | yes |" in text
    assert "| chat c=32 | metrics and usage rows, checkout before | 0.390 / 0.300 | +30.0 % |" in text


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


def test_agent_upstream_scripts_a_memory_turn_then_text() -> None:
    ask = [{"role": "user", "content": agent_turns.user_text("memory", 7)}]
    assert agent_upstream.plan(ask) == ("memory", "bench note 7")
    call = orjson.loads(agent_upstream.completion_body("memory", "bench note 7", ask))["choices"][0]["message"]
    arguments = orjson.loads(call["tool_calls"][0]["function"]["arguments"])
    assert arguments == {"action": "add", "target": "memory", "content": "bench note 7"}
    answered = [*ask, {"role": "assistant", "tool_calls": call["tool_calls"]}, {"role": "tool", "content": "{}"}]
    assert agent_upstream.plan(answered) == ("text", agent_upstream.NOTED)
    assert agent_upstream.plan([{"role": "user", "content": agent_turns.user_text("text", 1)}])[0] == "text"


def test_agent_upstream_streams_as_openai_does() -> None:
    ask = [{"role": "user", "content": "hi"}]
    raw = agent_upstream.stream_body("text", agent_upstream.ANSWER, ask, include_usage=True)
    events = EventDecoder().feed(raw)
    assert events[-1] == b"[DONE]" and orjson.loads(events[-2])["choices"] == []
    assert agent_turns.content_of(raw, stream=True) == agent_upstream.ANSWER
    raw = agent_upstream.stream_body("memory", "x", ask, include_usage=False)
    fragments = [orjson.loads(e)["choices"][0]["delta"].get("tool_calls") for e in EventDecoder().feed(raw)[:-1]]
    calls = [f[0] for f in fragments if f]
    assert calls[0]["function"]["name"] == "memory" and len(calls) == 3
    assert orjson.loads("".join(c["function"]["arguments"] for c in calls))["content"] == "x"


def test_agent_turn_reads_hermes_streams_and_flags_cut_ones() -> None:
    chunk = {"choices": [{"index": 0, "delta": {"content": "\n\nNoted"}}]}
    progress = b'event: hermes.tool.progress\ndata: {"tool": "memory", "status": "running"}\n\n'
    raw = progress + b"data: " + orjson.dumps(chunk) + b"\n\ndata: [DONE]\n\n"
    assert agent_turns.content_of(raw, stream=True) == "\n\nNoted"
    assert agent_turns.content_of(raw[: -len(b"data: [DONE]\n\n")], stream=True).endswith("<no [DONE]>")


def agent_data() -> dict[str, object]:
    """A run's saved figures, made up: hermes-api adds 10 % over Hermes warm, its cold
    first turn takes 2 s, its worker is smaller than Hermes's gateway."""
    warm = []
    for r in (1, 2, 3):
        for target, base in (("upstream", 1.0), ("hermes", 201.0), ("hermes-api", 221.0)):
            warm.append({"round": r, "scenario": "text", "target": target, "errors": 0, "problem": "",
                         "latencies_ms": [base + i for i in range(20)], "other_load_cores": 0.1,
                         "cpu_ms_per_turn": None if target == "upstream" else base - 20})  # fmt: skip
    rss = {"rss_mb": 120.0, "pss_mb": 100.0}
    return {
        **report.conditions("bench/run.sh agent"),
        "warm": warm, "rounds": 3, "turns": 20, "seconds": 10, "hermes_agent": "0.19.0",
        "targets": {"hermes": {"kind": "hermes", "env": {}}, "hermes-api": {"kind": "hermes-api", "env": {}}},
        "cold": [{"sample": 1, "target": "hermes", "listening_s": 1.0, "first_turn_s": 3.0, "total_s": 4.0,
                  "problem": ""},
                 {"sample": 1, "target": "hermes-api", "spawn_s": 1.2, "first_turn_s": 2.0, "total_s": 2.0,
                  "cpu_s": 0.7, "spare_cpu_s": 0.8, "from_spare": True, "other_load_cores": 1.25,
                  "problem": ""}],
        "warm_memory": {"hermes_gateway": {"rss_mb": 140.0, "pss_mb": 120.0}, "hermes_api_worker": rss,
                        "hermes_api_server": {"rss_mb": 60.0, "pss_mb": 50.0}},
        "wide": {"profiles": 10, "hermes_total": {"rss_mb": 1400.0, "pss_mb": 1200.0},
                 "multiplexer": {"rss_mb": 300.0, "pss_mb": 280.0},
                 "hermes_per_gateway": [{"rss_mb": 140.0, "pss_mb": 120.0}] * 10,
                 "hermes_api_total": {"rss_mb": 1260.0, "pss_mb": 1050.0},
                 "hermes_api_server": {"rss_mb": 60.0, "pss_mb": 50.0}, "hermes_api_workers": [rss] * 10},
        "concurrency": [{"round": 1, "target": t, "turns": 40, "turns_per_s": 4.0, "p50_ms": 1800.0,
                         "cpu_ms_per_turn": 170.0, "other_load_cores": 0.2, "errors": 0, "problem": ""}
                        for t in ("hermes", "hermes-api")],
    }  # fmt: skip


def test_agent_report_subtracts_the_upstream_and_checks_issue_9_targets() -> None:
    data = agent_data()
    agg = agent_report.warm_summary(data["warm"])
    assert agg[("text", "hermes")]["p50_ms"] == 210.0 and agg[("text", "hermes")]["added_p50_ms"] == 200.0
    assert agg[("text", "hermes-api")]["added_p99_ms"] == 220.0  # nearest rank: the 60th of 60 turns
    assert agent_report.round_ratios(data["warm"], "text", "hermes-api", "hermes") == [1.1, 1.1, 1.1]
    rows = {row[0]: row for row in agent_report.agent_targets(data)}
    assert rows["warm text turn: added p50 vs Hermes's server"][2:] == ["1.10×", "yes"]
    assert rows["warm text turn: CPU per turn vs Hermes's server"][2:] == ["1.11×", "yes"]
    assert rows["first turn of a profile on a running hermes-api"][2:] == ["2.00 s", "**no**"]
    assert rows["RSS of a warm profile's process"][2:] == ["120 MB", "yes"]
    assert rows["RSS of 10 warm profiles, all processes"][2:] == ["1260 MB", "yes"]
    assert rows["the same, against Hermes's multiplexer (one process)"][1:] == ["≤ 300 MB", "1260 MB", "**no**"]
    text = agent_report.agent_md(data)
    assert "| text | hermes-api | 60 | 230.0 | 240.0 | 220.0 | 220.0 | 1.10× (1.10–1.10) | 201.0 | 1.11× |" in text
    assert "| hermes-api | 1 | – | 1.20 | 2.00 | 2.00 | 2.00–2.00 | 0.70 | 1 (0.80 s) | 1.25 | 0 |" in text


def test_agent_report_is_part_of_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(report, "RESULTS_MD", tmp_path / "RESULTS.md")
    report.save("agent", agent_data())
    write_results()  # what `bench/run.sh report` does, without pinning this process to a core
    assert "## The agent runtime beside Hermes's own API server (issue 9)" in (tmp_path / "RESULTS.md").read_text()
