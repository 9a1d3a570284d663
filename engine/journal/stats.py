"""Programme statistics in the journal: the counters, kept in the transaction of the events that
change them, and the queries that read them (SQLite and PostgreSQL; docs/statistics.md).

Tables (migration 5 of both journals):

* `stats_messages`: the facts of each counted message (engine/stats/facts.py), journaled with its
  routing result; purged with the message.
* `stats_counters`: one value per (Paris month, site, document type, measure). Increments are
  upserts (`ON CONFLICT ... DO UPDATE SET value = value + excluded.value`), so nodes of a shared
  PostgreSQL journal count into the same rows; keys are written in sorted order, so two
  transactions never wait for each other's counters in opposite orders. Never purged.
* `stats_identities`: the identities already counted in each (month, site, document type), with
  what was last known of them, so that an identity counts once per cell; pseudonymous keys.
* `stats_channels`: the type of each destination channel (dmp, mssante…), registered by the
  engine at start: the counting needs it and has no configuration of its own.
* `stats_meta`: `purged_through`, the latest event time retention removed. Months up to that
  one keep their counters in `pfi stats rebuild` (their events are gone).

Every function takes a connection with `?` placeholders (sqlite3, or engine.journal.postgres's
PgConnection), or a `read(sql, args) -> rows` function for the queries.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

from engine.journal.dialect import SQLITE, Dialect
from engine.stats.facts import REPORT, MessageFacts
from engine.stats.months import month_of, month_start, next_month
from engine.stats.outcomes import OUTCOME_STATES, event_measures, identity_change, message_measures

_FACT_COLUMNS = (
    "uid",
    "kind",
    "month",
    "site",
    "doc_type",
    "identity",
    "patient_key",
    "consultation",
    "feeding",
    "flags",
)
_ROWS = 100  # rows per multi-row statement: 10 parameters at most each
PURGED_THROUGH = "purged_through"


def _marks(count: int, width: int) -> str:
    return ",".join(["(" + ",".join("?" * width) + ")"] * count)


def _in(values) -> str:
    return ",".join("?" * len(values))


def _chunks(values: list, size: int = _ROWS):
    for start in range(0, len(values), size):
        yield values[start : start + size]


# -- counting (inside the writer's transaction) -------------------------------------------------


def count_event_outcomes(conn, rows: list) -> None:
    """The events observer (engine/journal/events.py): outcome events of counted messages add to
    the counters. Intake's `received` rows and every non-final state are skipped at once."""
    relevant = [row for row in rows if row[2] in OUTCOME_STATES and row[0]]
    if not relevant:
        return
    facts = _facts_by_uid(conn, {row[0] for row in relevant})
    if not facts:
        return
    kinds = _channel_kinds(conn, {row[3] for row in relevant if row[0] in facts})
    deltas: Counter = Counter()
    for uid, at, state, channel, detail, _ in relevant:
        fact = facts.get(uid)
        if fact is not None:
            for measure in event_measures(state, detail or "", kinds.get(channel, ""), fact):
                deltas[(month_of(at), fact.site, fact.doc_type, measure)] += 1
    add_counters(conn, deltas)


def record_messages(conn, facts: list[MessageFacts]) -> int:
    """Journal the facts of routed messages; a message seen for the first time counts in its
    month of receipt (replays and plans written twice count nothing). Returns how many were new."""
    new_uids: set[str] = set()
    for chunk in _chunks([f for f in facts if f is not None]):
        new_uids.update(
            row[0]
            for row in conn.execute(
                f"INSERT INTO stats_messages ({', '.join(_FACT_COLUMNS)}) VALUES {_marks(len(chunk), len(_FACT_COLUMNS))}"
                " ON CONFLICT (uid) DO NOTHING RETURNING uid",
                [getattr(f, column) for f in chunk for column in _FACT_COLUMNS],
            ).fetchall()
        )
    new = [f for f in facts if f is not None and f.uid in new_uids]
    if not new:
        return 0
    deltas: Counter = Counter()
    for fact in new:
        for measure in message_measures(fact):
            deltas[(fact.month, fact.site, fact.doc_type, measure)] += 1
    _count_identities(conn, new, deltas)
    add_counters(conn, deltas)
    return len(new)


def _count_identities(conn, facts: list[MessageFacts], deltas: Counter) -> None:
    """Each identity once per (month, site, document type), with its last status and consent."""
    facts = [f for f in facts if f.kind == REPORT and f.patient_key]
    if not facts:
        return
    keys = sorted({f.patient_key for f in facts})
    known: dict[tuple, tuple] = {}
    for chunk in _chunks(keys, 500):
        for month, site, doc_type, key, identity, consultation, feeding in conn.execute(
            "SELECT month, site, doc_type, patient_key, identity, consultation, feeding FROM stats_identities"
            f" WHERE patient_key IN ({_in(chunk)})",
            chunk,
        ).fetchall():
            known[(month, site, doc_type, key)] = (identity, consultation, feeding)
    changed: dict[tuple, tuple] = {}
    for fact in facts:
        cell = (fact.month, fact.site, fact.doc_type, fact.patient_key)
        now = (fact.identity, fact.consultation, fact.feeding)
        before = known.get(cell)
        if before == now:
            continue
        for measure, delta in identity_change(before, now).items():
            deltas[(fact.month, fact.site, fact.doc_type, measure)] += delta
        known[cell] = changed[cell] = now
    _upsert_identities(conn, changed)


