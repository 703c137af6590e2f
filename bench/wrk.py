"""Run wrk (Debian's) with ``post.lua`` and read its JSON summary."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .procs import LOAD_CPU, pinned

SCRIPT = Path(__file__).with_name("post.lua")


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: ``requests`` completed in ``seconds``; latencies in µs; ``errors``
    counts connect/read/write/timeout failures and non-2xx answers (status)."""

    requests: int
    seconds: float
    latency_us: dict[str, float]
    errors: dict[str, int]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def failed(self) -> int:
        return sum(self.errors.values())


def run_wrk(
    url: str,
    body: Path,
    *,
    connections: int,
    seconds: float,
    auth: str = "",
    profiles: int | None = None,
    headers: dict[str, str] | None = None,
) -> WrkResult:
    """``wrk -t1 -c<connections> -d<seconds>s`` POSTing ``body`` to ``url``, pinned to
    the load CPU. A timeout of 10 s per request; the run is bounded by ``seconds``.
    ``profiles``: each request names a random one of that many (``__PROFILE__`` in the body);
    ``headers``: sent besides ``Authorization``."""
    argv = pinned(
        LOAD_CPU,
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(SCRIPT), url],
    )
    env = {**os.environ, "BENCH_BODY": str(body), "BENCH_AUTH": auth}
    env["BENCH_HEADERS"] = "\n".join(f"{k}: {v}" for k, v in (headers or {}).items())
    if profiles is not None:
        env["BENCH_PROFILES"] = str(profiles)
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    return WrkResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        latency_us=data["latency_us"],
        errors=data["errors"],
    )
