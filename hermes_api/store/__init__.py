"""The response store: Responses API answers, chat sessions and usage records.

``ResponseStore`` is the interface the rest of the server uses; ``open_store(settings)``
opens the implementation the ``store`` setting names (encode/uvicorn picks its
``protocols/http/*_impl.py`` the same way): ``sqlite.SQLiteStore``, one file in
``state_dir`` (the default), or ``postgresql.PostgreSQLStore``, a server database that
several processes and machines share. Both run the one list of migrations in
``migrations`` and the SQL in ``queries``, and nothing outside this package knows which
one it got.

Every response and session row carries its ``owner`` (``keys.Caller.owner``) and
``profile`` and every read filters on both, so another key or profile finds nothing (a
404, never a 403 that would confirm the id exists). A write returns only once it is
committed and durable. Retention (``settings.Retention``) is applied on writes and at
start, and reads skip rows past the age limit, so an expired row is never served.

Usage records (``UsageRecord``) are one row per turn, written from each turn's ``exchange.Exchange``;
``usage_since`` totals one key's rows (optionally for one profile) since a time, over
every process that shares the store, and ``start_usage`` inserts a turn's row only if
the key's quotas allow it, atomically, so limits hold exactly across workers and replicas.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol

from ..settings import Settings

Message = dict[str, Any]
UsageGrouping = Literal["key", "profile", "day"]


class UsageWritten(NamedTuple):
    """What became of the usage rows one commit carried (``QueuedRow.group``'s result):
    ``rows`` their parameters, each a plain tuple of its record's fields in their order
    (on SQLite, without the last ones when they are None: ``writes.WriteQueue.add_row``);
    ``failed`` the ids of those the database refused, with its errors; ``error`` what
    failed the whole commit (then none was written), else None."""

    rows: list[tuple[object, ...]]
    failed: dict[str, BaseException]
    error: BaseException | None


class QueuedRow:
    """A usage row queued by ``record_usage``: awaiting it returns None once the row is
    committed, or raises what kept it out. ``group`` is the future of every row queued
    with it (one transaction; its result a ``UsageWritten``), and ``first`` is true for
    the first row of its group: a caller that follows many rows with one callback per
    group (``exchange.UsageRows``) adds it there, not a future per row."""

    __slots__ = ("group", "id", "first")

    def __init__(self, group: asyncio.Future[UsageWritten], row_id: str, first: bool) -> None:
        self.group = group
        self.id = row_id
        self.first = first

    def __await__(self) -> Generator[Any, None, None]:
        # shielded: a caller that stops waiting must not cancel the others' future
        written = yield from asyncio.shield(self.group).__await__()
        error = written.error or written.failed.get(self.id)
        if error is not None:
            raise error


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """One stored Responses API answer.

    ``created_at`` Unix seconds; ``input_items`` the request's input as items (with ids,
    for ``/input_items``); ``messages`` that turn's chat messages, input then answer
    (never the ``instructions``), replayed by ``previous_response_id``; ``body`` the
    response object as it was served.
    """

    id: str
    owner: str
    profile: str
    created_at: float
    previous_response_id: str | None
    input_items: list[dict[str, Any]]
    messages: list[Message]
    body: dict[str, Any]


class UsageRecord(NamedTuple):
    """One turn (a chat completion or a Responses request, streamed or not).

    A named tuple whose fields are the usage table's columns (``queries.USAGE_COLUMNS``
    is made from them): its fields are the row's parameters. One is made for every turn; a frozen dataclass cost
    2.1 µs to make and a tuple more to turn into parameters. The fields most turns leave
    None (``error``, ``delegated_by``, ``caller_request_id``) come last, so that SQLite
    binds the others alone (``sqlite.SQLiteStore._insert_rows``), and ``stream`` is an
    int (1: streamed): Python's sqlite3 runs its adapter lookup for every parameter that
    is not an int, float or str (None and bools too), 2-3,000 instructions each, which
    made a usage row's insert cost as much again.

    ``id`` is unique per turn (the row's key: ``record_usage`` of the same id completes
    the row ``start_usage`` inserted); ``created_at`` Unix seconds when the turn began;
    ``key_name`` the API key's configured name (never key material); ``model`` the
    profile's upstream model id; ``operation`` the handler's OpenAI operationId
    (``create_chat_completion``, ``create_response``); ``request_id`` the request's
    ``x-request-id``. ``status`` the HTTP status sent (None while in flight), ``error``
    our error code when the turn failed, also after a stream's first byte;
    ``input_tokens``/``output_tokens`` the provider's own figures (``usage.prompt_tokens``,
    ``usage.completion_tokens``), None when it sent none; ``duration`` seconds.
    ``delegated_by`` the delegating profile of a turn one agent delegated to this
    profile (``delegation``), and ``caller_request_id`` that delegating request's
    ``x-request-id``; both None for a client's own turn.
    """

    id: str
    created_at: float
    key_name: str
    profile: str
    model: str
    operation: str
    stream: int
    request_id: str
    status: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    duration: float | None = None
    error: str | None = None
    delegated_by: str | None = None
    caller_request_id: str | None = None


@dataclass(frozen=True, slots=True)
class UsageTotals:
    """One key's turns in a window: ``requests`` rows (in flight and refused ones
    included), the sums of their known token figures, and ``first_at``, the
    ``created_at`` of the oldest row counted (None when there is none), from which a
    sliding window's ``Retry-After`` follows: ``first_at + window - now``."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    first_at: float | None = None

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class Quota:
    """What one key may spend in the window from ``since`` (Unix seconds) on: at most
    ``max_requests`` turns and ``max_tokens`` input plus output tokens (None: no such
    bound), counted over its turns for ``profile`` only when one is given."""

    since: float
    max_requests: int | None = None
    max_tokens: int | None = None
    profile: str | None = None

    def spent(self, totals: UsageTotals) -> bool:
        """True when ``totals`` leave nothing for one more turn."""
        return (self.max_requests is not None and totals.requests >= self.max_requests) or (
            self.max_tokens is not None and totals.tokens >= self.max_tokens
        )


