"""Durable state of the MSSanté channel in one small SQLite file.

* `sent`: Message-ID of each mail sent → request control id, recipients, wanted acks; this is
  how a DSN/MDN arriving days later is matched to the creator's request.
* `zam_targets`: request control id → its MSH header and queue row, so that a DSN/MDN
  becomes a ZAM^Z02/Z03 queued back to the creator (latest request wins on a reused MSH-10).
* `inbound`: one row per received mail (key = Message-ID, or a SHA-256 of the raw mail when it
  has none) with its final state, and `inbound_docs` for each document already accepted by the
  RIS. IMAP flags are a convenience; this file is what guarantees "integrated once", even if
  the mailbox state is lost or the engine stops between the RIS ACK and the IMAP STORE.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sent (
    message_id TEXT PRIMARY KEY, control_id TEXT NOT NULL, recipients TEXT NOT NULL,
    want_z02 INTEGER NOT NULL, want_z03 INTEGER NOT NULL, sent_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS zam_targets (
    control_id TEXT PRIMARY KEY, target TEXT NOT NULL, recorded_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS inbound (
    mail_key TEXT PRIMARY KEY, state TEXT NOT NULL, reason TEXT, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS inbound_docs (
    mail_key TEXT NOT NULL, doc_index INTEGER NOT NULL, PRIMARY KEY (mail_key, doc_index));
"""

FINAL_STATES = ("integrated", "rejected", "quarantined", "report")


class MssStore:
    """Tiny synchronous store; every write is its own committed transaction."""

    def __init__(self, path: Path | str):
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database file."""
        self._db.close()

    # -- sent mails
    def record_sent(
        self, message_id: str, control_id: str, recipients: list[str], want_z02: bool, want_z03: bool
    ) -> None:
        """Remember a sent mail so that its DSN/MDN can be matched later."""
        self._db.execute(
            "INSERT OR REPLACE INTO sent VALUES (?,?,?,?,?,?)",
            (message_id, control_id, json.dumps(recipients), int(want_z02), int(want_z03), time.time()),
        )

    def sent(self, message_id: str) -> dict | None:
        """The sent-mail record for `message_id`, or None."""
        row = self._db.execute(
            "SELECT control_id, recipients, want_z02, want_z03 FROM sent WHERE message_id=?",
            (message_id,),
        ).fetchone()
        if row is None:
            return None
        return {
            "control_id": row[0],
            "recipients": json.loads(row[1]),
            "want_z02": bool(row[2]),
            "want_z03": bool(row[3]),
        }

    def record_zam_target(self, control_id: str, target: dict) -> None:
        """What a later ZAM for request `control_id` needs (its MSH, the queue row to attach to)."""
        self._db.execute(
            "INSERT OR REPLACE INTO zam_targets VALUES (?,?,?)", (control_id, json.dumps(target), time.time())
        )

    def zam_target(self, control_id: str) -> dict | None:
        """The target recorded for request `control_id`, or None."""
        row = self._db.execute("SELECT target FROM zam_targets WHERE control_id=?", (control_id,)).fetchone()
        return json.loads(row[0]) if row else None

    # -- received mails
    def inbound_state(self, mail_key: str) -> str | None:
        """Final state of a received mail, or None if never finished."""
        row = self._db.execute("SELECT state FROM inbound WHERE mail_key=?", (mail_key,)).fetchone()
        return row[0] if row else None

    def finish_inbound(self, mail_key: str, state: str, reason: str = "") -> None:
        """Record the final state of a received mail (integrated / rejected / quarantined)."""
        assert state in FINAL_STATES
        self._db.execute("INSERT OR REPLACE INTO inbound VALUES (?,?,?,?)", (mail_key, state, reason, time.time()))

    def document_delivered(self, mail_key: str, doc_index: int) -> bool:
        """True if the RIS already accepted document `doc_index` of that mail."""
        row = self._db.execute(
            "SELECT 1 FROM inbound_docs WHERE mail_key=? AND doc_index=?", (mail_key, doc_index)
        ).fetchone()
        return row is not None

    def mark_document_delivered(self, mail_key: str, doc_index: int) -> None:
        """Record that the RIS answered AA for that document."""
        self._db.execute("INSERT OR IGNORE INTO inbound_docs VALUES (?,?)", (mail_key, doc_index))