def _upsert_identities(conn, cells: dict[tuple, tuple]) -> None:
    rows = sorted(cell + state for cell, state in cells.items())
    for chunk in _chunks(rows):
        conn.execute(
            "INSERT INTO stats_identities (month, site, doc_type, patient_key, identity, consultation, feeding)"
            f" VALUES {_marks(len(chunk), 7)} ON CONFLICT (month, site, doc_type, patient_key) DO UPDATE SET"
            " identity = excluded.identity, consultation = excluded.consultation, feeding = excluded.feeding",
            [value for row in chunk for value in row],
        )


def add_counters(conn, deltas: dict) -> None:
    """Add `deltas` {(month, site, doc_type, measure): n} to the counters, in key order."""
    rows = sorted((key + (n,) for key, n in deltas.items() if n))
    for chunk in _chunks(rows):
        conn.execute(
            f"INSERT INTO stats_counters (month, site, doc_type, measure, value) VALUES {_marks(len(chunk), 5)}"
            " ON CONFLICT (month, site, doc_type, measure) DO UPDATE SET value = stats_counters.value + excluded.value",
            [value for row in chunk for value in row],
        )


def _facts_by_uid(conn, uids: set[str]) -> dict[str, MessageFacts]:
    found = {}
    for chunk in _chunks(sorted(uids), 500):
        for row in conn.execute(
            f"SELECT {', '.join(_FACT_COLUMNS)} FROM stats_messages WHERE uid IN ({_in(chunk)})", chunk
        ).fetchall():
            found[row[0]] = MessageFacts(*row)
    return found


# Channel types change only with the configuration: read them again at most every KINDS_TTL seconds
# (or at once for a channel not seen yet), not in every transaction that counts an outcome.
KINDS_TTL = 10.0
_kinds_cache: dict = {"at": float("-inf"), "kinds": {}}


def _channel_kinds(conn, names: set[str]) -> dict[str, str]:
    names = {n for n in names if n}
    cache = _kinds_cache
    if names - cache["kinds"].keys() or time.monotonic() - cache["at"] > KINDS_TTL:
        cache["kinds"] = dict(conn.execute("SELECT name, kind FROM stats_channels").fetchall())
        cache["at"] = time.monotonic()
    return cache["kinds"]


def register_channels(conn, kinds: dict[str, str]) -> None:
    """Record the type of each channel (the engine does it at start, from its configuration)."""
    _kinds_cache["at"] = float("-inf")
    rows = sorted(kinds.items())
    for chunk in _chunks(rows):
        conn.execute(
            f"INSERT INTO stats_channels (name, kind) VALUES {_marks(len(chunk), 2)}"
            " ON CONFLICT (name) DO UPDATE SET kind = excluded.kind",
            [v for row in chunk for v in row],
        )


# -- retention -------------------------------------------------------------------------------


def forget_messages(conn, uids: list[str]) -> None:
    """Retention is about to delete these messages and their events: their facts go with them,
    the counters stay, and the latest event time removed is remembered (`pfi stats rebuild` keeps
    the months up to it as they are). Identity keys of months before it are dropped too."""
    if not uids:
        return
    latest = None
    for chunk in _chunks(list(uids), 500):
        row = conn.execute(f"SELECT max(at) FROM events WHERE message_uid IN ({_in(chunk)})", chunk).fetchone()
        if row and row[0] is not None:
            latest = max(latest or row[0], row[0])
        conn.execute(f"DELETE FROM stats_messages WHERE uid IN ({_in(chunk)})", chunk)
    if latest is None:
        return
    previous = purged_through(lambda sql, args=(): conn.execute(sql, args).fetchall())
    if previous is None or latest > previous:
        conn.execute(
            "INSERT INTO stats_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (PURGED_THROUGH, repr(latest)),
        )
    conn.execute("DELETE FROM stats_identities WHERE month < ?", (month_of(latest),))


def purged_through(read) -> float | None:
    rows = read("SELECT value FROM stats_meta WHERE key = ?", (PURGED_THROUGH,))
    return float(rows[0][0]) if rows else None


# -- rebuild -----------------------------------------------------------------------------------


@dataclass
class Rebuilt:
    first_month: str | None  # the first month recomputed (None: every month)
    kept_through: str | None  # the last month kept as it was (retention removed its events)
    messages: int
    events: int
    counters: int


