"""WorkerProcess: one agent worker (``agent/worker.py``) as hermes-api sees it.

The parent's half of the protocol in ``wire``: it starts the child (its own session,
so a Ctrl-C to the server does not reach it; stopped by PID and process group), waits
for ``ready``, writes ``turn`` and ``interrupt`` messages, and one reader task hands
every message to its ``RemoteTurn``. The reader never waits on a turn's consumer: a
turn's events are buffered (answer text coalesced), up to ``MAX_BUFFERED`` bytes, so a
client that reads slowly holds up nobody else. Everything that can go wrong with the
child (it does not start, exits, is killed, writes something that is not the protocol)
becomes ``errors.AgentWorkerError`` here, for every turn it had.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import AgentWorkerError, HermesAPIError
from . import wire

logger = logging.getLogger("hermes_api")

WORKER = Path(__file__).with_name("worker.py")
MAX_BUFFERED = 8 * 1024 * 1024  # bytes of one turn's events not yet taken by its client
STOP_GRACE = 5.0  # seconds a worker gets to exit after ``shutdown`` before SIGTERM, then SIGKILL


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """How to start the worker of one profile: the interpreter, its environment, its
    working directory, the file its stderr (and Hermes's stdout) goes to."""

    profile: str
    python: str
    env: Mapping[str, str]
    cwd: Path
    log_path: Path


class RemoteTurn:
    """One turn running in a worker: its events as they arrive, then its ``result``.

    ``items`` are text (``str``, consecutive deltas joined) and ``tool`` messages (dicts)
    in arrival order."""

    def __init__(self, turn_id: str, on_overflow: Callable[[RemoteTurn], None]) -> None:
        self.id = turn_id
        self.result: dict[str, Any] | None = None
        self.error: HermesAPIError | None = None
        self.interrupted_at: float | None = None  # monotonic seconds, once interrupted
        self._items: list[list[str] | dict[str, Any]] = []  # a list: consecutive deltas, joined in ``take``
        self._size = 0
        self._wake = asyncio.Event()
        self._on_overflow = on_overflow

    @property
    def done(self) -> bool:
        return self.result is not None or self.error is not None

    def feed(self, message: dict[str, Any]) -> None:
        """Take one ``delta`` or ``tool`` message (the reader's side; never blocks)."""
        if self.done:
            return
        if message["type"] == "delta":
            text = message["text"]
            self._size += len(text)
            if self._items and isinstance(self._items[-1], list):
                self._items[-1].append(text)  # not +=: a client that does not read would make it quadratic
            else:
                self._items.append([text])
        else:
            self._size += len(message.get("output") or "") + len(message.get("arguments") or "")
            self._items.append(message)
        self._wake.set()
        if self._size > MAX_BUFFERED:
            self.fail(AgentWorkerError("The client did not read the answer; the turn was stopped."))
            self._on_overflow(self)

    def finish(self, result: dict[str, Any]) -> None:
        if not self.done:
            self.result = result
            self._wake.set()

    def fail(self, error: HermesAPIError) -> None:
        if not self.done:
            self.error = error
            self._wake.set()

    async def arrived(self) -> None:
        """Wait until there are items to ``take`` or the turn has ended; safe to cancel."""
        await self._wake.wait()

    def take(self) -> list[str | dict[str, Any]]:
        """The items waiting, oldest first (possibly none)."""
        self._wake.clear()
        if self.done:
            self._wake.set()  # an ended turn stays "arrived"
        items, self._items, self._size = self._items, [], 0
        return ["".join(item) if isinstance(item, list) else item for item in items]

    async def batches(self) -> AsyncIterator[list[str | dict[str, Any]]]:
        """The items, in the groups they are waiting in when asked; ends when the turn
        has ended (its ``result`` or ``error`` is then set)."""
        while True:
            await self.arrived()
            items = self.take()
            if items:
                yield items
            if self.done:
                return


class WorkerProcess:
    """A running worker. Start it with ``await WorkerProcess.start(spec, timeout)``."""

    def __init__(self, spec: WorkerSpec, process: asyncio.subprocess.Process, hermes_version: str) -> None:
        self.spec = spec
        self.process = process
        self.hermes_version = hermes_version
        self.turns: dict[str, RemoteTurn] = {}
        self.idle_since = time.monotonic()
        self.retired = False  # takes no new turns; stopped once idle
        self.exited = asyncio.get_running_loop().create_future()  # the exit code
        self.stopping = False
        self._next = 0
        self._reader = asyncio.create_task(self._read())

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return not self.exited.done()

    @classmethod
    async def start(cls, spec: WorkerSpec, timeout: float) -> WorkerProcess:
        """Start the worker and wait up to ``timeout`` seconds for ``ready``. Raises
        ``AgentWorkerError`` (with the reason, never an environment value) when it does
        not start, and kills what it started, as it does when the wait is cancelled
        (``WorkerPool.aclose``)."""
        process = await spawn(spec.python, [], spec.env, spec.cwd, spec.log_path, f"of profile '{spec.profile}'")
        return await cls.ready(spec, process, timeout)

    @classmethod
    async def ready(cls, spec: WorkerSpec, process: asyncio.subprocess.Process, timeout: float,
                    how: str = "") -> WorkerProcess:  # fmt: skip
        """The worker ``process`` once it has said ``ready`` (within ``timeout`` seconds):
        a new one, or a spare just bound (``how`` says so in the log). Kills it and
        raises ``AgentWorkerError`` when it says anything else, or nothing."""
        hello = await first_line(process, timeout)
        if hello["type"] != "ready" or hello.get("protocol") != wire.PROTOCOL:
            kill(process)
            await process.wait()
            reason = hello.get("message") or f"protocol {hello.get('protocol')!r}, expected {wire.PROTOCOL}"
            logger.warning(
                "agent worker of profile %s did not start%s: %s (log: %s)", spec.profile, how, reason, spec.log_path
            )
            raise AgentWorkerError(
                f"The agent worker of profile '{spec.profile}' could not be started; see the server log."
            )
        logger.info("agent worker of profile %s started%s (pid %d, hermes-agent %s)", spec.profile, how, process.pid,
                    hello.get("hermes_version"))  # fmt: skip
        return cls(spec, process, str(hello.get("hermes_version")))

    # -- turns ----------------------------------------------------------------------

    async def submit(self, turn: dict[str, Any]) -> RemoteTurn:
        """Send a ``turn`` message (``turn`` without ``type`` and ``id``); its ``RemoteTurn``.
        Raises ``AgentWorkerError`` when the worker is gone."""
        if not self.alive:
            raise self._gone()
        self._next += 1
        remote = RemoteTurn(f"t{self._next}", self._overflowed)
        self.turns[remote.id] = remote
        try:
            self.process.stdin.write(wire.encode({**turn, "type": "turn", "id": remote.id}))  # type: ignore[union-attr]
            await self.process.stdin.drain()  # type: ignore[union-attr]
        except (ConnectionError, RuntimeError):
            self.turns.pop(remote.id, None)
            raise self._gone() from None
        return remote

    def interrupt(self, remote: RemoteTurn, reason: str) -> None:
        """Ask the worker to interrupt ``remote`` (``AIAgent.interrupt``); never waits. The
        turn stays in ``turns`` until the worker reports its end."""
        if remote.interrupted_at is None:
            remote.interrupted_at = time.monotonic()
        self._write({"type": "interrupt", "id": remote.id, "reason": reason})

    def _overflowed(self, remote: RemoteTurn) -> None:
        self.interrupt(remote, "the client is not reading the answer")
        self._ended(remote)

    def _ended(self, remote: RemoteTurn) -> None:
        self.turns.pop(remote.id, None)
        if not self.turns:
            self.idle_since = time.monotonic()

    def _write(self, message: dict[str, Any]) -> None:
        if self.alive and self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.write(wire.encode(message))

    # -- the reader -----------------------------------------------------------------

    async def _read(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        try:
            while line := await stdout.readline():
                message = wire.decode(line, wire.TO_PARENT)
                remote = self.turns.get(message.get("id", ""))
                if remote is None:
                    continue  # a turn already given up (interrupted, timed out)
                if message["type"] == "result":
                    self._ended(remote)
                    remote.finish(message)
                else:
                    remote.feed(message)
        except (wire.ProtocolError, ValueError) as exc:  # ValueError: a line over MAX_LINE
            logger.error("agent worker of profile %s broke the protocol: %s", self.spec.profile, exc)
            kill(self.process)
        code = await self.process.wait()
        if not self.stopping:
            logger.warning(
                "agent worker of profile %s (pid %d) exited with code %s; %d turn(s) lost (log: %s)",
                self.spec.profile, self.pid, code, len(self.turns), self.spec.log_path,
            )  # fmt: skip
        for remote in list(self.turns.values()):
            remote.fail(self._gone())
        self.turns.clear()
        self.exited.set_result(code)

    def _gone(self) -> AgentWorkerError:
        return AgentWorkerError(
            f"The agent worker of profile '{self.spec.profile}' stopped during the turn; the next request starts "
            "a new one."
        )

    # -- stopping -------------------------------------------------------------------

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """``shutdown``, then SIGTERM and SIGKILL (to its process group: tool
        subprocesses too) if it has not exited after ``grace`` seconds each."""
        self.stopping = True
        self._write({"type": "shutdown"})
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await asyncio.shield(self.exited)
                    break
            kill(self.process, sig)
        await asyncio.shield(self.exited)
        kill(self.process)  # whatever of its group is left


async def spawn(
    python: str, args: list[str], env: Mapping[str, str], cwd: Path, log_path: Path, whose: str
) -> asyncio.subprocess.Process:
    """``<python> -I worker.py <args>`` in its own session, stdin and stdout the
    protocol's pipes, stderr appended to ``log_path`` (made private). Raises
    ``AgentWorkerError`` (naming ``whose`` worker) when it cannot be started."""
    log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        return await asyncio.create_subprocess_exec(
            python, "-I", str(WORKER), *args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=fd,
            env=dict(env), cwd=cwd, start_new_session=True, limit=wire.MAX_LINE,
        )  # fmt: skip
    except OSError as exc:
        raise AgentWorkerError(f"The agent worker {whose} could not be started ({exc.strerror}).") from None
    finally:
        os.close(fd)


async def first_line(
    process: asyncio.subprocess.Process,
    timeout: float,
    allowed: frozenset[str] = wire.TO_PARENT,
    expected: str = "ready",
) -> dict[str, Any]:
    """The first message ``process`` writes, or a ``fatal`` saying that no ``expected``
    came within ``timeout`` seconds. Kills it when the wait is cancelled."""
    try:
        async with asyncio.timeout(timeout):
            return wire.decode(await process.stdout.readline(), allowed)  # type: ignore[union-attr]
    except (TimeoutError, wire.ProtocolError, ValueError):
        return {"type": "fatal", "message": f"no '{expected}' within {timeout:g}s"}
    except BaseException:  # cancelled (the server is stopping): leave nothing running
        kill(process)
        raise


def kill(process: asyncio.subprocess.Process, sig: int = signal.SIGKILL) -> None:
    """Signal the worker's process group (it leads its own session), by PID."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)
