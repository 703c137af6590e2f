"""Processes of the benchmark: start pinned to a core, wait until they listen, read their
costs from /proc, stop them by PID.

Pinning (2 cores): the gateway under test runs alone on ``GATEWAY_CPU``; the load
generator, the fake upstream and the harness share ``LOAD_CPU``. Every process started
here is stopped by its own PID (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

GATEWAY_CPU = 0
LOAD_CPU = 1
CLK_TCK = os.sysconf("SC_CLK_TCK")
NOFILE = 65536


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(cpu: int, argv: Sequence[str]) -> list[str]:
    """``argv`` under ``taskset -c cpu`` (when there are at least two CPUs)."""
    return ["taskset", "-c", str(cpu), *argv] if (os.cpu_count() or 1) >= 2 else list(argv)


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(NOFILE, hard) if hard != resource.RLIM_INFINITY else NOFILE
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))


def raise_own_nofile() -> None:
    """Let the harness itself hold many sockets (the concurrency benchmark)."""
    _raise_nofile()


@dataclass
class Proc:
    """A started process: ``name`` for messages, its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start(
    name: str, argv: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> Proc:
    """Start ``argv`` in its own session, stdout and stderr to ``log``."""
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_raise_nofile,
        )
    return Proc(name, popen, log)


def stop(proc: Proc, grace: float = 10.0) -> None:
    """SIGTERM ``proc``'s process group (it is the leader of its own session, so only its
    own children are in it), SIGKILL after ``grace`` seconds."""
    if proc.popen.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.popen.wait(grace)
    except subprocess.TimeoutExpired:
        with _suppress_lookup():
            os.killpg(proc.pid, signal.SIGKILL)
        proc.popen.wait(5)


@contextmanager
def _suppress_lookup() -> Iterator[None]:
    try:
        yield
    except ProcessLookupError:
        pass


@contextmanager
def running(name: str, argv: Sequence[str], **kwargs: object) -> Iterator[Proc]:
    """``start`` … ``stop`` as a context manager."""
    proc = start(name, argv, **kwargs)  # type: ignore[arg-type]
    try:
        yield proc
    finally:
        stop(proc)


def wait_listening(proc: Proc, port: int, timeout: float = 60.0) -> float:
    """Wait until ``127.0.0.1:port`` accepts a connection; seconds waited. Raises
    ``RuntimeError`` with the log's tail if the process dies or the time runs out."""
    began = time.perf_counter()
    while time.perf_counter() - began < timeout:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return time.perf_counter() - began
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{proc.name} did not listen on port {port} within {timeout} s:\n{proc.tail()}")


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, ()))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants (all threads included)."""
    total = 0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / CLK_TCK


def memory_kib(pid: int, key: str = "VmHWM") -> int:
    """``VmHWM`` (peak resident set) or ``VmRSS`` in KiB, summed over ``pid``'s tree."""
    total = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return (total - idle) / CLK_TCK, total / CLK_TCK
