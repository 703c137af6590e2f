"""What requests added to the metrics since the last flush, in plain objects.

prometheus_client's ``inc`` and ``observe`` take a lock per call, and with several
workers write a memory-mapped file: about 0.6 µs a counter and 2 µs a histogram, five
to seven calls a request. ``Tallies.add`` looks up one record per (endpoint, profile,
key, status) and adds to it instead; ``metrics.Metrics.flush`` moves the totals into
prometheus_client's values before each scrape (and, with several workers, every
second, so that any worker's scrape sees the others'), summing the records of each
family's own labels. Everything runs on the event loop: no lock.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .exchange import Exchange

Labels = tuple[str, ...]
RequestLabels = tuple[str, str, str, int]  # endpoint, profile, key name, HTTP status


class Seen:
    """The requests of one (endpoint, profile, key, status) since the last flush: how
    many; their durations and times to first byte, each a ``sum`` (seconds) and counts
    per bucket (not cumulative; the last one is ``+Inf``); the provider's tokens."""

    __slots__ = (
        "requests", "duration_sum", "duration", "first_byte_sum", "first_byte", "input_tokens", "output_tokens"
    )  # fmt: skip

    def __init__(self, buckets: int) -> None:
        self.requests = 0
        self.duration_sum = 0.0
        self.duration = [0] * (buckets + 1)
        self.first_byte_sum = 0.0
        self.first_byte = [0] * (buckets + 1)
        self.input_tokens = 0
        self.output_tokens = 0


class Tallies:
    """``seen``: a ``Seen`` per request labels; and per their own labels, the rarer
    upstream errors, refusals (the 429s of our own ``refusal_codes``) and delegated
    requests, and the store's writes and failed writes, since the last
    ``Metrics.flush``. (Turns in flight are the concurrency limiter's count, read at
    each flush.)"""

    def __init__(self, bounds: tuple[float, ...], refusal_codes: frozenset[str]) -> None:
        self.bounds = bounds
        self.refusal_codes = refusal_codes
        self.seen: dict[RequestLabels, Seen] = {}
        self.upstream_errors: dict[Labels, int] = {}
        self.refusals: dict[Labels, int] = {}
        self.delegated: dict[RequestLabels, int] = {}
        self.store_writes: dict[Labels, int] = {}  # by (operation,): the store method
        self.store_failures: dict[Labels, int] = {}

    def add(self, e: Exchange) -> None:
        """One finished request."""
        labels = (e.endpoint, e.profile, e.key, e.status)
        try:
            seen = self.seen[labels]
        except KeyError:
            seen = self.seen[labels] = Seen(len(self.bounds))
        seen.requests += 1
        seconds = e.finished - e.started
        seen.duration_sum += seconds
        seen.duration[bisect_left(self.bounds, seconds)] += 1  # the first bound >= seconds: `le`
        if e.first_byte is not None:
            seconds = e.first_byte - e.started
            seen.first_byte_sum += seconds
            seen.first_byte[bisect_left(self.bounds, seconds)] += 1
        if e.input_tokens:
            seen.input_tokens += e.input_tokens
        if e.output_tokens:
            seen.output_tokens += e.output_tokens
        if e.error is not None or e.upstream_error is not None or e.delegated_by is not None:
            self._add_rare(e)

    def _add_rare(self, e: Exchange) -> None:
        """What few requests have: an upstream error, a refusal, a delegating profile."""
        if e.upstream_error is not None:
            key = (e.profile, e.upstream_error)
            self.upstream_errors[key] = self.upstream_errors.get(key, 0) + 1
        if e.error in self.refusal_codes:
            key = (e.profile, e.key, str(e.error))
            self.refusals[key] = self.refusals.get(key, 0) + 1
        if e.delegated_by is not None:
            asked = (e.profile, e.delegated_by, e.key, e.status)
            self.delegated[asked] = self.delegated.get(asked, 0) + 1

    def add_store_writes(self, operation: str, count: int, failed: int) -> None:
        """``count`` writes of ``operation`` done, ``failed`` of them failed."""
        key = (operation,)
        self.store_writes[key] = self.store_writes.get(key, 0) + count
        if failed:
            self.store_failures[key] = self.store_failures.get(key, 0) + failed