def rebuild(conn, dialect: Dialect = SQLITE) -> Rebuilt:
    """Recompute the counters from the journal (facts and events) with the same rules as the
    incremental counting, in one transaction. Months whose events retention removed (up to
    `purged_through`) are kept as they are."""
    conn.execute("BEGIN IMMEDIATE")  # PgConnection runs it as BEGIN
    try:
        if dialect.shared:  # nodes counting meanwhile wait for the rebuild, then add to its result
            conn.execute("LOCK TABLE stats_counters, stats_identities IN EXCLUSIVE MODE")
        result = _rebuild(conn, dialect)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return result


def _rebuild(conn, dialect: Dialect) -> Rebuilt:
    horizon = purged_through(lambda sql, args=(): conn.execute(sql, args).fetchall())
    kept = month_of(horizon) if horizon is not None else None
    first = next_month(kept) if kept else None
    where, args = ("WHERE month >= ?", [first]) if first else ("", [])
    conn.execute(f"DELETE FROM stats_counters {where}", args)
    conn.execute(f"DELETE FROM stats_identities {where}", args)
    deltas: Counter = Counter()
    messages = _rebuild_messages(conn, dialect, where, args, deltas)
    events = _rebuild_events(conn, dialect, month_start(first) if first else None, deltas)
    add_counters(conn, deltas)
    return Rebuilt(first, kept, messages, events, sum(1 for n in deltas.values() if n))


def _rebuild_messages(conn, dialect: Dialect, where: str, args: list, deltas: Counter) -> int:
    """Facts month by month (identity cells never span two months: one month's keys in memory)."""
    count, month = 0, None
    identities: dict = {}
    for row in _stream(
        conn, dialect, f"SELECT {', '.join(_FACT_COLUMNS)} FROM stats_messages {where} ORDER BY month, id", args
    ):
        fact = MessageFacts(*row)
        if fact.month != month:
            _upsert_identities(conn, identities)
            month, identities = fact.month, {}
        for measure in message_measures(fact):
            deltas[(fact.month, fact.site, fact.doc_type, measure)] += 1
        if fact.kind == REPORT and fact.patient_key:
            cell = (fact.month, fact.site, fact.doc_type, fact.patient_key)
            now = (fact.identity, fact.consultation, fact.feeding)
            for measure, delta in identity_change(identities.get(cell), now).items():
                deltas[(fact.month, fact.site, fact.doc_type, measure)] += delta
            identities[cell] = now
        count += 1
    _upsert_identities(conn, identities)
    return count


def _rebuild_events(conn, dialect: Dialect, since: float | None, deltas: Counter) -> int:
    kinds = dict(conn.execute("SELECT name, kind FROM stats_channels").fetchall())
    states = sorted(OUTCOME_STATES)
    sql = (
        f"SELECT e.at, e.state, e.channel, e.detail, {', '.join('f.' + c for c in _FACT_COLUMNS)} FROM events e"
        f" JOIN stats_messages f ON f.uid = e.message_uid WHERE e.state IN ({_in(states)})"
    )
    args: list = list(states)
    if since is not None:
        sql, args = sql + " AND e.at >= ?", args + [since]
    count = 0
    for at, state, channel, detail, *fact_row in _stream(conn, dialect, sql + " ORDER BY e.id", args):
        fact = MessageFacts(*fact_row)
        for measure in event_measures(state, detail or "", kinds.get(channel, ""), fact):
            deltas[(month_of(at), fact.site, fact.doc_type, measure)] += 1
        count += 1
    return count


def _stream(conn, dialect: Dialect, sql: str, args: list):
    """Rows of a large query without holding them all: SQLite steps its cursor; PostgreSQL needs a
    server-side cursor (a client cursor would fetch every row first)."""
    if dialect.shared:
        from engine.journal.postgres import _pg_sql

        cursor = conn.raw.cursor(name="stats_rebuild")
        cursor.execute(_pg_sql(sql), args)
    else:
        cursor = conn.execute(sql, args)
    try:
        while batch := cursor.fetchmany(5000):
            yield from batch
    finally:
        cursor.close()


# -- queries -----------------------------------------------------------------------------------


def counters(read, first: str, last: str) -> list[tuple]:
    """(month, site, doc_type, measure, value) of the months `first` to `last` (YYYY-MM)."""
    return [
        tuple(row)
        for row in read(
            "SELECT month, site, doc_type, measure, value FROM stats_counters WHERE month >= ? AND month <= ?"
            " ORDER BY month, site, doc_type, measure",
            (first, last),
        )
    ]


def statistics(read, first: str, last: str, site: str | None = None, settings=None):
    """The monthly indicators (engine.stats.report.StatsTable) of months `first`..`last`, for one
    site or all: what `pfi stats` prints and the operator console shows. `settings`: the
    integrator's StatsSettings (column names and order, site aliases, RIS user counts)."""
    from engine.stats.report import StatsSettings, build_table

    return build_table(counters(read, first, last), first, last, site, settings or StatsSettings())
