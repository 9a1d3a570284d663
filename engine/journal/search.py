"""The operator console's queries (message browser, message detail, dashboard, key index, audit),
on both journals. `read(sql, args)` returns rows (engine/journal/access.py); `conn` is a write
connection inside a transaction. Portable SQL: `?` placeholders on SQLite and PostgreSQL.

Search speed on a million messages (bench/console.py) comes from:
* identifier keys (IPP, INS, accession number, document id) in `search_keys` (kind, value), filled
  by the console's indexer after the fact: one index look-up gives the few messages of a patient;
* migration 6's indexes: control id, (channel, id), (msg_type, id), the states an operator looks
  for (partial), dead deliveries (partial);
* keyset pagination (`before_id`, newest first) instead of OFFSET and counts;
* a date range turned into an id range through the received_at index (ids follow arrival order;
  RANGE_SLACK seconds of slack, the exact test on received_at kept), so that the newest-first
  walk starts at the range instead of scanning the messages after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

KEY_KINDS = ("ipp", "ins", "accession", "document")
RANGE_SLACK = 60.0  # seconds: how far an id may be out of arrival order (group commits, nodes)
PAGE = 50

_LIST_COLUMNS = (
    "m.id, m.uid, m.received_at, m.channel, m.state, m.msg_type, m.control_id, m.sender,"
    " m.facility, m.ack_code, m.reason, m.patient_ids"
)


@dataclass
class SearchFilters:
    control_id: str = ""
    ipp: str = ""
    ins: str = ""
    accession: str = ""
    document: str = ""
    channel: str = ""
    msg_type: str = ""
    state: str = ""  # a message state, or "dead" (a delivery of the message is dead-lettered)
    since: float | None = None
    until: float | None = None

    def keys(self) -> list[tuple[str, str]]:
        return [(kind, getattr(self, kind).strip()) for kind in KEY_KINDS if getattr(self, kind).strip()]


@dataclass
class MessageRow:
    id: int
    uid: str
    received_at: float
    channel: str
    state: str
    msg_type: str
    control_id: str
    sender: str
    facility: str
    ack_code: str
    reason: str
    patient_ids: str


@dataclass
class MessageDetail:
    uid: str
    channel: str
    received_at: float
    state: str
    sender: str
    facility: str
    receiver: str
    receiver_facility: str
    control_id: str
    msg_type: str
    version: str
    profile: str
    patient_ids: str
    charset: str
    ack_code: str
    ack: bytes
    reason: str
    node: str
    duplicate_of: str
    events: list = field(default_factory=list)
    deliveries: list = field(default_factory=list)


def search_messages(read, filters: SearchFilters, before_id: int | None = None, limit: int = PAGE) -> list[MessageRow]:
    """Messages matching every filter, newest first, `limit` of them older than `before_id`."""
    sql = f"SELECT {_LIST_COLUMNS} FROM messages m WHERE 1=1"
    args: list = []
    for kind, value in filters.keys():
        sql += " AND m.uid IN (SELECT message_uid FROM search_keys WHERE kind=? AND value=?)"
        args += [kind, value]
    # With an identifier key, the key's few messages must drive the query: `|| ''` keeps the
    # planner from walking a column index instead (an IPP + channel search took 300 ms that way).
    plain = " || ''" if filters.keys() else ""
    for column, value in (
        ("control_id", filters.control_id),
        ("channel", filters.channel),
        ("msg_type", filters.msg_type),
    ):
        if value.strip():
            sql += f" AND m.{column}{plain}=?"
            args.append(value.strip())
    if filters.state == "dead":
        sql += " AND m.uid IN (SELECT message_uid FROM deliveries WHERE state='dead')"
    elif filters.state:
        sql += " AND m.state=?"
        args.append(filters.state)
    low, high = _id_range(read, filters.since, filters.until)
    if filters.since is not None:
        sql += " AND m.received_at>=? AND m.id>=?"
        args += [filters.since, low]
    if filters.until is not None:
        sql += " AND m.received_at<? AND m.id<=?"
        args += [filters.until, high]
    if before_id is not None:
        sql += " AND m.id<?"
        args.append(before_id)
    sql += " ORDER BY m.id DESC LIMIT ?"
    args.append(limit)
    return [MessageRow(*_text_row(row)) for row in read(sql, args)]


def _id_range(read, since: float | None, until: float | None) -> tuple[int, int]:
    """Ids bounding the messages received in [since, until), with RANGE_SLACK of margin."""
    low = high = 0
    if since is not None:
        rows = read("SELECT id FROM messages WHERE received_at>=? ORDER BY received_at LIMIT 1", (since - RANGE_SLACK,))
        low = rows[0][0] if rows else 1 << 62
    if until is not None:
        rows = read(
            "SELECT id FROM messages WHERE received_at<? ORDER BY received_at DESC LIMIT 1", (until + RANGE_SLACK,)
        )
        high = rows[0][0] if rows else 0
    return low, high


def _text_row(row) -> tuple:
    return tuple("" if v is None else v for v in row)


def message_detail(read, uid: str) -> MessageDetail | None:
    """One message's indexed fields, its journal events in order and its deliveries."""
    rows = read(
        "SELECT uid, channel, received_at, state, sender, facility, receiver, receiver_facility, control_id,"
        " msg_type, version, profile, patient_ids, charset, ack_code, ack, reason, node, duplicate_of"
        " FROM messages WHERE uid=?",
        (uid,),
    )
    if not rows:
        return None
    values = list(_text_row(rows[0]))
    values[15] = bytes(values[15] or b"")
    detail = MessageDetail(*values)
    detail.events = read(
        "SELECT id, at, state, channel, detail, node FROM events WHERE message_uid=? ORDER BY id", (uid,)
    )
    detail.deliveries = read(
        "SELECT id, destination, state, attempts, last_error, created_at, next_attempt, updated_at, action, doc_id"
        " FROM deliveries WHERE message_uid=? ORDER BY id",
        (uid,),
    )
    return detail


