"""``hermes-api serve | profiles | check | demo``.

Exit codes: 0 success (``check`` may still print warnings); 1 ``check`` found problems or
the demo's model server failed; 2 the configuration or the command line is invalid
(including a non-loopback bind without any API key, and a Hermes home that does not
exist), or the store cannot be opened (``usage``); 3 ``serve`` or ``demo`` cannot listen
on its address (the port is in use, say), found before anything else starts or is
printed.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from .agent.installation import probe
from .app import create_app
from .demo import EXAMPLE_BASE_URL, EXAMPLE_BASE_URL_VAR
from .logs import log_config
from .metrics import worker_directory
from .protocol import ProtocolFactory
from .registry import ProfileRegistry
from .settings import ConfigError, Settings
from .shutdown import FORCE_MARGIN, Drain
from .store import UsageGrouping, UsageSummary, open_store

EXIT_PROBLEMS = 1
EXIT_CONFIG = 2
EXIT_LISTEN = 3


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="server config file (default $HERMES_API_CONFIG)")
    parser.add_argument("--hermes-home", help="Hermes home with the profiles (default $HERMES_HOME or ~/.hermes)")
    parser.add_argument("--expose", help='profiles to serve, comma-separated, or "*"')
    parser.add_argument("--default-profile", help="profile used when a request selects none")


def _serving(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to bind (default 8642)")
    parser.add_argument("--log-level", help="critical, error, warning, info (default) or debug")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hermes-api", description="One OpenAI-compatible server, one port, many Hermes profiles."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the exposed profiles")
    _common(serve)
    _serving(serve)
    serve.add_argument("--workers", type=positive, default=1, help="server processes on the one port (default 1)")
    profiles = commands.add_parser("profiles", help="list the profiles found and whether they are served")
    _common(profiles)
    check = commands.add_parser("check", help="validate the config and the profiles")
    _common(check)
    _serving(check)
    usage = commands.add_parser("usage", help="what each key, profile or day used: turns, failures, tokens")
    _common(usage)
    usage.add_argument("--since", type=since, default=0.0, help="24h, 7d, 90m, or a date (UTC): 2025-06-01")
    usage.add_argument("--by", choices=["key", "profile", "day"], default="key", help="one line per (default key)")
    demo = commands.add_parser("demo", help="serve the example profiles on a local SmolLM2 (needs the [demo] extra)")
    demo.add_argument("--config", type=Path, help="default: hermes_api/example_home/hermes-api.yaml (package data)")
    _serving(demo)
    demo.add_argument("--llama-port", type=int, default=0, help="port for llama.cpp (default: a free one)")
    return parser


def positive(value: str) -> int:
    """``--workers``: an integer of at least 1. Raises ``argparse.ArgumentTypeError``."""
    if not value.isascii() or not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of at least 1")
    return int(value)


_AGO = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def since(value: str, now: float | None = None) -> float:
    """``--since``: ``<n>s|m|h|d`` ago, or an ISO date or date-time (UTC unless it says
    otherwise), as Unix seconds. Raises ``argparse.ArgumentTypeError``."""
    if found := _AGO.fullmatch(value):
        return (time.time() if now is None else now) - float(found[1]) * _UNIT[found[2]]
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not like 24h, 7d or 2025-06-01") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def settings_sources(
    args: argparse.Namespace, environ: Mapping[str, str], extra: Mapping[str, Any] | None = None
) -> tuple[Path | None, dict[str, Any]]:
    """The config file (``--config``, else ``$HERMES_API_CONFIG``) and what overrides it:
    ``extra`` (top-level config keys: the demo's additions), then the flags."""
    config = args.config or (Path(environ["HERMES_API_CONFIG"]) if environ.get("HERMES_API_CONFIG") else None)
    overrides = {
        **(extra or {}),
        **{
            name: getattr(args, name, None)
            for name in ("hermes_home", "expose", "default_profile", "host", "port", "log_level")
            if getattr(args, name, None) is not None
        },
    }
    return config, overrides


def load_settings(
    args: argparse.Namespace, environ: Mapping[str, str], extra: Mapping[str, Any] | None = None
) -> Settings:
    """Settings from ``--config`` (or ``$HERMES_API_CONFIG``), overridden by ``extra`` and the flags."""
    config, overrides = settings_sources(args, environ, extra)
    return Settings.load(config, environ, overrides)


def report(problems: Iterable[str], label: str = "error") -> None:
    for problem in problems:
        print(f"{label}: {problem}", file=sys.stderr)


def serving_settings(
    args: argparse.Namespace, environ: Mapping[str, str], extra: Mapping[str, Any] | None = None
) -> Settings:
    """Settings fit to serve: ``ConfigError`` also for an open non-loopback bind (§2)."""
    settings = load_settings(args, environ, extra)
    if problem := open_bind_problem(settings):
        raise ConfigError([problem])
    return settings


def open_bind_problem(settings: Settings) -> str | None:
    if settings.keys or settings.is_loopback:
        return None
    return (
        f"refusing to listen on {settings.host}: no API key is configured, so anyone who can "
        "reach this address could use every exposed profile. Add keys (or set "
        "API_SERVER_KEY), or bind to 127.0.0.1."
    )


class DrainingServer(uvicorn.Server):
    """uvicorn's server, telling the app's ``Drain`` the moment a signal asks it to
    stop, so in-flight turns get ``shutdown_grace`` seconds from then."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self.drain.begin()


def listen(settings: Settings) -> socket.socket:
    """The server's socket, bound to ``host``:``port`` as uvicorn binds it
    (``Config.bind_socket``), before the app starts, so a port in use fails first and in
    one line. Raises ``OSError``."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((settings.host, settings.port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def listen_problem(settings: Settings, exc: OSError) -> str:
    hint = " (is hermes-api already running? stop it, or choose another --port)"
    return f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}{hint}"


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's settings for ``serve``, in one process or several (``workers.run``):
    the address, the protocol's bounds, keep-alive, logging and the shutdown backstop."""
    return {
        "host": settings.host,
        "port": settings.port,
        "http": ProtocolFactory(settings.max_header_bytes, settings.header_timeout, settings.max_connections),
        "timeout_keep_alive": settings.keep_alive_timeout,
        "log_level": settings.log_level,
        "log_config": log_config(settings.log_level, settings.log_format),
        "access_log": settings.log_format == "text",  # json: the app's own request line replaces it
        "server_header": False,
        # A backstop only: Drain ends every turn at the grace period.
        "timeout_graceful_shutdown": int(settings.shutdown_grace + FORCE_MARGIN),
    }


