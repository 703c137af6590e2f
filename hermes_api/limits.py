"""Caps on concurrent upstream requests, server-wide and per profile.

A request that would run a turn takes a slot for as long as its upstream request is
open (the whole stream, for a streamed answer). With ``max_concurrent`` slots taken
server-wide, or the profile's ``max_concurrent`` (``per_profile.<name>``, default
``max_concurrent_per_profile``), it is refused at once with a 429
``concurrency_limit_exceeded`` and ``Retry-After``: queueing would only hide overload
from clients, and the OpenAI SDK retries a 429 after the time it names.

Everything runs on the event loop, and taking or giving back a slot never awaits, so
plain counters need no lock.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .errors import ConcurrencyLimitError
from .settings import Settings

RETRY_AFTER = 1  # seconds: a slot frees as soon as any turn ends


class ConcurrencyLimiter:
    """Counts the upstream requests in flight, in all and per profile."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._total = 0
        self._by_profile: dict[str, int] = {}

    @property
    def in_flight(self) -> int:
        """Upstream requests holding a slot now."""
        return self._total

    def by_profile(self) -> dict[str, int]:
        """Upstream requests holding a slot now, by profile (profiles with none left out)."""
        return dict(self._by_profile)

    @contextmanager
    def slot(self, profile: str) -> Iterator[None]:
        """Hold one slot for ``profile`` while the block runs. Raises
        ``ConcurrencyLimitError`` (429) when the server or the profile is at its cap."""
        settings = self._settings
        held = self._by_profile.get(profile, 0)
        if self._total >= settings.max_concurrent:
            raise ConcurrencyLimitError(
                f"The server is at its limit of {settings.max_concurrent} concurrent requests; retry shortly.",
                retry_after=RETRY_AFTER,
            )
        cap = settings.limits_for(profile).max_concurrent
        if held >= cap:
            raise ConcurrencyLimitError(
                f"The model `{profile}` is at its limit of {cap} concurrent requests; retry shortly.",
                retry_after=RETRY_AFTER,
            )
        self._total += 1
        self._by_profile[profile] = held + 1
        try:
            yield
        finally:
            self._total -= 1
            left = self._by_profile[profile] - 1
            if left:
                self._by_profile[profile] = left
            else:
                del self._by_profile[profile]
