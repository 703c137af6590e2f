"""The Prometheus metrics of one app, and their text exposition (``GET /metrics``).

``Metrics`` holds every metric family and records one request's ``exchange.Exchange``
in one call (``observe``). Label values are key *names*, profile names, OpenAI
operationIds, statuses and error codes: never key material, and a bounded set (a
profile label is only ever a served profile, read from the answer's
``X-Hermes-Profile``). A request costs a few dictionary updates (``tallies.Tallies``);
``flush`` adds them to prometheus_client's values before each scrape, each family's
children looked up once per label tuple and kept (its ``labels()`` costs microseconds).

Several worker processes (prometheus_client's multiprocess mode, "Multiprocess Mode
(E.g. Gunicorn)" in its README): when ``PROMETHEUS_MULTIPROC_DIR`` is set before
``prometheus_client`` is imported, every process writes its values to files there and
``render`` sums them. ``worker_directory`` creates that directory for a run of several
workers and removes it afterwards. Each worker flushes every second
(``flush_regularly``, a lifespan task) and when it stops (``release``, after which its
in-flight gauge leaves the sum).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from .tallies import Tallies

if TYPE_CHECKING:
    from .exchange import Exchange

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# What generate_latest writes (our names need no escaping): the format every Prometheus reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds. Model answers take from tens of milliseconds (a cached, short answer) to
# minutes (a long stream): the buckets span both.
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# Our own 429s (errors.py): counted as refusals; the provider's 429 is an upstream error.
REFUSAL_CODES = frozenset({"concurrency_limit_exceeded", "key_rate_limit_exceeded"})
WorkerEvent = Literal["start", "restart", "crash", "stop"]
READ_ATTEMPTS = 5  # reads of the workers' files per scrape (see render)
FLUSH_INTERVAL = 1.0  # seconds: how stale another worker's counts can be in a scrape


class Metrics:
    """Every metric family of the server (the README's "Metrics" table), on a registry
    of its own so that several apps in one process (tests) never collide.

    ``multiprocess_dir``: where the worker processes write (``PROMETHEUS_MULTIPROC_DIR``);
    None for a single process, whose values live in memory.
    """

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        self.registry = registry = CollectorRegistry(auto_describe=True)
        if multiprocess_dir is None:
            ProcessCollector(registry=registry)  # one process: its CPU and memory mean something
        self.requests = Counter(
            "hermes_api_requests",
            "Requests answered, by endpoint (OpenAI operationId), profile, key name and HTTP status.",
            ["endpoint", "profile", "key", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "hermes_api_request_duration_seconds",
            "Seconds from the request's arrival to the last byte of its answer.",
            ["endpoint", "profile"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.first_byte = Histogram(
            "hermes_api_time_to_first_byte_seconds",
            "Seconds from the request's arrival to the first byte of its answer's body.",
            ["endpoint", "profile"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.upstream_errors = Counter(
            "hermes_api_upstream_errors",
            "Failed calls to a profile's provider, by error code (upstream_rejected: a 4xx passed on).",
            ["profile", "kind"],
            registry=registry,
        )
        self.tokens = Counter(
            "hermes_api_tokens",
            "Tokens as the provider counted them, by profile, key name and type (input, output).",
            ["profile", "key", "type"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "hermes_api_turns_in_flight",
            "Turns running now (upstream requests holding a concurrency slot), by profile.",
            ["profile"],
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.refusals = Counter(
            "hermes_api_limit_refusals",
            "Requests refused with a 429 of our own (a concurrency cap, a key's rate limit), by code.",
            ["profile", "key", "code"],
            registry=registry,
        )
        self.store_writes = Counter(
            "hermes_api_store_writes", "Writes to the store, by operation.", ["operation"], registry=registry
        )
        self.store_failures = Counter(
            "hermes_api_store_write_failures",
            "Writes to the store that failed (nothing acknowledged), by operation.",
            ["operation"],
            registry=registry,
        )
        self.delegated = Counter(
            "hermes_api_delegated_requests",
            "Requests one agent profile delegated to another (the target's turns), by target profile, "
            "delegating profile, key name and HTTP status.",
            ["profile", "caller", "key", "status"],
            registry=registry,
        )
        self.agent_workers = Counter(
            "hermes_api_agent_worker_events",
            "Agent-runtime worker processes started, restarted, crashed and stopped, by profile.",
            ["profile", "event"],
            registry=registry,
        )
        self._children: dict[tuple[object, ...], Any] = {}
        self.tallies = Tallies(LATENCY_BUCKETS, REFUSAL_CODES)
        # observe(exchange): one finished request (its count, latencies, tokens, upstream
        # error, refusal), called once per request by ``exchange.ExchangeMiddleware`` and
        # kept in ``tallies`` until the next ``flush``. The tallies' own method: a method
        # here that called it cost every request one more call.
        self.observe: Callable[[Exchange], None] = self.tallies.add
        self._in_flight: Callable[[], Mapping[str, int]] = dict
        self._profiles_in_flight: set[str] = set()

    def _child(self, family: Counter | Gauge | Histogram, *values: str) -> Any:
        key = (family, *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*values)
        return child

    # -- recording ------------------------------------------------------------------

    def count_turns_of(self, in_flight: Callable[[], Mapping[str, int]]) -> None:
        """Where ``hermes_api_turns_in_flight`` comes from: ``in_flight()``, the turns
        holding a concurrency slot by profile (``limits.ConcurrencyLimiter.by_profile``),
        read at each ``flush``. The limiter counts them already; counting them again
        per turn cost every turn two calls."""
        self._in_flight = in_flight

    def flush(self) -> None:
        """Move what ``tallies`` holds into prometheus_client's values (with several
        workers, this process's files)."""
        t = self.tallies
        for (endpoint, profile, key, status), seen in t.seen.items():
            self._child(self.requests, endpoint, profile, key, status).inc(seen.requests)
            if seen.input_tokens:
                self._child(self.tokens, profile, key, "input").inc(seen.input_tokens)
            if seen.output_tokens:
                self._child(self.tokens, profile, key, "output").inc(seen.output_tokens)
            for family, total, counts in (
                (self.duration, seen.duration_sum, seen.duration),
                (self.first_byte, seen.first_byte_sum, seen.first_byte),
            ):
                if not any(counts):
                    continue
                child = self._child(family, endpoint, profile)
                # prometheus_client has no call to add many observations at once: its
                # Histogram keeps a value per bucket (not cumulative) and one for the sum.
                child._sum.inc(total)
                for value, count in zip(child._buckets, counts, strict=True):
                    if count:
                        value.inc(count)
        t.seen.clear()
        for family, table in (
            (self.upstream_errors, t.upstream_errors),
            (self.refusals, t.refusals),
            (self.delegated, t.delegated),
            (self.store_writes, t.store_writes),
            (self.store_failures, t.store_failures),
        ):
            for labels, amount in table.items():
                self._child(family, *labels).inc(amount)
            table.clear()
        now = self._in_flight()
        for profile in self._profiles_in_flight | now.keys():  # a profile once seen goes back to 0
            self._child(self.in_flight, profile).set(now.get(profile, 0))
        self._profiles_in_flight |= now.keys()

    def store_write(self, operation: str, *, failed: bool) -> None:
        """One write to the store (``operation``: the store method), and whether it failed."""
        self.tallies.add_store_writes(operation, 1, int(failed))

    def store_writes_done(self, operation: str, count: int, failed: int) -> None:
        """``count`` writes of ``operation`` done, ``failed`` of them failed; kept in
        ``tallies`` until the next ``flush``, like the requests (a Response's own write
        counted straight into prometheus_client cost it a lock and a label lookup)."""
        self.tallies.add_store_writes(operation, count, failed)

    def agent_worker(self, profile: str, event: WorkerEvent) -> None:
        """For the agent runtime: a worker process of ``profile`` was started, restarted
        (in place of one that failed), crashed or stopped (idle, or replaced).
        ``hermes_api_agent_worker_events_total``."""
        self._child(self.agent_workers, profile, event).inc()

    # -- exposition -----------------------------------------------------------------

    def render(self) -> bytes:
        """The text exposition format (0.0.4) of every metric; with several workers,
        the sum over all of them (live gauges over the living ones only), each other
        worker's as of its last ``flush`` (``FLUSH_INTERVAL``)."""
        self.flush()
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.multiprocess_dir)
        for _ in range(READ_ATTEMPTS - 1):
            try:
                return generate_latest(registry)
            except struct.error:
                # Another worker is creating its file at this instant: for a moment it
                # is empty, and prometheus_client's reader fails on it. Read again.
                time.sleep(0.005)
        return generate_latest(registry)

    async def flush_regularly(self) -> None:
        """With several workers (a lifespan task): ``flush`` every ``FLUSH_INTERVAL``
        seconds, so a scrape answered by any worker has every other's counts too."""
        if self.multiprocess_dir is None:
            return
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            self.flush()

    def release(self) -> None:
        """This process stops: what it counted is flushed, then its live gauges leave
        the multiprocess sum."""
        self.flush()
        if self.multiprocess_dir is not None:
            mark_process_dead(os.getpid(), self.multiprocess_dir)

    @classmethod
    def from_environ(cls) -> Metrics:
        """Multiprocess when ``PROMETHEUS_MULTIPROC_DIR`` names a directory, else in memory."""
        path = os.environ.get(MULTIPROC_ENV)
        return cls(path if path and os.path.isdir(path) else None)


@contextmanager
def worker_directory(workers: int) -> Iterator[str | None]:
    """Around a run of ``workers`` processes: with more than one, a fresh private
    ``PROMETHEUS_MULTIPROC_DIR`` (set in ``os.environ`` before the workers start, so
    they inherit it), removed with everything in it afterwards. A directory the
    operator set already is used as it is and left in place (they empty it between
    runs). One worker: nothing (None)."""
    if workers <= 1 or os.environ.get(MULTIPROC_ENV):
        yield os.environ.get(MULTIPROC_ENV) if workers > 1 else None
        return
    path = tempfile.mkdtemp(prefix="hermes-api-metrics-")
    os.environ[MULTIPROC_ENV] = path
    try:
        yield path
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(path, ignore_errors=True)
