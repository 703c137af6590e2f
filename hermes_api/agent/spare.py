"""Spare: an agent worker started before any profile needs it, bound to the first that does.

Most of a new worker's first turn is imports (``bench/RESULTS.md``, issue 9). A spare
(``worker.py --spare``) imports the modules Hermes uses that are not Hermes's own
(``worker.PRELOAD``) in ``environment.spare_environment`` (the variables every worker
gets: nothing secret, nothing of any profile) and a private directory of its own, says
``spare``, and waits. ``bind`` then hands it one profile: the complete environment that
profile's worker would have been started with, its working directory and its log. The
worker replaces its ``os.environ`` with it, imports Hermes (which loads the profile's
``.env``, as in a worker started for the profile) and says ``ready``; from then on it
is that profile's worker and nothing else. A spare is bound once: the pool lets go of
it before binding, and the worker ends on a second ``bind`` (``wire.py``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from ..errors import AgentWorkerError
from . import wire
from .process import WorkerProcess, WorkerSpec, first_line, kill, spawn

logger = logging.getLogger("hermes_api")

LOG_NAME = "_spare.log"  # under <state_dir>/agent-logs/; a profile's name never starts with "_"
DIRECTORY = "agent-spare"  # under <state_dir>: the spare's working directory until it is bound


class Spare:
    """A started, unbound worker. Start it with ``await Spare.start(...)``."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    @classmethod
    async def start(cls, python: str, env: Mapping[str, str], state_dir: Path, timeout: float) -> Spare:
        """Start a spare with ``env`` and wait up to ``timeout`` seconds for ``spare``.
        Raises ``AgentWorkerError`` when it does not come (and kills what it started)."""
        cwd = state_dir / DIRECTORY
        cwd.mkdir(mode=0o700, parents=True, exist_ok=True)
        log_path = state_dir / "agent-logs" / LOG_NAME
        process = await spawn(python, ["--spare"], env, cwd, log_path, "spare")
        hello = await first_line(process, timeout, wire.FROM_SPARE, "spare")
        if hello["type"] != "spare" or hello.get("protocol") != wire.PROTOCOL:
            kill(process)
            await process.wait()
            reason = hello.get("message") or f"protocol {hello.get('protocol')!r}, expected {wire.PROTOCOL}"
            logger.warning("spare agent worker did not start: %s (log: %s)", reason, log_path)
            raise AgentWorkerError("The spare agent worker could not be started; see the server log.")
        logger.debug("spare agent worker started (pid %d)", process.pid)
        return cls(process)

    async def bind(self, spec: WorkerSpec, timeout: float) -> WorkerProcess:
        """Make this spare the worker ``spec`` describes (its ``env``, ``cwd`` and
        ``log_path``; ``spec.python`` is the spare's), ready within ``timeout`` seconds.
        Raises ``AgentWorkerError`` when it is not: the spare is killed then, as it is
        when the wait is cancelled."""
        spec.log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        message = {"type": "bind", "env": dict(spec.env), "cwd": os.fspath(spec.cwd), "log": os.fspath(spec.log_path)}
        stdin = self.process.stdin
        assert stdin is not None
        try:
            stdin.write(wire.encode(message))
            await stdin.drain()
        except (ConnectionError, RuntimeError):
            await self.close()
            raise AgentWorkerError("The spare agent worker had stopped.") from None
        except BaseException:
            kill(self.process)
            raise
        return await WorkerProcess.ready(spec, self.process, timeout, how=" from the spare")

    async def close(self) -> None:
        """Kill it (and its process group) and wait for it."""
        kill(self.process)
        await self.process.wait()
