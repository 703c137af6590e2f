"""The store's schema: one ordered list of named migrations for every backend.

simonw/llm's ``llm/migrations.py`` is the model: each migration is a function named
``m<NNN>_<what>``, applied once, in list order, and recorded by name in ``_migrations``
in the same transaction as its changes, so a crash leaves it either applied and
recorded or neither. Never edit or reorder a shipped migration; append a new one.

A migration returns its SQL statements for a ``Dialect``: the few words in which
SQLite and PostgreSQL differ (an auto-incrementing key, a float column) are the
dialect's, the rest is the same text, so the schemas cannot drift apart. ``migrate``
runs the list on an SQLite connection; ``migrate_async`` on a PostgreSQL one (psycopg
3's ``AsyncConnection``). Both are tested from a blank database (tests/test_store.py).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between the backends' SQL. ``serial``: an integer primary key in
    insertion order, never reused (retention counts on it); ``real``: a float column;
    ``day``: the UTC date (``YYYY-MM-DD``) of a Unix-seconds ``{column}``; ``param``: the
    query parameter placeholder (the shared queries are written with ``?``)."""

    name: str
    serial: str
    real: str
    day: str
    param: str

    def sql(self, query: str) -> str:
        """``query`` (written with ``?`` placeholders) as this backend takes it."""
        return query if self.param == "?" else query.replace("?", self.param)


SQLITE = Dialect(
    "sqlite", "INTEGER PRIMARY KEY AUTOINCREMENT", "REAL", "strftime('%Y-%m-%d', {column}, 'unixepoch')", "?"
)
POSTGRESQL = Dialect(
    "postgresql",
    "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    "DOUBLE PRECISION",
    "to_char(to_timestamp({column}) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    "%s",
)

Migration = Callable[[Dialect], list[str]]


def m001_responses(sql: Dialect) -> list[str]:
    """Stored Responses API answers, each bound to the key (``owner``) and profile that
    made it. ``seq``: insertion order; ``messages``: the chat messages of that turn
    (input, then answer), which ``previous_response_id`` chains replay; ``body``: the
    response object as served."""
    return [
        f"""
        CREATE TABLE responses (
            seq {sql.serial},
            id TEXT NOT NULL UNIQUE,
            owner TEXT NOT NULL,
            profile TEXT NOT NULL,
            created_at {sql.real} NOT NULL,
            previous_response_id TEXT,
            input_items TEXT NOT NULL,
            messages TEXT NOT NULL,
            body TEXT NOT NULL
        )
        """,
        "CREATE INDEX responses_created_at ON responses (created_at)",
    ]


def m002_session_turns(sql: Dialect) -> list[str]:
    """Chat-completions session continuity (``X-Hermes-Session-Id``): one row per
    successful turn, its messages in order, bound to key and profile."""
    return [
        f"""
        CREATE TABLE session_turns (
            seq {sql.serial},
            owner TEXT NOT NULL,
            profile TEXT NOT NULL,
            session_id TEXT NOT NULL,
            created_at {sql.real} NOT NULL,
            messages TEXT NOT NULL
        )
        """,
        "CREATE INDEX session_turns_session ON session_turns (owner, profile, session_id, seq)",
        "CREATE INDEX session_turns_created_at ON session_turns (created_at)",
    ]


def m003_usage(sql: Dialect) -> list[str]:
    """One row per turn (``store.UsageRecord``): who (the key's name, never the key),
    which profile and upstream model, how it ended, the provider's token figures (NULL
    when it sent none) and how long it took. ``usage_key`` serves the per-key totals
    of rate limits (``usage_since``)."""
    return [
        f"""
        CREATE TABLE usage (
            seq {sql.serial},
            id TEXT NOT NULL UNIQUE,
            created_at {sql.real} NOT NULL,
            key_name TEXT NOT NULL,
            profile TEXT NOT NULL,
            model TEXT NOT NULL,
            operation TEXT NOT NULL,
            stream INTEGER NOT NULL,
            request_id TEXT NOT NULL,
            status INTEGER,
            error TEXT,
            input_tokens INTEGER,
            output_tokens INTEGER,
            duration {sql.real}
        )
        """,
        "CREATE INDEX usage_key ON usage (key_name, created_at)",
        "CREATE INDEX usage_created_at ON usage (created_at)",
    ]


def m004_usage_delegation(sql: Dialect) -> list[str]:
    """A delegated turn's row names its delegating profile and request
    (``UsageRecord.delegated_by``, ``caller_request_id``); NULL for a client's own turn."""
    return [
        "ALTER TABLE usage ADD COLUMN delegated_by TEXT",
        "ALTER TABLE usage ADD COLUMN caller_request_id TEXT",
    ]


MIGRATIONS: tuple[Migration, ...] = (m001_responses, m002_session_turns, m003_usage, m004_usage_delegation)
_LEDGER = "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at {real} NOT NULL)"


def migrate(db: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> list[str]:
    """Apply every migration not yet recorded to an SQLite database, in order; returns
    the names applied now.

    ``db`` must be in autocommit mode (``isolation_level=None``): each migration runs in
    its own ``BEGIN IMMEDIATE`` transaction and re-checks ``_migrations`` inside it, so
    two processes opening the same new database cannot both apply one.
    """
    db.execute(_LEDGER.format(real=SQLITE.real))
    applied = []
    for migration in migrations:
        name = migration.__name__
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("SELECT 1 FROM _migrations WHERE name = ?", (name,)).fetchone() is None:
                for statement in migration(SQLITE):
                    db.execute(statement)
                db.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", (name, time.time()))
                applied.append(name)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    return applied


# pg_advisory_xact_lock's key for migrations: any constant the other locks do not use.
MIGRATION_LOCK = 0x6865726D6573  # "hermes"


async def migrate_async(conn: Any, migrations: Sequence[Migration] = MIGRATIONS) -> list[str]:
    """The same for PostgreSQL: ``conn`` a psycopg 3 ``AsyncConnection`` in autocommit
    mode. Each migration runs in its own transaction, which first takes a
    transaction-level advisory lock, so replicas starting together apply each once
    (the second waits, then finds it recorded). PostgreSQL's DDL is transactional: a
    failing migration leaves nothing behind."""
    applied = []
    for migration in migrations:
        name = migration.__name__
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            await conn.execute(_LEDGER.format(real=POSTGRESQL.real))
            found = await conn.execute("SELECT 1 FROM _migrations WHERE name = %s", (name,))
            if await found.fetchone() is None:
                for statement in migration(POSTGRESQL):
                    await conn.execute(statement)
                await conn.execute("INSERT INTO _migrations (name, applied_at) VALUES (%s, %s)", (name, time.time()))
                applied.append(name)
    return applied