def serve(settings: Settings, environ: Mapping[str, str], sock: socket.socket) -> None:
    """Run the server on ``sock`` (``listen``) in the foreground until SIGINT or
    SIGTERM: then stop accepting, give turns in flight ``shutdown_grace`` seconds, close
    the rest, and exit."""
    drain = Drain(settings.shutdown_grace)
    app = functools.partial(create_app, settings, environ=environ, drain=drain, freeze_startup=True)
    config = uvicorn.Config(app, factory=True, **uvicorn_options(settings))
    with worker_directory(config.workers):  # several workers: one metrics directory for all
        DrainingServer(config, drain).run(sockets=[sock])


def format_table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def toolsets_shown(settings: Settings, profile: str) -> str:
    """An agent profile's toolsets, and its delegation tool with its targets."""
    shown = ",".join(settings.agent.profile(profile).toolsets)
    targets = settings.delegation.targets(profile)
    return shown + (f",delegate_to_profile({'|'.join(targets)})" if targets else "")


def cmd_profiles(settings: Settings, environ: Mapping[str, str]) -> int:
    rows = [
        ("PROFILE", "EXPOSED", "SERVED", "RUNTIME", "TOOLSETS", "MODEL", "PROVIDER", "BASE URL", "NOT SERVED BECAUSE")
    ]
    for status in ProfileRegistry(settings, environ).survey():
        p = status.profile
        served = p is not None and status.exposed
        agent = p is not None and p.runtime == "agent"
        rows.append(
            (
                status.name,
                "yes" if status.exposed else "no",
                "yes" if served else "no",
                p.runtime if p else "-",
                toolsets_shown(settings, status.name) if agent else "-",
                (p.model or "(Hermes's choice)") if p else "-",
                p.provider if p else "-",
                (p.base_url or "(Hermes's choice)") if p else "-",
                status.reason or "",
            )
        )
    print(f"Hermes home: {settings.hermes_home}")
    print(format_table(rows))
    return 0


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What ``check`` found. ``problems`` would make the server refuse to start or serve
    less than configured (exit 1); ``warnings`` are served profiles that work but may
    not do what their owner expects (a key left unused, a blocked memory entry)."""

    problems: list[str]
    warnings: list[str]
    served: list[str]


def check_problems(settings: Settings, environ: Mapping[str, str]) -> CheckResult:
    """Problems: unservable exposed profiles, a default or route profile that is not
    served, an open non-loopback bind, agent profiles without a usable hermes-agent
    (``agent.installation``). Warnings: each served profile's ``warnings``."""
    problems, warnings, served = [], [], []
    for status in ProfileRegistry(settings, environ).survey():
        if status.exposed and status.profile is None:
            problems.append(f"profile {status.name}: {status.reason}")
        elif status.exposed and status.profile is not None:
            served.append(status.name)
            warnings += (f"profile {status.name}: {w}" for w in status.profile.warnings)
    if settings.default_profile and settings.default_profile not in served:
        problems.append(f"default_profile {settings.default_profile} is not served")
    for i, rule in enumerate(settings.routes):
        if rule.profile not in served:
            problems.append(f"routes[{i}]: profile {rule.profile} is not served")
    if bind := open_bind_problem(settings):
        problems.append(bind)
    if any(settings.agent.serves(name) for name in served):
        installation = probe(settings.agent)
        if installation.problem:
            problems.append(f"agent: {installation.problem}")
    return CheckResult(problems, warnings, served)


