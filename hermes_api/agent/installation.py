"""Is hermes-agent installed where the workers will run, in a version we support?

``hermes-api check`` asks before anything is served, and a worker's ``ready`` message
says which version it imported. The supported range is the one the test suite runs
(``pyproject.toml``'s ``agent`` extra).
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass

from ..settings import AgentRuntime

SUPPORTED = ((0, 19), (0, 20))  # [from, to): hermes-agent 0.19.x
SUPPORTED_TEXT = ">=0.19,<0.20"
INSTALL_HINT = (
    "install it with: pip install -e '.[agent]' in the hermes-api checkout (the same environment as "
    "hermes-api), or set agent.python to an interpreter that has hermes-agent " + SUPPORTED_TEXT
)
_PROBE = (
    "import importlib.metadata as m, importlib.util as u\n"
    "print(m.version('hermes-agent') if u.find_spec('run_agent') and u.find_spec('gateway') else '')\n"
)


@dataclass(frozen=True, slots=True)
class Installation:
    """What ``python`` has: ``version`` of hermes-agent ("" when absent) or ``problem``."""

    python: str
    version: str = ""
    problem: str | None = None

    @property
    def usable(self) -> bool:
        return self.problem is None


def interpreter(runtime: AgentRuntime) -> str:
    """The interpreter the workers run: ``agent.python``, else this one."""
    return runtime.python or sys.executable


def supported(version: str) -> bool:
    """True for a version in ``SUPPORTED`` (``0.19.0``, ``0.19.3rc1``...)."""
    found = re.match(r"(\d+)\.(\d+)", version)
    return found is not None and SUPPORTED[0] <= (int(found[1]), int(found[2])) < SUPPORTED[1]


def probe(runtime: AgentRuntime, timeout: float = 60.0) -> Installation:
    """Ask the workers' interpreter for its hermes-agent (a child process, ``-I``: it
    sees only its own packages, as a worker does). Never raises."""
    python = interpreter(runtime)
    try:
        done = subprocess.run(
            [python, "-I", "-c", _PROBE], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Installation(python, problem=f"cannot run {python}: {exc}")
    version = done.stdout.strip() if done.returncode == 0 else ""
    if not version:
        return Installation(python, problem=f"hermes-agent is not installed for {python}; {INSTALL_HINT}")
    if not supported(version):
        return Installation(
            python, version, f"hermes-agent {version} for {python} is not supported ({SUPPORTED_TEXT}); {INSTALL_HINT}"
        )
    return Installation(python, version)
