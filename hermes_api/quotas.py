"""Per-key rate limits: ``rpm``, ``tpm`` and ``tokens_per_day``, from the usage records.

A key's limits (``keys[].rpm`` …, and ``keys[].per_profile.<name>`` for its turns on
one profile) are sliding windows that end now: at most ``rpm`` turns and ``tpm``
input plus output tokens in the last 60 seconds, ``tokens_per_day`` tokens in the last
24 hours. They are counted over the key's usage rows in the store, the rows of every
worker and replica that shares it, so they hold across all of them, not per process.

A turn of a key with limits is admitted by ``ResponseStore.start_usage``: the check and
the insert of the turn's row (in flight, no tokens yet) are one transaction,
serialised per key, so concurrent turns cannot overshoot a request bound. Tokens are
known only once a turn ends: a turn admitted under a token bound may end above it,
and the next one is refused. A refused turn gets 429 ``key_rate_limit_exceeded`` with
``Retry-After``: the whole seconds until the oldest turn counted leaves the window
(the earliest a retry can pass; a token bound may need more turns to leave).

``binding.ProfileEndpoint`` passes each turn's usage row (``exchange.Exchange.usage_record``) to
``admit``; the turn's end completes the same row (``exchange.UsageRows``). Rate limits need
usage recording (``record_usage``, on by default).
"""

from __future__ import annotations

import logging
import math
import time

from .errors import KeyRateLimitError
from .settings import APIKey, RateLimits
from .store import Quota, ResponseStore, UsageRecord, UsageTotals

logger = logging.getLogger("hermes_api")

MINUTE = 60.0  # seconds: the window of rpm and tpm
DAY = 86400.0  # seconds: the window of tokens_per_day


def limits_for(key: APIKey, profile: str) -> tuple[tuple[RateLimits, str | None], ...]:
    """The limits that bound ``key``'s turns on ``profile``: ``(limits, None)`` for all its
    turns, ``(limits, profile)`` for those on that profile; empty when none."""
    found: tuple[tuple[RateLimits, str | None], ...] = ((key.limits, None),) if key.limits else ()
    for name, limits in key.profile_limits:
        if name == profile:
            found += ((limits, profile),)
    return found


def limited(key: APIKey | None, profile: str) -> bool:
    """True when ``key`` has limits for its turns on ``profile`` (then they need ``admit``)."""
    return key is not None and (key.limited_everywhere or profile in key.limited_profiles)


def quotas(key: APIKey, profile: str, now: float) -> list[Quota]:
    """The store's ``Quota`` windows for a turn of ``key`` on ``profile`` at ``now`` (Unix s)."""
    found = []
    for limits, scope in limits_for(key, profile):
        if limits.rpm is not None or limits.tpm is not None:
            found.append(Quota(now - MINUTE, limits.rpm, limits.tpm, scope))
        if limits.tokens_per_day is not None:
            found.append(Quota(now - DAY, None, limits.tokens_per_day, scope))
    return found


def refusal(key: APIKey, quota: Quota, totals: UsageTotals, window: float) -> KeyRateLimitError:
    """The 429 for ``quota`` (``window`` seconds long) spent by ``totals``; ``Retry-After``
    is when its oldest turn leaves the window (``first_at + window - now``), at least 1 s."""
    now = time.time()
    if quota.max_requests is not None and totals.requests >= quota.max_requests:
        what = f"{quota.max_requests} requests per minute"
    else:
        what = f"{quota.max_tokens} tokens per {'minute' if window <= MINUTE else 'day'}"
    where = f" on model `{quota.profile}`" if quota.profile else ""
    oldest = totals.first_at if totals.first_at is not None else now
    retry_after = max(1, math.ceil(oldest + window - time.time()))
    return KeyRateLimitError(
        f"The API key '{key.name}' has reached its limit of {what}{where}; retry in {retry_after} s.",
        retry_after=retry_after,
    )


async def admit(store: ResponseStore, key: APIKey | None, record: UsageRecord) -> bool:
    """Start ``record`` (the turn's usage row) when ``key``'s limits allow it. True: the
    row is in the store, in flight, and the turn must complete it (``record_usage``);
    False: the key has no limits for this profile, nothing was written. Raises
    ``KeyRateLimitError`` (429) when a limit is spent."""
    if key is None:
        return False
    found = quotas(key, record.profile, record.created_at)
    if not found:
        return False
    spent = await store.start_usage(record, found)
    if spent is None:
        return True
    totals = await store.usage_since(key.name, spent.since, spent.profile)
    raise refusal(key, spent, totals, record.created_at - spent.since)
