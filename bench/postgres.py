"""A throwaway PostgreSQL cluster for the PostgreSQL store's figures, as the test suite
makes one (tests/conftest.py ``PostgresCluster``): ``initdb`` in a temporary directory,
the server on a free loopback port, pinned to the load CPU (a database server is another
machine's work in production, so it is not the gateway's CPU; its own CPU is reported
apart), stopped by its postmaster's PID. Debian: ``apt-get install postgresql``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from .procs import LOAD_CPU, free_port, pinned

USER, PASSWORD = "hermes", "bench-pg-secret"


def postgres_bin() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl``: on PATH, else Debian's
    ``/usr/lib/postgresql/<version>/bin`` (newest first), else None."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]), reverse=True)
    return versions[0].parent if versions else None


class Cluster:
    """``initdb`` + ``pg_ctl start`` (as Debian's ``postgres`` user under root: initdb
    refuses root); ``pid`` the postmaster; ``stop()`` ends it by that PID and removes
    the directory."""

    def __init__(self) -> None:
        found = postgres_bin()
        if found is None:
            raise RuntimeError("PostgreSQL's initdb/pg_ctl not found (Debian: apt-get install postgresql)")
        self.bin = found
        self.root = Path(tempfile.mkdtemp(prefix="hermes-api-bench-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            owner = pwd.getpwnam(self.user)
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        (self.root / "pwfile").write_text(PASSWORD)
        os.chmod(self.root / "pwfile", 0o644)
        self._run("initdb", "-D", str(self.data), "-U", USER, "--pwfile", str(self.root / "pwfile"),
                  "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync")  # fmt: skip
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200"
        log = str(self.root / "server.log")
        self._run("pg_ctl", "-D", str(self.data), "-l", log, "-w", "-o", options, "start", cpu=LOAD_CPU)
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])

    def _run(self, tool: str, *args: str, cpu: int | None = None) -> None:
        argv = [str(self.bin / tool), *args]
        done = subprocess.run(pinned(cpu, argv) if cpu is not None else argv, user=self.user,
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new, empty database; its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self, grace: float = 20.0) -> None:
        """SIGINT to the postmaster (PostgreSQL's fast shutdown), SIGKILL after ``grace``
        seconds; then the directory goes."""
        try:
            os.kill(self.pid, signal.SIGINT)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and _alive(self.pid):
                time.sleep(0.1)
            if _alive(self.pid):
                os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()