# -- dashboard -------------------------------------------------------------------------------


def channel_activity(read, channel: str, since: float) -> tuple[float | None, int]:
    """(time of the channel's last message, its rejected messages received since `since`)."""
    last = read("SELECT received_at FROM messages WHERE id=(SELECT max(id) FROM messages WHERE channel=?)", (channel,))
    low, _ = _id_range(read, since, None)
    rejected = read(
        "SELECT count(*) FROM messages WHERE state='rejected' AND id>=? AND channel=? AND received_at>=?",
        (low, channel, since),
    )
    return (last[0][0] if last else None), rejected[0][0]


@dataclass
class DestinationState:
    name: str
    pending: int = 0
    sending: int = 0
    held: int = 0
    dead: int = 0
    oldest: float | None = None
    next_attempt: float | None = None
    last_error: str = ""
    last_error_at: float | None = None


def destination_state(read, destination: str) -> DestinationState:
    """Counts per waiting state through the (destination, state) indexes, never over done rows."""
    found = DestinationState(destination)
    for state in ("pending", "sending", "held"):
        count, oldest, next_attempt = read(
            "SELECT count(*), min(created_at), min(next_attempt) FROM deliveries WHERE destination=? AND state=?",
            (destination, state),
        )[0]
        setattr(found, state, count)
        if state == "pending":
            found.oldest, found.next_attempt = oldest, next_attempt
    found.dead = read("SELECT count(*) FROM deliveries WHERE state='dead' AND destination=?", (destination,))[0][0]
    error = read(
        "SELECT last_error, updated_at FROM deliveries WHERE destination=? AND state IN ('pending', 'dead')"
        " AND last_error<>'' ORDER BY updated_at DESC LIMIT 1",
        (destination,),
    )
    if error:
        found.last_error, found.last_error_at = error[0]
    return found


def cluster_nodes(read) -> list[tuple]:
    """(name, host, pid, started_at, heartbeat_at, is_leader) of the nodes of a PostgreSQL journal.
    The dispatch leader holds advisory lock (7313, 0) on its session, named `pfi:<node>`."""
    leader = read(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype='advisory' AND l.classid=7313 AND l.objid=0 AND l.granted"
    )
    leaders = {row[0].removeprefix("pfi:") for row in leader if row[0]}
    return [
        (*row, row[0] in leaders)
        for row in read("SELECT name, host, pid, started_at, heartbeat_at FROM nodes ORDER BY name")
    ]


