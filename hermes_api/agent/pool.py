"""WorkerPool: at most one live agent worker per profile, started on demand.

A profile's first turn starts its worker (concurrent first turns wait for the same
start). It stays warm between turns and is stopped after ``agent.idle_timeout`` seconds
without one. A worker that exits on its own fails only its own turns
(``process.WorkerProcess``); the next turn starts a new one at once, and further starts
after consecutive failures wait 1, 2, 4 … up to ``MAX_BACKOFF`` seconds, so a profile
whose worker cannot run does not spin. A worker is retired (no new turns, stopped once
idle) when its profile's ``.env`` or ``config.yaml`` changed (a worker reads them once,
when it starts; SOUL.md and memories are read per turn), or when a turn it was told to
interrupt has not ended ``INTERRUPT_GRACE`` seconds later (a tool that ignores
interrupts: its thread would hold the process).

With ``agent.spare_worker`` (the default) the pool keeps one spare worker
(``spare.Spare``) started ahead: the first sweep after start-up starts it (so it does
not slow the server's own start), a profile's next new worker is that spare bound to
it, and a sweep with no worker starting and none started in the last ``SPARE_QUIET``
seconds (its first turn would share the CPU with the spare's imports) starts another.
A spare that cannot be bound is killed and the worker started the usual way; one that
cannot be started is tried again after 1, 2, 4 ... up to ``MAX_SPARE_BACKOFF`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import AgentWorkerError
from ..profiles import Profile
from ..settings import Settings
from .environment import spare_environment, worker_environment, working_directory
from .installation import interpreter
from .process import WorkerProcess, WorkerSpec
from .spare import Spare

logger = logging.getLogger("hermes_api")

MAX_BACKOFF = 30.0  # seconds
MAX_SPARE_BACKOFF = 300.0  # seconds
SPARE_QUIET = 5.0  # seconds after a worker started (its first turn runs) before a new spare starts
INTERRUPT_GRACE = 10.0  # seconds an interrupted turn may take to end before its worker is retired
SWEEP_EVERY = 1.0  # seconds between idle and stuck checks


@dataclass(slots=True)
class _Slot:
    """One profile's worker, its start in progress, and its failure count."""

    worker: WorkerProcess | None = None
    profile: Profile | None = None  # the version of the profile ``worker`` runs
    starting: asyncio.Task[WorkerProcess] | None = None
    failures: int = 0
    files: tuple[tuple[int, int], ...] = ()  # ``_process_files`` when ``worker`` started
    retired: list[WorkerProcess] = field(default_factory=list)


