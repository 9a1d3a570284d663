"""Numbered schema migrations of the SQLite journal. The engine refuses a schema it does not know."""

from __future__ import annotations

import sqlite3

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            uid TEXT NOT NULL UNIQUE,
            received_at REAL NOT NULL,
            channel TEXT NOT NULL,
            state TEXT NOT NULL,
            sender TEXT, facility TEXT, receiver TEXT, receiver_facility TEXT,
            control_id TEXT, msg_type TEXT, version TEXT, profile TEXT,
            patient_ids TEXT, charset TEXT,
            size INTEGER NOT NULL, segment INTEGER NOT NULL, offset INTEGER NOT NULL,
            crc INTEGER NOT NULL,
            dup_key TEXT, duplicate_of TEXT,
            ack_code TEXT, ack BLOB, reason TEXT, node TEXT
        );
        CREATE INDEX messages_dup ON messages(dup_key, received_at) WHERE dup_key IS NOT NULL;
        CREATE INDEX messages_received ON messages(received_at);
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            message_uid TEXT NOT NULL,
            at REAL NOT NULL,
            state TEXT NOT NULL,
            channel TEXT,
            detail TEXT,
            node TEXT
        );
        CREATE INDEX events_message ON events(message_uid);
        """,
    ),
    (
        2,
        """
        CREATE INDEX messages_state ON messages(state) WHERE state = 'received';
        CREATE TABLE deliveries (
            id INTEGER PRIMARY KEY,
            message_uid TEXT NOT NULL,
            route TEXT NOT NULL,
            step TEXT NOT NULL,
            destination TEXT NOT NULL,
            fifo_key TEXT NOT NULL DEFAULT '',
            doc_id TEXT NOT NULL DEFAULT '',
            action TEXT NOT NULL DEFAULT '',
            state TEXT NOT NULL,
            payload BLOB,
            created_at REAL NOT NULL,
            not_before REAL NOT NULL,
            next_attempt REAL NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT NOT NULL DEFAULT '',
            updated_at REAL NOT NULL,
            node TEXT,
            lease_until REAL
        );
        CREATE INDEX deliveries_queue ON deliveries(destination, state, id);
        CREATE INDEX deliveries_key ON deliveries(destination, fifo_key, state);
        CREATE INDEX deliveries_doc ON deliveries(doc_id) WHERE doc_id != '';
        CREATE INDEX deliveries_message ON deliveries(message_uid);
        """,
    ),
]


# Programme statistics (engine/journal/stats.py, docs/statistics.md). Numbered 5 on both journals:
# 3 and 4 are the PostgreSQL patient registry, which SQLite keeps in its own file.
MIGRATIONS.append(
    (
        5,
        """
    CREATE TABLE stats_messages (
        id INTEGER PRIMARY KEY,
        uid TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL, month TEXT NOT NULL, site TEXT NOT NULL, doc_type TEXT NOT NULL,
        identity TEXT NOT NULL, patient_key TEXT NOT NULL, consultation TEXT NOT NULL, feeding TEXT NOT NULL,
        flags INTEGER NOT NULL
    );
    CREATE INDEX stats_messages_month ON stats_messages(month, id);
    CREATE TABLE stats_counters (
        month TEXT NOT NULL, site TEXT NOT NULL, doc_type TEXT NOT NULL, measure TEXT NOT NULL,
        value INTEGER NOT NULL,
        PRIMARY KEY (month, site, doc_type, measure)
    ) WITHOUT ROWID;
    CREATE TABLE stats_identities (
        month TEXT NOT NULL, site TEXT NOT NULL, doc_type TEXT NOT NULL, patient_key TEXT NOT NULL,
        identity TEXT NOT NULL, consultation TEXT NOT NULL, feeding TEXT NOT NULL,
        PRIMARY KEY (month, site, doc_type, patient_key)
    ) WITHOUT ROWID;
    CREATE INDEX stats_identities_key ON stats_identities(patient_key);
    CREATE TABLE stats_channels (name TEXT PRIMARY KEY, kind TEXT NOT NULL);
    CREATE TABLE stats_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    )
)

MIGRATIONS.append(
    (
        6,
        """
    -- The operator console (docs/console.md): its local users, and the indexes of the message
    -- browser. The identifier keys it searches (IPP, INS, accession, document id) are kept by the
    -- console's indexer in its own file beside this one (search.sqlite, engine/journal/search.py),
    -- so that its writes never take this file's write lock from the engine.
    CREATE TABLE IF NOT EXISTS console_users (
        name TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        role TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX IF NOT EXISTS messages_control ON messages(control_id);
    CREATE INDEX IF NOT EXISTS messages_channel ON messages(channel, id);
    CREATE INDEX IF NOT EXISTS messages_type ON messages(msg_type, id);
    -- States an operator looks for; 'received' and 'routed' (nearly every row) stay out.
    CREATE INDEX IF NOT EXISTS messages_attention ON messages(state, id)
        WHERE state NOT IN ('received', 'routed');
    CREATE INDEX IF NOT EXISTS deliveries_dead ON deliveries(destination, message_uid) WHERE state = 'dead';
    """,
    )
)

MIGRATIONS.append(
    (
        7,
        """
    -- A delivery whose step's on_success / on_failure steps are due and not yet applied: set in
    -- the transaction that finishes the delivery, cleared in the one that applies the follow-up,
    -- so that a crash in between resumes it at the next start (engine/routing/dispatcher.py).
    ALTER TABLE deliveries ADD COLUMN follow_up TEXT;
    CREATE INDEX deliveries_follow_up ON deliveries(node) WHERE follow_up IS NOT NULL;
    """,
    )
)

MIGRATIONS.append(
    (
        8,
        """
    -- SQLite only (PostgreSQL keeps payloads in a table): the span of `messages` ids that index
    -- each segment of the log, so that retention reads one segment's rows instead of the whole
    -- table (there is no index on messages.segment: one more B-tree per inbound record). Kept by
    -- every insertion of index rows, one statement per batch (sqlite.py `_note_segments`).
    CREATE TABLE segment_ids (
        segment INTEGER PRIMARY KEY,
        first_id INTEGER NOT NULL,
        last_id INTEGER NOT NULL
    );
    INSERT INTO segment_ids SELECT segment, min(id), max(id) FROM messages GROUP BY segment;
    """,
    )
)

LATEST = max(number for number, _ in MIGRATIONS)


class UnknownSchema(Exception):
    pass


def current_version(conn: sqlite3.Connection) -> int:
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return row[0] or 0


def upgrade(conn: sqlite3.Connection) -> int:
    """Apply every missing migration in number order (not only those above the highest applied:
    numbers are shared with PostgreSQL, and SQLite has no 3 and 4 yet); refuse a database newer
    than this code."""
    version = current_version(conn)
    if version > LATEST:
        raise UnknownSchema(
            f"journal schema version {version} is newer than this engine knows ({LATEST}); "
            "upgrade the engine instead of downgrading the journal"
        )
    applied = {row[0] for row in conn.execute("SELECT version FROM schema_version")}
    for number, sql in sorted(MIGRATIONS):
        if number not in applied:
            conn.executescript(f"BEGIN;{sql};INSERT INTO schema_version VALUES ({number});COMMIT;")
    return current_version(conn)
