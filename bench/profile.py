"""Where the gateway's CPU goes: py-spy samples it while wrk loads one scenario.

``python -m bench profile --scenarios "chat stream c=32" [--targets hermes-api floor]``
writes ``bench/results/profile-<target>-<scenario>.txt`` (py-spy's collapsed stacks,
loadable in speedscope or flamegraph.pl) and prints the functions with the most
samples, inclusive (anywhere on the stack) and self (on top of it).
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import orjson

from .gateways import Scenario, request_body
from .procs import LOAD_CPU, pinned
from .targets import Target
from .wrk import run_wrk


def summarize(collapsed: Path, top: int = 25) -> str:
    """The ``top`` frames by inclusive and by self share of all samples."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = [f.split(" (", 1)[0] + " " + f.rsplit("/", 1)[-1].split(":", 1)[0] for f in stack.split(";")]
        total += n
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n
    out = [f"{total} samples"]
    for title, counter in (("inclusive", inclusive), ("self", own)):
        out.append(f"-- {title}")
        out += [f"{100 * n / total:5.1f}%  {frame}" for frame, n in counter.most_common(top)]
    return "\n".join(out)


def run(target: Target, scenario: Scenario, seconds: float, out_dir: Path, log: Any = print) -> Path:
    """Profile ``target`` for ``seconds`` under ``scenario``'s load; the collapsed stacks."""
    assert target.proc is not None
    py_spy = shutil.which("py-spy") or str(Path(__import__("sys").executable).with_name("py-spy"))
    slug = f"{target.name}-{scenario.name}".replace(" ", "_").replace("=", "")
    body = out_dir / f"profile-body-{slug}.json"
    body.write_bytes(orjson.dumps(request_body(target, scenario)))
    out = out_dir / f"profile-{slug}.txt"
    url = target.url(scenario.kind, scenario.stream)
    run_wrk(url, body, connections=scenario.connections, seconds=2, auth=target.auth)
    load = threading.Thread(
        target=run_wrk,
        args=(url, body),
        kwargs={"connections": scenario.connections, "seconds": seconds + 2, "auth": target.auth},
    )
    load.start()
    argv = pinned(
        LOAD_CPU,
        [
            py_spy,
            "record",
            "-r",
            "200",
            "-f",
            "raw",
            "-d",
            str(round(seconds)),
            "-o",
            str(out),
            "-p",
            str(target.proc.pid),
            "--nonblocking",
        ],
    )
    subprocess.run(argv, check=True, capture_output=True, timeout=seconds + 60)
    load.join()
    log(f"== {target.name} / {scenario.name}: {out}\n{summarize(out)}")
    return out
