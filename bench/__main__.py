"""``python -m bench [all|gateways|ops|scale|streams|agent|report] [options]``: run the
benchmark parts and write ``bench/results/<part>.json`` and ``bench/RESULTS.md``."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from contextlib import ExitStack
from pathlib import Path

from . import agent_report, agents, clients, gateways, profile, report, scale, streams
from .agent_targets import AgentTarget, hermes_target, start_gateway, start_hermes_api, start_multiplexer
from .agent_targets import start_upstream as start_agent_upstream
from .postgres import Cluster
from .procs import LOAD_CPU, raise_own_nofile, stop
from .targets import (
    VARIANTS,
    Target,
    litellm_bin,
    portkey_script,
    start_floor,
    start_hermes,
    start_litellm,
    start_portkey,
    start_upstream,
)

TARGETS = ("direct", "floor", "hermes-api", "litellm", "portkey")
KNOWN = (*TARGETS, *(f"hermes-api[{v}]" for v in VARIANTS))
# The ops part (issue 12): both peers, the PostgreSQL store, two workers, metrics and
# usage recording on and off, at c=32.
OPS_TARGETS = ("direct", "hermes-api", "litellm", "portkey", *(f"hermes-api[{v}]" for v in VARIANTS))
OPS_SCENARIOS = ("chat c=32", "chat stream c=32", "responses c=32", "responses stream c=32")


def workdir(part: str) -> Path:
    """A fresh ``bench/results/work-<part>``: configs, homes and every process's log,
    kept after the run for a look."""
    path = report.RESULTS_DIR / f"work-{part}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def log(message: str) -> None:
    print(message, flush=True)


def missing_peers(wanted: list[str]) -> list[str]:
    """``wanted`` less the peers that are not installed (said why)."""
    for name, path in (("litellm", litellm_bin()), ("portkey", portkey_script())):
        if name in wanted and not path.exists():
            log(f"skip {name}: {path} is missing (bench/run.sh installs it)")
            wanted = [t for t in wanted if t != name]
    return wanted


def start_target(name: str, work: Path, upstream: Target, stack: ExitStack, postgres: list[Cluster]) -> Target:
    """Start target ``name`` (``KNOWN``); ``postgres`` holds the one cluster that
    PostgreSQL variants share, made on first use and stopped with ``stack``."""

    def cluster() -> Cluster:
        if not postgres:
            postgres.append(Cluster())
            stack.callback(postgres[0].stop)
            log(f"PostgreSQL ready on port {postgres[0].port} (pid {postgres[0].pid})")
        return postgres[0]

    if name == "direct":
        return upstream
    starters = {"floor": start_floor, "hermes-api": start_hermes, "litellm": start_litellm, "portkey": start_portkey}
    if name in starters:
        t = starters[name](work, upstream)
    elif name.startswith("hermes-api[") and name[11:-1] in VARIANTS:
        t = start_hermes(work, upstream, name=name, variant=VARIANTS[name[11:-1]], postgres=cluster)
    else:
        raise SystemExit(f"unknown target {name}; known: {', '.join(KNOWN)}")
    stack.callback(stop, t.proc)
    return t


def run_gateways(
    args: argparse.Namespace,
    command: str,
    part: str = "gateways",
    targets_: tuple[str, ...] = TARGETS,
    scenarios_: tuple[str, ...] = (),
) -> None:
    data = report.conditions(command, args.banner)
    chosen = args.scenarios or scenarios_
    scenarios = [s for s in gateways.SCENARIOS if not chosen or s.name in chosen]
    wanted = missing_peers(args.targets or list(targets_))
    with ExitStack() as stack:
        work = workdir(part)
        upstream = start_upstream(work)
        stack.callback(stop, upstream.proc)
        targets: list[Target] = []
        postgres: list[Cluster] = []
        for name in wanted:
            t = start_target(name, work, upstream, stack, postgres)
            targets.append(t)
            log(f"{name} ready on port {t.port} (pid {t.proc.pid if t.proc else '-'}) in {t.startup_s:.2f} s")
        for spec in args.compare:
            label, _, src = spec.partition("=")
            t = start_hermes(work, upstream, name=f"hermes-api[{label}]", src=Path(src).resolve())
            stack.callback(stop, t.proc)
            targets.append(t)
            log(f"{t.name} ({src}) ready on port {t.port} in {t.startup_s:.2f} s")
        result = gateways.run(
            targets,
            upstream,
            scenarios,
            work=work,
            rounds=args.rounds,
            seconds=args.duration,
            warmup=args.warmup,
            log=log,
        )
    data |= result | {"rounds": args.rounds, "seconds": args.duration}
    log(f"saved {report.save(part, data)}")


def run_profile(args: argparse.Namespace) -> None:
    scenarios = [s for s in gateways.SCENARIOS if s.name in (args.scenarios or ["chat c=32", "chat stream c=32"])]
    with ExitStack() as stack:
        work = workdir("profile")
        upstream = start_upstream(work)
        stack.callback(stop, upstream.proc)
        for name in args.targets or ["hermes-api"]:
            t = start_floor(work, upstream) if name == "floor" else start_hermes(work, upstream)
            stack.callback(stop, t.proc)
            for scenario in scenarios:
                profile.run(t, scenario, args.duration, report.RESULTS_DIR, log=log)


def run_clients(args: argparse.Namespace) -> None:
    with ExitStack() as stack:
        work = workdir("clients")
        upstream = start_upstream(work)
        stack.callback(stop, upstream.proc)
        clients.run(upstream.port, log=log)


def run_scale(args: argparse.Namespace, command: str) -> None:
    data = report.conditions(command, args.banner)
    sizes = tuple(args.sizes) if args.sizes else scale.SIZES
    with ExitStack() as stack:
        work = workdir("scale")
        upstream = start_upstream(work)
        stack.callback(stop, upstream.proc)
        data["sizes"] = scale.run_all(work, upstream.port, args.duration, sizes, log=log)
    data["seconds"] = args.duration
    log(f"saved {report.save('scale', data)}")


def run_streams(args: argparse.Namespace, command: str) -> None:
    data = report.conditions(command, args.banner)
    raise_own_nofile()
    data["targets"] = streams.run_all(workdir("streams"), args.streams, args.stream_seconds, log=log)
    data |= {"count": args.streams, "stream_seconds": args.stream_seconds}
    log(f"saved {report.save('streams', data)}")


def run_agent(args: argparse.Namespace, command: str) -> None:
    """Hermes's own API server beside hermes-api's agent runtime (``bench/agents.py``);
    ``--cold-only``: the cold first turns alone."""
    data = report.conditions(command, args.banner)
    samples = args.cold or args.rounds
    wide = [f"w{i:02d}" for i in range(1, agents.WIDE + 1)]
    cold = [f"cold-{i}" for i in range(1, samples + 1)]
    profiles = [agents.WARM_PROFILE, *cold, *wide]
    variants = {"": {}} | ({"skip-ssl-guard": {"HERMES_SKIP_SSL_GUARD": "1"}} if args.ssl_guard_variant else {})
    with ExitStack() as stack:
        work = workdir("agent")
        upstream = start_agent_upstream(work)
        stack.callback(stop, upstream.proc)
        warm: list[AgentTarget] = []
        for label, env in variants.items() if not args.cold_only else ():
            suffix = f"[{label}]" if label else ""
            hermes = hermes_target(f"hermes{suffix}", work, upstream.port, env)
            stack.callback(hermes.stop)
            log(f"{hermes.name}: gateway of profile bench listening after {start_gateway(hermes, 'bench'):.2f} s")
            api = start_hermes_api(f"hermes-api{suffix}", work, upstream.port, profiles, env)
            stack.callback(api.stop)
            warm += [hermes, api]
        others = []
        for spec in args.compare:
            label, _, src = spec.partition("=")
            other = start_hermes_api(f"hermes-api[{label}]", work, upstream.port, [agents.WARM_PROFILE, *cold], {},
                                     src=Path(src).resolve())  # fmt: skip
            stack.callback(other.stop)
            others.append(other)
        if warm:
            api = warm[1]
        else:
            api = start_hermes_api("hermes-api", work, upstream.port, cold, {})
            stack.callback(api.stop)
        no_spare = start_hermes_api("hermes-api[no-spare]", work, upstream.port, cold, {}, spare=False)
        stack.callback(no_spare.stop)
        cold_targets = [hermes_target("hermes", work, upstream.port, {}, "hermes-cold"), api, no_spare, *others]
        if args.cold_only:
            data["cold"] = agents.run_cold(cold_targets, samples, log)
            data |= {"cold_samples": samples, "hermes_agent": report._version("hermes-agent")}
            log(f"saved {report.save('agent-cold', data)}")
            print("\n".join(agent_report.cold_md(data)))
            return
        warm += others
        hermes = warm[0]
        runs = agents.run_warm(warm, upstream, rounds=args.rounds, turns=args.turns, warmup=int(args.warmup), log=log)
        data["warm"], data["warm_memory"] = runs, agents.warm_profile_memory(hermes, api)
        data["cold"] = agents.run_cold(cold_targets, samples, log)
        multiplexer = start_multiplexer(work, upstream.port, wide)
        stack.callback(multiplexer.stop)
        data["wide"] = agents.warm_wide(hermes, api, multiplexer, wide, log)
        data["concurrency"] = agents.run_concurrency(
            [hermes, api, multiplexer], wide[: agents.SPREAD], rounds=args.rounds, seconds=args.duration,
            upstream=upstream, log=log,
        )  # fmt: skip
    data |= {"rounds": args.rounds, "turns": args.turns, "seconds": args.duration, "cold_samples": samples,
             "targets": {t.name: {"kind": t.kind, "env": dict(t.env)} for t in warm},
             "hermes_agent": report._version("hermes-agent")}  # fmt: skip
    log(f"saved {report.save('agent', data)}")


def write_results() -> None:
    parts, targets = {}, []
    data = report.load("gateways")
    if data:
        parts["gateways"] = report.gateways_md(data, report.gateway_targets)
        targets += report.gateway_targets(data)
    data = report.load("ops")
    if data:
        parts["ops"] = report.ops_md(data)
    data = report.load("scale")
    if data:
        parts["scale"] = report.scale_md(data)
        targets += report.scale_targets(data)
    data = report.load("streams")
    if data:
        parts["streams"] = report.streams_md(data)
        targets += report.streams_targets(data)
    data = report.load("agent")
    if data:
        parts["agent"] = agent_report.agent_md(data)
    if targets:
        parts["summary"] = report.summary_md(targets)
    report.RESULTS_MD.write_text(report.render(parts))
    log(f"wrote {report.RESULTS_MD}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "part",
        nargs="?",
        default="all",
        choices=["all", "gateways", "ops", "scale", "streams", "agent", "report", "profile", "clients"],
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk run (default 10)")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of warm-up per target and scenario")
    parser.add_argument("--targets", nargs="*", help=f"targets among {', '.join(KNOWN)}")
    parser.add_argument("--scenarios", nargs="*", help="subset of: " + ", ".join(s.name for s in gateways.SCENARIOS))
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="also run the hermes-api checkout in DIR, as target hermes-api[NAME]",
    )
    parser.add_argument("--sizes", type=int, nargs="*", help="profile counts for scale (default 10 1000 10000)")
    parser.add_argument("--streams", type=int, default=1000, help="concurrent slow streams (default 1000)")
    parser.add_argument("--stream-seconds", type=float, default=5, help="length of one slow stream (default 5 s)")
    parser.add_argument("--turns", type=int, default=20, help="agent: turns per warm block (default 20)")
    parser.add_argument("--cold", type=int, default=0, help="agent: cold first turns per system (default: --rounds)")
    parser.add_argument(
        "--cold-only",
        action="store_true",
        help="agent: only the cold first turns (printed, saved as agent-cold; RESULTS.md is not rewritten)",
    )
    parser.add_argument(
        "--ssl-guard-variant",
        action="store_true",
        help="agent: also run both systems with HERMES_SKIP_SSL_GUARD=1 (warm turns)",
    )
    parser.add_argument(
        "--banner", default="", help="a note on the conditions, printed with each part run (e.g. 'preliminary')"
    )
    args = parser.parse_args(argv)
    given = list(sys.argv[1:] if argv is None else argv)
    if "--banner" in given:  # the banner is printed on its own
        at = given.index("--banner")
        del given[at : at + 2]
    command = "bench/run.sh " + shlex.join(given)
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {LOAD_CPU})  # the harness stays off the gateway's core
    if args.part == "profile":
        run_profile(args)
        return 0
    if args.part == "clients":
        run_clients(args)
        return 0
    if args.part in ("all", "gateways"):
        run_gateways(args, command)
    if args.part in ("all", "ops"):
        run_gateways(args, command, "ops", OPS_TARGETS, OPS_SCENARIOS)
    if args.part in ("all", "scale"):
        run_scale(args, command)
    if args.part in ("all", "streams"):
        run_streams(args, command)
    if args.part == "agent":
        run_agent(args, command)
        if args.cold_only:
            return 0  # its table is printed; RESULTS.md keeps the full run's
    write_results()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
