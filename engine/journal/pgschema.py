"""Numbered schema migrations of the PostgreSQL journal (`pfi db upgrade` applies them).

Unlike the embedded SQLite journal, several nodes share this schema: a node never upgrades it on
its own and refuses to start on any version other than the one it was built for, saying why.
Payloads live in their own table, stored uncompressed out of line (STORAGE EXTERNAL): a report is
written once, and state updates of `messages` rows do not copy it.
"""

from __future__ import annotations

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE messages (
            id BIGSERIAL PRIMARY KEY,
            uid TEXT NOT NULL UNIQUE,
            received_at DOUBLE PRECISION NOT NULL,
            channel TEXT NOT NULL,
            state TEXT NOT NULL,
            sender TEXT, facility TEXT, receiver TEXT, receiver_facility TEXT,
            control_id TEXT, msg_type TEXT, version TEXT, profile TEXT,
            patient_ids TEXT, charset TEXT,
            size INTEGER NOT NULL,
            dup_key TEXT, duplicate_of TEXT,
            ack_code TEXT, ack BYTEA, reason TEXT, node TEXT
        );
        CREATE INDEX messages_dup ON messages(dup_key, received_at) WHERE dup_key IS NOT NULL;
        CREATE INDEX messages_received ON messages(received_at);
        CREATE INDEX messages_to_route ON messages(id) WHERE state = 'received';
        CREATE TABLE payloads (
            uid TEXT PRIMARY KEY,
            raw BYTEA NOT NULL
        );
        ALTER TABLE payloads ALTER COLUMN raw SET STORAGE EXTERNAL;
        CREATE TABLE events (
            id BIGSERIAL PRIMARY KEY,
            message_uid TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL,
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
        CREATE TABLE deliveries (
            id BIGSERIAL PRIMARY KEY,
            message_uid TEXT NOT NULL,
            route TEXT NOT NULL,
            step TEXT NOT NULL,
            destination TEXT NOT NULL,
            fifo_key TEXT NOT NULL DEFAULT '',
            doc_id TEXT NOT NULL DEFAULT '',
            action TEXT NOT NULL DEFAULT '',
            state TEXT NOT NULL,
            payload BYTEA,
            created_at DOUBLE PRECISION NOT NULL,
            not_before DOUBLE PRECISION NOT NULL,
            next_attempt DOUBLE PRECISION NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT NOT NULL DEFAULT '',
            updated_at DOUBLE PRECISION NOT NULL,
            node TEXT,
            lease_until DOUBLE PRECISION
        );
        -- Open work only: finished deliveries (the vast majority) stay out of the claim indexes.
        CREATE INDEX deliveries_open ON deliveries(destination, id) WHERE state IN ('pending', 'sending');
        CREATE INDEX deliveries_open_key ON deliveries(destination, fifo_key, id)
            WHERE state IN ('pending', 'sending');
        CREATE INDEX deliveries_sending ON deliveries(node) WHERE state = 'sending';
        CREATE INDEX deliveries_doc ON deliveries(doc_id) WHERE doc_id <> '';
        CREATE INDEX deliveries_message ON deliveries(message_uid);
        CREATE TABLE nodes (
            name TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            started_at DOUBLE PRECISION NOT NULL,
            heartbeat_at DOUBLE PRECISION NOT NULL
        );
        """,
    ),
]

MIGRATIONS.append(
    (
        3,
        """
    -- The PAM.fr patient registry (engine/patients/registry.py), shared by the nodes: the DMP gate of
    -- any node must see the consent recorded by the node that routed the ADT.
    CREATE TABLE patients (
        id BIGSERIAL PRIMARY KEY,
        ipp TEXT NOT NULL, ipp_domain TEXT NOT NULL, ipp_authority TEXT NOT NULL, ipp_oid TEXT NOT NULL,
        ins TEXT, ins_json TEXT, identity_status TEXT NOT NULL DEFAULT '',
        identity_attributes TEXT NOT NULL DEFAULT '[]',
        dmp_status TEXT NOT NULL DEFAULT '', dmp_status_date TEXT,
        feeding_json TEXT, consultation_json TEXT,
        merged_into BIGINT REFERENCES patients(id),
        created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
        UNIQUE (ipp, ipp_domain)
    );
    CREATE INDEX patients_ins ON patients (ins);
    CREATE TABLE merges (
        survivor_id BIGINT NOT NULL REFERENCES patients(id), old_id BIGINT NOT NULL REFERENCES patients(id),
        at DOUBLE PRECISION NOT NULL, control_id TEXT NOT NULL
    );
    CREATE TABLE history (
        id BIGSERIAL PRIMARY KEY, patient_id BIGINT NOT NULL REFERENCES patients(id),
        at DOUBLE PRECISION NOT NULL, control_id TEXT NOT NULL, event TEXT NOT NULL, changes TEXT NOT NULL
    );
    CREATE INDEX history_patient ON history (patient_id);
    """,
    )
)

MIGRATIONS.append(
    (
        4,
        """
    -- A held send (`pfi hold`, or a DMP send waiting for its patient's identity) holds its FIFO key
    -- back: the claim's look-up of older open rows of a key, and the release of identity holds,
    -- find held rows through the open-work indexes instead of scanning every finished delivery.
    DROP INDEX deliveries_open;
    DROP INDEX deliveries_open_key;
    CREATE INDEX deliveries_open ON deliveries(destination, id) WHERE state IN ('pending', 'sending', 'held');
    CREATE INDEX deliveries_open_key ON deliveries(destination, fifo_key, id)
        WHERE state IN ('pending', 'sending', 'held');
    -- The INS an A47 withdrew from a downgraded identity: a report still carrying it must wait.
    ALTER TABLE patients ADD COLUMN withdrawn_ins TEXT;
    CREATE INDEX patients_withdrawn_ins ON patients (withdrawn_ins) WHERE withdrawn_ins IS NOT NULL;
    """,
    )
)

MIGRATIONS.append(
    (
        5,
        """
    -- Programme statistics (engine/journal/stats.py, docs/statistics.md): the counters are shared
    -- by the nodes (upserts), never purged; the facts of each counted message go with it.
    CREATE TABLE stats_messages (
        id BIGSERIAL PRIMARY KEY,
        uid TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL, month TEXT NOT NULL, site TEXT NOT NULL, doc_type TEXT NOT NULL,
        identity TEXT NOT NULL, patient_key TEXT NOT NULL, consultation TEXT NOT NULL, feeding TEXT NOT NULL,
        flags INTEGER NOT NULL
    );
    CREATE INDEX stats_messages_month ON stats_messages(month, id);
    CREATE TABLE stats_counters (
        month TEXT NOT NULL, site TEXT NOT NULL, doc_type TEXT NOT NULL, measure TEXT NOT NULL,
        value BIGINT NOT NULL,
        PRIMARY KEY (month, site, doc_type, measure)
    );
    CREATE TABLE stats_identities (
        month TEXT NOT NULL, site TEXT NOT NULL, doc_type TEXT NOT NULL, patient_key TEXT NOT NULL,
        identity TEXT NOT NULL, consultation TEXT NOT NULL, feeding TEXT NOT NULL,
        PRIMARY KEY (month, site, doc_type, patient_key)
    );
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
    -- The operator console (docs/console.md): its local users, shared by the nodes; the identifier
    -- keys of the message browser (IPP, INS, accession number, document id, control id), written
    -- by the console's indexer after the fact (never on the intake path); the browser's indexes.
    CREATE TABLE console_users (
        name TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        role TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE search_keys (
        message_uid TEXT NOT NULL,
        kind TEXT NOT NULL,
        value TEXT NOT NULL
    );
    CREATE INDEX search_keys_value ON search_keys(kind, value);
    CREATE INDEX search_keys_message ON search_keys(message_uid);
    CREATE TABLE search_cursor (
        name TEXT PRIMARY KEY,
        last_id BIGINT NOT NULL
    );
    CREATE INDEX messages_control ON messages(control_id);
    CREATE INDEX messages_channel ON messages(channel, id);
    CREATE INDEX messages_type ON messages(msg_type, id);
    CREATE INDEX messages_attention ON messages(state, id) WHERE state NOT IN ('received', 'routed');
    CREATE INDEX deliveries_dead ON deliveries(destination, message_uid) WHERE state = 'dead';
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

LATEST = MIGRATIONS[-1][0]
# pg_advisory_xact_lock key taken by `upgrade`, so that two nodes upgrading at once take turns.
_UPGRADE_LOCK = 7310


def current_version(conn) -> int:
    """The schema version of the database behind `conn` (a psycopg connection); 0 when empty."""
    exists = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()[0]
    if not exists:
        return 0
    return conn.execute("SELECT COALESCE(max(version), 0) FROM schema_version").fetchone()[0]


def check(conn) -> int:
    """Refuse a schema this engine was not built for, with what to do about it."""
    from engine.journal.schema import UnknownSchema

    version = current_version(conn)
    if version > LATEST:
        raise UnknownSchema(
            f"PostgreSQL journal schema is version {version}, newer than this engine knows "
            f"({LATEST}): upgrade the engine on this node"
        )
    if version < LATEST:
        raise UnknownSchema(
            f"PostgreSQL journal schema is version {version}, this engine needs {LATEST}: "
            "run `pfi db upgrade` once (it is safe while older nodes are stopped)"
        )
    return version


def upgrade(conn, target: int = LATEST) -> list[int]:
    """Apply the missing migrations up to `target` in one transaction (all or none); returns them."""
    from engine.journal.schema import UnknownSchema

    applied = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_UPGRADE_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        version = current_version(conn)
        if version > LATEST:
            raise UnknownSchema(
                f"PostgreSQL journal schema is version {version}, newer than this engine knows ({LATEST})"
            )
        for number, sql in MIGRATIONS:
            if version < number <= target:
                with conn.transaction():
                    conn.execute(sql)
                    conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (number,))
                applied.append(number)
    return applied