class WorkerPool:
    """The agent workers of a server. ``on_event(profile, event)`` hears each ``start``
    (``restart`` when it replaces a worker that failed), ``crash`` and ``stop``
    (``metrics.Metrics.agent_worker``)."""

    def __init__(
        self,
        settings: Settings,
        environ: Mapping[str, str],
        *,
        on_event: Callable[[str, str], None] | None = None,
    ) -> None:
        self._settings = settings
        self._environ = environ
        self._slots: dict[str, _Slot] = {}
        self._on_event = on_event or (lambda profile, event: None)
        self._closed = False
        self._spare: Spare | None = None
        self._spare_starting: asyncio.Task[None] | None = None
        self._spare_failures = 0
        self._spare_after = 0.0  # monotonic seconds: no new spare before

    def spec(self, profile: Profile) -> WorkerSpec:
        runtime = self._settings.agent
        return WorkerSpec(
            profile=profile.name,
            python=interpreter(runtime),
            env=worker_environment(profile, runtime, self._environ),
            cwd=working_directory(profile),
            log_path=self._settings.state_dir / "agent-logs" / f"{profile.name}.log",
        )

    async def acquire(self, profile: Profile) -> WorkerProcess:
        """A live worker running this version of ``profile``, started if needed. Raises
        ``AgentWorkerError`` when it cannot be started."""
        if self._closed:
            raise AgentWorkerError("The server is stopping; no agent worker is started.")
        slot = self._slots.setdefault(profile.name, _Slot())
        worker = slot.worker
        if worker is not None and slot.profile is not profile and _process_files(profile) == slot.files:
            slot.profile = profile  # reloaded for SOUL.md or memories: Hermes reads those per turn
        if worker is not None and (not worker.alive or worker.retired or slot.profile is not profile):
            self._retire(slot, worker)
            worker = None
        if worker is not None:
            return worker
        if slot.starting is None:
            slot.starting = asyncio.create_task(self._start(slot, profile))
        return await asyncio.shield(slot.starting)

    async def _start(self, slot: _Slot, profile: Profile) -> WorkerProcess:
        try:
            if slot.failures > 1:
                await asyncio.sleep(min(2.0 ** (slot.failures - 2), MAX_BACKOFF))
            spec = self.spec(profile)
            _make_private_dir(spec.cwd)
            slot.files = _process_files(profile)
            timeout = self._settings.agent.startup_timeout
            worker = await self._bind_spare(spec) or await WorkerProcess.start(spec, timeout)
        except BaseException:
            slot.failures += 1
            raise
        finally:
            slot.starting = None
        slot.worker, slot.profile = worker, profile
        self._spare_after = max(self._spare_after, time.monotonic() + SPARE_QUIET)
        self._on_event(profile.name, "restart" if slot.failures else "start")
        asyncio.get_running_loop().create_task(self._watch(slot, worker))
        return worker

    async def _bind_spare(self, spec: WorkerSpec) -> WorkerProcess | None:
        """The spare, bound to ``spec``'s profile; None when there is no live spare or
        binding it failed (it is killed then; ``Spare.bind``)."""
        spare, self._spare = self._spare, None  # taken: never offered again
        if spare is None or not spare.alive:
            return None
        try:
            return await spare.bind(spec, self._settings.agent.startup_timeout)
        except AgentWorkerError:
            return None

    def _keep_spare(self, now: float) -> None:
        """Start a spare when there is none, none is starting, no profile's worker is
        starting or has just started (module docstring) and the backoff has passed."""
        if self._spare is not None and not self._spare.alive:
            self._spare = None
        busy = any(slot.starting is not None for slot in self._slots.values())
        if self._closed or self._spare or self._spare_starting or busy or now < self._spare_after:
            return
        self._spare_starting = asyncio.get_running_loop().create_task(self._start_spare())

    async def _start_spare(self) -> None:
        runtime = self._settings.agent
        try:
            spare = await Spare.start(
                interpreter(runtime), spare_environment(self._environ), self._settings.state_dir,
                runtime.startup_timeout,
            )  # fmt: skip
        except (AgentWorkerError, OSError):
            self._spare_failures += 1
            self._spare_after = time.monotonic() + min(2.0 ** (self._spare_failures - 1), MAX_SPARE_BACKOFF)
        else:
            self._spare, self._spare_failures = spare, 0
        finally:
            self._spare_starting = None

    async def _watch(self, slot: _Slot, worker: WorkerProcess) -> None:
        """Count an exit nobody asked for as a failure of the profile's worker."""
        await asyncio.shield(worker.exited)
        if not worker.stopping:
            slot.failures += 1
            self._on_event(worker.spec.profile, "crash")
        if slot.worker is worker:
            slot.worker = None

    def succeeded(self, profile: str) -> None:
        """A turn of ``profile`` ended well: its worker's failures are forgotten."""
        slot = self._slots.get(profile)
        if slot is not None:
            slot.failures = 0

    def _retire(self, slot: _Slot, worker: WorkerProcess) -> None:
        worker.retired = True
        if slot.worker is worker:
            slot.worker = None
        if worker.alive and worker not in slot.retired:
            slot.retired.append(worker)

    # -- housekeeping ---------------------------------------------------------------

    async def sweep(self) -> None:
        """Forever (a lifespan task): every ``SWEEP_EVERY`` seconds, ``check()``."""
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            await self.check()

    async def check(self, now: float | None = None) -> None:
        """Stop idle and retired-and-idle workers; retire workers with a turn stuck
        past ``INTERRUPT_GRACE`` after its interrupt."""
        now = time.monotonic() if now is None else now
        if self._settings.agent.spare_worker:
            self._keep_spare(now)
        stopping = []
        for slot in self._slots.values():
            worker = slot.worker
            if worker is not None and self._stuck(worker, now):
                self._retire(slot, worker)
            elif (
                worker is not None and not worker.turns and now - worker.idle_since > self._settings.agent.idle_timeout
            ):
                self._retire(slot, worker)
            for old in [w for w in slot.retired if not w.turns or not w.alive]:
                slot.retired.remove(old)
                stopping.append(old)
        for worker in stopping:
            self._on_event(worker.spec.profile, "stop")
        await asyncio.gather(*(w.stop() for w in stopping), return_exceptions=True)

    @staticmethod
    def _stuck(worker: WorkerProcess, now: float) -> bool:
        """Forget the turns ``worker`` was told to interrupt more than ``INTERRUPT_GRACE``
        seconds ago (their requests ended then); True if there were any."""
        stuck = [
            t
            for t in worker.turns.values()
            if t.interrupted_at is not None and now - t.interrupted_at > INTERRUPT_GRACE
        ]
        for turn in stuck:
            del worker.turns[turn.id]
        if stuck:
            logger.warning("agent worker of profile %s has %d turn(s) ignoring their interrupt; replacing it",
                           worker.spec.profile, len(stuck))  # fmt: skip
        return bool(stuck)

    async def aclose(self) -> None:
        """Stop every worker (the server is stopping; turns have ended or been given up)."""
        self._closed = True
        if self._spare_starting is not None:
            self._spare_starting.cancel()
            with contextlib.suppress(BaseException):
                await self._spare_starting
        if self._spare is not None:
            spare, self._spare = self._spare, None
            await spare.close()
        workers = []
        for slot in self._slots.values():
            if slot.starting is not None:
                slot.starting.cancel()
                with contextlib.suppress(BaseException):
                    await slot.starting
            workers += [w for w in (slot.worker, *slot.retired) if w is not None]
        await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)


def _process_files(profile: Profile) -> tuple[tuple[int, int], ...]:
    """``(mtime_ns, size)`` of the files a worker reads once, at its start: ``.env``
    (loaded into its environment) and ``config.yaml`` (``terminal.*`` bridged into it).
    Looked at only when the registry has reloaded the profile."""
    stats = []
    for name in (".env", "config.yaml"):
        try:
            st = (profile.home / name).stat()
        except OSError:
            stats.append((-1, -1))
        else:
            stats.append((st.st_mtime_ns, st.st_size))
    return tuple(stats)


def _make_private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
