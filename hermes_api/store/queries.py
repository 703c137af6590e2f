"""The SQL both backends run, and the rows it returns turned into the store's values.

Written with SQLite's ``?`` placeholders; ``Dialect.sql`` gives the text a backend runs
(``%s`` for psycopg). Where the backends must differ (a day from a Unix time), the
``Dialect`` says how. Reads filter on ``created_at >= cutoff`` so that an expired row
is never served before retention deletes it.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson

from . import Message, StoredResponse, UsageGrouping, UsageRecord
from .migrations import Dialect

PUT_RESPONSE = (
    "INSERT INTO responses (id, owner, profile, created_at, previous_response_id, input_items, messages, body)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
GET_RESPONSE = (
    "SELECT id, owner, profile, created_at, previous_response_id, input_items, messages, body"
    " FROM responses WHERE id = ? AND owner = ? AND profile = coalesce(?, profile) AND created_at >= ?"
)
DELETE_RESPONSE = "DELETE FROM responses WHERE id = ? AND owner = ? AND profile = ?"
# Parameters: the last response's id, then (owner, profile, cutoff) twice.
CONVERSATION = """
    WITH RECURSIVE chain (previous, messages, depth) AS (
        SELECT previous_response_id, messages, 0 FROM responses
         WHERE id = ? AND owner = ? AND profile = ? AND created_at >= ?
        UNION ALL
        SELECT r.previous_response_id, r.messages, chain.depth + 1
          FROM responses AS r JOIN chain ON r.id = chain.previous
         WHERE r.owner = ? AND r.profile = ? AND r.created_at >= ?
    )
    SELECT messages FROM chain ORDER BY depth DESC
"""
# The items of this key's and profile's responses, for item references: a scan
# (retention bounds it), as references are rare and an index of every item would cost
# every write; matched in Python, so every backend runs the same query.
ITEM_ROWS = "SELECT input_items, body FROM responses WHERE owner = ? AND profile = ? AND created_at >= ?"
SESSION_MESSAGES = (
    "SELECT messages FROM session_turns WHERE owner = ? AND profile = ? AND session_id = ?"
    " AND created_at >= ? ORDER BY seq"
)
APPEND_SESSION = "INSERT INTO session_turns (owner, profile, session_id, created_at, messages) VALUES (?, ?, ?, ?, ?)"

# The usage table's columns, in the order of ``UsageRecord``'s fields, which are named
# after them: one order to keep, the record's.
USAGE_COLUMNS = ", ".join(UsageRecord._fields)
# The fields every finished turn has a value for: those before ``error`` (twelve).
USAGE_COMMON = UsageRecord._fields.index("error")
_UPSERT = """
    ON CONFLICT (id) DO UPDATE SET status = excluded.status, error = excluded.error,
        input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens, duration = excluded.duration
"""


@functools.cache
def record_usage_rows(n: int, width: int = len(UsageRecord._fields)) -> str:
    """An INSERT of ``n`` usage rows, each the first ``width`` of ``USAGE_COLUMNS`` (the
    others NULL), their parameters one after the other; the same id again (the end of a
    turn ``start_usage`` inserted) completes that row."""
    columns = ", ".join(UsageRecord._fields[:width])
    row = "(" + ", ".join("?" * width) + ")"
    return f"INSERT INTO usage ({columns}) VALUES {', '.join([row] * n)}{_UPSERT}"


# A turn's row (every column).
RECORD_USAGE = record_usage_rows(1)


# Parameters: key name, since, profile (None: every profile).
USAGE_SINCE = (
    "SELECT count(*), coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0), min(created_at)"
    " FROM usage WHERE key_name = ? AND created_at >= ? AND profile = coalesce(?, profile)"
)
_SUMMARY = """
    SELECT {group} AS grp, count(*),
           sum(CASE WHEN error IS NOT NULL OR status >= 400 THEN 1 ELSE 0 END),
           coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0),
           sum(CASE WHEN input_tokens IS NULL AND output_tokens IS NULL THEN 1 ELSE 0 END),
           coalesce(sum(duration), 0)
      FROM usage WHERE created_at >= ? GROUP BY grp ORDER BY grp
"""


def usage_summary(dialect: Dialect, by: UsageGrouping) -> str:
    """``usage_summary``'s query, grouped by key name, profile or UTC day (``YYYY-MM-DD``)."""
    group = {"key": "key_name", "profile": "profile", "day": dialect.day.format(column="created_at")}[by]
    return _SUMMARY.format(group=group)


def usage_params(r: UsageRecord) -> tuple[object, ...]:
    """``RECORD_USAGE``'s parameters, in ``USAGE_COLUMNS`` order, ``stream`` an integer
    (PostgreSQL will not put a boolean in an INTEGER column; for SQLite the record is its
    own parameters)."""
    return (*r[:6], int(r.stream), *r[7:])


def stored_response(row: tuple[Any, ...]) -> StoredResponse:
    """A ``GET_RESPONSE`` row as a ``StoredResponse``."""
    rid, owner, profile, created_at, previous, items, messages, body = row
    return StoredResponse(
        rid, owner, profile, created_at, previous, orjson.loads(items), orjson.loads(messages), orjson.loads(body)
    )


def messages(rows: list[tuple[Any, ...]]) -> list[Message]:
    """The messages of rows of one JSON list each, in row order."""
    return [message for (encoded,) in rows for message in orjson.loads(encoded)]


def items_by_id(rows: list[tuple[Any, ...]], item_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The input and output items of ``ITEM_ROWS`` rows whose id is one of ``item_ids``."""
    wanted, found = set(item_ids), {}
    for input_items, body in rows:
        for item in [*orjson.loads(input_items), *(orjson.loads(body).get("output") or ())]:
            if isinstance(item, dict) and item.get("id") in wanted:
                found[item["id"]] = item
    return found