def dead_letter_uids(read, channel: str | None = None) -> list[str]:
    """Messages with a dead-lettered delivery, oldest first (what `pfi replay --dead` replays)."""
    sql = "SELECT m.uid FROM messages m WHERE m.uid IN (SELECT message_uid FROM deliveries WHERE state='dead')"
    args: list = []
    if channel:
        sql += " AND m.channel=?"
        args.append(channel)
    return [row[0] for row in read(sql + " ORDER BY m.id", args)]


# -- key index (written by the console's indexer, engine/console/indexer.py) -----------------------

LOOKBACK = 2000  # PostgreSQL: ids committed out of order by other nodes are looked for this far back


def sqlite_messages_to_index(read, after_id: int, limit: int) -> list[tuple]:
    """(id, uid, control id, segment, offset) of messages after `after_id` (SQLite ids become
    visible in order: one writer)."""
    return read(
        "SELECT id, uid, COALESCE(control_id, ''), segment, offset FROM messages WHERE id>? ORDER BY id LIMIT ?",
        (after_id, limit),
    )


def pg_messages_to_index(read, after_id: int, limit: int) -> list[tuple]:
    """(id, uid, control id, raw) of messages without keys from LOOKBACK ids before `after_id` on:
    another node may commit an id lower than one already seen."""
    return [
        (i, uid, ctrl, bytes(raw))
        for i, uid, ctrl, raw in read(
            "SELECT m.id, m.uid, COALESCE(m.control_id, ''), p.raw FROM messages m JOIN payloads p ON p.uid = m.uid"
            " WHERE m.id>?"
            " AND NOT EXISTS (SELECT 1 FROM search_keys k WHERE k.message_uid = m.uid) ORDER BY m.id LIMIT ?",
            (max(after_id - LOOKBACK, 0), limit),
        )
    ]


def index_cursor(read) -> int:
    rows = read("SELECT last_id FROM search_cursor WHERE name='keys'")
    return rows[0][0] if rows else 0


def store_keys(conn, keys: list[tuple[str, str, str]], last_id: int) -> None:
    """Add (message uid, kind, value) rows and move the cursor; every indexed message has at least
    one row (its control id, possibly empty), which is how PostgreSQL's look-back knows it."""
    for start in range(0, len(keys), 300):
        chunk = keys[start : start + 300]
        conn.execute(
            "INSERT INTO search_keys (message_uid, kind, value) VALUES " + ",".join(["(?,?,?)"] * len(chunk)),
            [v for row in chunk for v in row],
        )
    if not conn.execute(
        "UPDATE search_cursor SET last_id=? WHERE name='keys' AND last_id<?", (last_id, last_id)
    ).rowcount:
        if not conn.execute("SELECT 1 FROM search_cursor WHERE name='keys'").fetchall():
            conn.execute("INSERT INTO search_cursor (name, last_id) VALUES ('keys', ?)", (last_id,))


def prune_keys(conn, oldest_uid: str) -> int:
    """SQLite key file: drop the keys of messages whose id sorts before every journaled one
    (retention purged them; message ids are ULIDs, which sort by time)."""
    return conn.execute("DELETE FROM search_keys WHERE message_uid<?", (oldest_uid,)).rowcount


def oldest_uid(read) -> str | None:
    """The smallest message id still journaled (through the uid index; not the first row: ids made
    in the same millisecond do not sort in arrival order)."""
    rows = read("SELECT min(uid) FROM messages")
    return rows[0][0] if rows else None


# -- audit -----------------------------------------------------------------------------------


def record_operator_event(conn, uid: str, state: str, detail: str, now: float, node: str = "console") -> None:
    """An operator's look or action on a message, in its journal (visible in `pfi tail` and in
    the message's timeline): who, when, which message."""
    from engine.journal import events

    events.write_one(conn, uid, now, state, "", detail, node)