def cmd_check(settings: Settings, environ: Mapping[str, str]) -> int:
    """Warnings, then errors, one line each on stderr (``warning: …``, ``error: …``);
    exit 1 only for errors. Without errors, ``ok: …`` on stdout, counting the warnings."""
    result = check_problems(settings, environ)
    report(result.warnings, "warning")
    report(result.problems)
    if result.problems:
        return EXIT_PROBLEMS
    count = len(result.warnings)
    noted = f" ({count} warning{'s' if count != 1 else ''})" if count else ""
    print(f"ok: {len(result.served)} profile(s) served: {', '.join(result.served)}{noted}")
    return 0


def usage_table(summary: Sequence[UsageSummary], by: UsageGrouping) -> str:
    """``hermes-api usage``'s table, a TOTAL line last when there is more than one line."""
    head = (by.upper(), "TURNS", "FAILED", "INPUT TOKENS", "OUTPUT TOKENS", "NO USAGE", "SECONDS")
    rows: list[tuple[str, ...]] = [head]
    lines = list(summary)
    if len(lines) > 1:
        total = [sum(getattr(s, f) for s in lines) for f in ("requests", "failed", "input_tokens", "output_tokens")]
        lines.append(UsageSummary("TOTAL", *total, sum(s.without_usage for s in lines), sum(s.seconds for s in lines)))
    for s in lines:
        figures = (s.requests, s.failed, s.input_tokens, s.output_tokens, s.without_usage)
        rows.append((s.group, *(str(n) for n in figures), f"{s.seconds:.1f}"))
    return format_table(rows)


def cmd_usage(settings: Settings, args: argparse.Namespace) -> int:
    async def summary() -> list[UsageSummary]:
        store = await open_store(settings)
        try:
            return await store.usage_summary(args.since, args.by)
        finally:
            await store.aclose()

    try:
        lines = asyncio.run(summary())
    except Exception as exc:  # a message, not a traceback, at a terminal
        report([f"cannot read the usage records: {exc.__class__.__name__}: {exc}"])
        return EXIT_CONFIG
    print(usage_table(lines, args.by))
    return 0


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = dict(os.environ) if environ is None else environ
    # The example home's model server, unless told otherwise (hermes_api/example_home).
    environ = {EXAMPLE_BASE_URL_VAR: EXAMPLE_BASE_URL, **environ}
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(args, environ)
    try:
        settings = (serving_settings if args.command == "serve" else load_settings)(args, environ)
    except ConfigError as exc:
        report(exc.problems)
        return EXIT_CONFIG
    if args.command != "usage" and (problem := settings.home_problem()):  # usage reads only the store
        report([problem])
        return EXIT_CONFIG
    if args.command == "profiles":
        return cmd_profiles(settings, environ)
    if args.command == "check":
        return cmd_check(settings, environ)
    if args.command == "usage":
        return cmd_usage(settings, args)
    try:
        sock = listen(settings)
    except OSError as exc:
        report([listen_problem(settings, exc)])
        return EXIT_LISTEN
    if args.workers > 1:
        sock.close()  # free again: uvicorn's supervisor binds it for its workers
        from . import workers  # here: it imports uvicorn's multiprocessing supervisor

        with worker_directory(args.workers):  # one metrics directory for every worker
            workers.run(args.workers, *settings_sources(args, environ), uvicorn_options(settings))
    else:
        serve(settings, environ, sock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