@dataclass(frozen=True, slots=True)
class UsageSummary:
    """One line of ``hermes-api usage``: the turns of one key, profile or UTC day
    (``group``, ``YYYY-MM-DD`` for days). ``failed``: turns with an error or a status of
    400 and above; ``without_usage``: turns whose provider sent no token figures;
    ``seconds``: their total duration."""

    group: str
    requests: int
    failed: int
    input_tokens: int
    output_tokens: int
    without_usage: int
    seconds: float


class ResponseStore(Protocol):
    """Where responses, chat sessions and usage live. Every response and session
    method is scoped by ``owner`` and ``profile``; what another owner or profile stored
    is invisible (None, False, []). Any method may raise
    ``errors.StoreUnavailableError`` when a server database cannot be reached."""

    async def put_response(self, record: StoredResponse) -> None:
        """Store ``record``; returns only once it is durable."""
        ...

    async def get_response(self, owner: str, response_id: str, profile: str | None = None) -> StoredResponse | None:
        """The response, or None; ``profile`` None = whichever profile it belongs to."""
        ...

    async def delete_response(self, owner: str, profile: str, response_id: str) -> bool:
        """Delete it; False when there was nothing to delete."""
        ...

    async def conversation(self, owner: str, profile: str, response_id: str) -> list[Message] | None:
        """The chat messages of the chain ending at ``response_id``, oldest turn first;
        None when that response is not found. A chain whose earlier link was deleted
        or expired starts after the gap."""
        ...

    async def find_items(self, owner: str, profile: str, item_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The input and output items with these ids among the stored responses, by id
        (``item_reference`` input items name them); ids not found are left out."""
        ...

    async def session_messages(self, owner: str, profile: str, session_id: str) -> list[Message]:
        """Every stored message of a chat session, oldest first ([] for a new one)."""
        ...

    async def append_session(self, owner: str, profile: str, session_id: str, messages: list[Message]) -> None:
        """Add one turn's messages to a chat session; returns once durable."""
        ...

    def record_usage(self, record: UsageRecord) -> QueuedRow:
        """Store a turn's usage row, or complete the row of the same ``id`` that
        ``start_usage`` inserted. The row is queued when this is called (so it is
        written even if the caller stops waiting), and written with others in one
        transaction within ``writes.ROW_LINGER`` (SQLite) or ``postgresql.LINGER``
        seconds; the ``QueuedRow`` is done once it is committed (on SQLite with
        ``synchronous=NORMAL``: see ``sqlite``)."""
        ...

    async def start_usage(self, record: UsageRecord, quotas: Sequence[Quota]) -> Quota | None:
        """Insert ``record`` (a turn in flight) unless one of ``quotas`` is already spent
        by ``record.key_name``'s rows; returns that quota (inserting nothing), else None.
        The check and the insert are one transaction, serialised per key across every
        process sharing the store, so concurrent turns cannot overshoot a request bound."""
        ...

    async def usage_since(self, key_name: str, since: float, profile: str | None = None) -> UsageTotals:
        """The turns of ``key_name`` (for ``profile`` only, when given) created at or
        after ``since`` (Unix seconds), by every process sharing the store."""
        ...

    async def usage_summary(self, since: float, by: UsageGrouping) -> list[UsageSummary]:
        """Every turn since ``since``, one line per key, profile or UTC day, sorted by it."""
        ...

    async def prune(self) -> None:
        """Apply retention now (it also runs on writes)."""
        ...

    async def aclose(self) -> None:
        """Finish queued work and release the database."""
        ...


async def open_store(settings: Settings) -> ResponseStore:
    """The store the ``store`` setting names, migrated and pruned: SQLite in
    ``state_dir`` (the default), or the PostgreSQL database at ``settings.store.url``.
    Raises ``errors.StoreUnavailableError`` when that database cannot be reached."""
    # Imported here: both import this module, and psycopg is an optional dependency.
    if settings.store.url is None:
        from .sqlite import SQLiteStore

        return await SQLiteStore.open(settings.state_dir, settings.retention)
    from .postgresql import PostgreSQLStore

    return await PostgreSQLStore.open(settings.store, settings.retention)
