"""The one writer of the events table, and its observers.

Every journal event row (a state change of a message, or of a destination) is written by `write`,
on SQLite and on PostgreSQL alike (the connection takes `?` placeholders: engine/journal/postgres.py
converts them). Right after the rows, in the same transaction, `write` hands them to each observer
in `OBSERVERS`: whatever an observer writes commits or rolls back with the events themselves (a
savepoint rolled back takes the observer's writes with it). The programme statistics
(engine/journal/stats.py) are one observer; metrics can be another.

An observer is `observer(conn, rows)`: `rows` are tuples (message_uid, at, state, channel, detail,
node) as written. It runs in the journal's writer thread, inside the group commit: it must be
quick for the rows it does not care about (intake writes one `received` row per message).
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Callable, Iterable

from engine.journal.stats import count_event_outcomes

#: (message_uid, at, state, channel, detail, node)
EventRow = tuple
Observer = Callable[[object, list], None]

COLUMNS = ("message_uid", "at", "state", "channel", "detail", "node")
#: rows per INSERT: 6 parameters each, within SQLite's and PostgreSQL's limits of bound parameters
ROWS_PER_INSERT = 256


#: called with (conn, rows) after every write, in the writer's transaction
OBSERVERS: list[Observer] = [count_event_outcomes]


#: a writing thread's list of the rows written in its current transaction (see `collect_into`)
_collected = threading.local()


def collect_into(rows: list | None) -> None:
    """From now on, in this thread, every row written is also appended to `rows`: the journal's
    writer (and its indexer) hands them to its listeners (metrics) once the transaction has
    committed."""
    _collected.rows = rows


def collected() -> list:
    """This thread's list of rows written in its current transaction (empty when not collecting)."""
    rows = getattr(_collected, "rows", None)
    return rows if rows is not None else []


def write(conn, rows: Iterable[EventRow]) -> None:
    """Insert `rows` into events (multi-row statements), then run the observers on them."""
    rows = rows if isinstance(rows, list) else list(rows)
    if not rows:
        return
    collected = getattr(_collected, "rows", None)
    if collected is not None:
        collected.extend(rows)
    for start in range(0, len(rows), ROWS_PER_INSERT):
        chunk = rows[start : start + ROWS_PER_INSERT]
        conn.execute(_insert_sql(len(chunk)), [value for row in chunk for value in row])
    for observer in OBSERVERS:
        observer(conn, rows)


def write_one(conn, message_uid: str, at: float, state: str, channel: str, detail: str, node: str) -> None:
    write(conn, [(message_uid, at, state, channel, detail, node)])


@lru_cache(maxsize=None)
def _insert_sql(count: int) -> str:
    return f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES " + ",".join(["(?,?,?,?,?,?)"] * count)
