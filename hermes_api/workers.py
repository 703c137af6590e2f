"""``hermes-api serve --workers N``: N server processes sharing one port.

uvicorn's own supervisor (``uvicorn.supervisors.Multiprocess``) binds the socket once,
spawns the worker processes, replaces any that dies, and on SIGINT or SIGTERM sends each
a SIGTERM and waits for it: every worker then drains its turns as a lone server does
(``shutdown.Drain`` notices uvicorn exiting within half a second). Spawning pickles
uvicorn's ``Config``, so what a worker needs crosses as plain data (uvicorn's
``_subprocess.py``): the app is the import string of ``worker_app``, which builds the
settings again in the worker from the config file and the command-line values the
parent put in ``WORKER_SETTINGS``; the HTTP protocol is a picklable ``protocol.ProtocolFactory``.

Each worker has its own profile registry and sweep, upstream connection pool,
concurrency slots (``max_concurrent`` and the per-profile caps count per worker, as
does ``max_connections``) and
store connection; the store itself is shared: one SQLite file (WAL, a busy timeout,
``BEGIN IMMEDIATE`` writes: no write is lost, a writer waits for another's commit) or
one PostgreSQL database. A worker whose parent is gone stops itself (``watch_parent``),
so none outlives a supervisor killed without a chance to stop them.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette

from .app import create_app
from .settings import Settings

WORKER_SETTINGS = "HERMES_API_WORKER_SETTINGS"  # {"config": path or null, "overrides": {...}}
PARENT_POLL = 1.0  # seconds between a worker's checks that its supervisor is alive


def run(workers: int, config: Path | None, overrides: Mapping[str, Any], options: Mapping[str, Any]) -> None:
    """Serve with ``workers`` processes until SIGINT or SIGTERM, with uvicorn's
    ``options`` (``cli.uvicorn_options``: the same as a lone ``serve``). ``config`` and
    ``overrides`` are where the settings came from: each worker loads them again."""
    # Inherited by the spawned workers. (Anything else every worker must share, such as
    # prometheus_client's PROMETHEUS_MULTIPROC_DIR, is set here the same way.)
    os.environ[WORKER_SETTINGS] = orjson.dumps(
        {"config": str(config) if config else None, "overrides": dict(overrides)}
    ).decode()
    uvicorn.run("hermes_api.workers:worker_app", factory=True, workers=workers, **options)


def worker_app() -> Starlette:
    """The app of one worker process (uvicorn's factory): the settings from the sources
    in ``WORKER_SETTINGS``, secrets from this process's environment (the parent's)."""
    sources = orjson.loads(os.environ[WORKER_SETTINGS])
    config = Path(sources["config"]) if sources["config"] else None
    settings = Settings.load(config, os.environ, sources["overrides"])
    watch_parent(os.getppid())
    return create_app(settings, environ=os.environ, freeze_startup=True)


def watch_parent(parent: int) -> None:
    """SIGTERM this process (a graceful stop) once ``parent`` is no longer its parent."""

    def watch() -> None:
        while os.getppid() == parent:
            threading.Event().wait(PARENT_POLL)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="hermes-parent-watch", daemon=True).start()
