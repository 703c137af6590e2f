"""The response store's schema: an ordered list of named migration functions.

simonw/llm's ``llm/migrations.py`` is the model: each migration is a function named
``m<NNN>_<what>``, applied once, in list order, and recorded by name in ``_migrations``
in the same transaction as its changes, so a crash leaves it either applied and
recorded or neither. Never edit or reorder a shipped migration; append a new one.
Tested from a blank database (tests/test_store.py).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence

Migration = Callable[[sqlite3.Connection], None]


def m001_responses(db: sqlite3.Connection) -> None:
    """Stored Responses API answers, each bound to the key (``owner``) and profile that
    made it. ``seq``: insertion order, never reused (retention counts on it);
    ``messages``: the chat messages of that turn (input, then answer), which
    ``previous_response_id`` chains replay; ``body``: the response object as served."""
    db.execute(
        """
        CREATE TABLE responses (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            owner TEXT NOT NULL,
            profile TEXT NOT NULL,
            created_at REAL NOT NULL,
            previous_response_id TEXT,
            input_items TEXT NOT NULL,
            messages TEXT NOT NULL,
            body TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX responses_created_at ON responses (created_at)")


def m002_session_turns(db: sqlite3.Connection) -> None:
    """Chat-completions session continuity (``X-Hermes-Session-Id``): one row per
    successful turn, its messages in order, bound to key and profile."""
    db.execute(
        """
        CREATE TABLE session_turns (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            owner TEXT NOT NULL,
            profile TEXT NOT NULL,
            session_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            messages TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX session_turns_session ON session_turns (owner, profile, session_id, seq)")
    db.execute("CREATE INDEX session_turns_created_at ON session_turns (created_at)")


MIGRATIONS: tuple[Migration, ...] = (m001_responses, m002_session_turns)


def migrate(db: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> list[str]:
    """Apply every migration not yet recorded, in order; returns the names applied now.

    ``db`` must be in autocommit mode (``isolation_level=None``): each migration runs in
    its own ``BEGIN IMMEDIATE`` transaction and re-checks ``_migrations`` inside it, so
    two processes opening the same new database cannot both apply one.
    """
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    applied = []
    for migration in migrations:
        name = migration.__name__
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("SELECT 1 FROM _migrations WHERE name = ?", (name,)).fetchone() is None:
                migration(db)
                db.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", (name, time.time()))
                applied.append(name)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    return applied
