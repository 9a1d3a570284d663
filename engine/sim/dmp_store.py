"""The DMP simulator's registry + repository: one SQLite file (or memory) per simulator."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    entry_uuid TEXT PRIMARY KEY,
    lid TEXT NOT NULL,
    version INTEGER NOT NULL,
    unique_id TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    status TEXT NOT NULL,
    metadata BLOB NOT NULL,
    document BLOB,
    submitted_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_unique ON entries(unique_id);
CREATE INDEX IF NOT EXISTS entries_patient ON entries(patient_id);
"""


@dataclass
class StoredEntry:
    """One DocumentEntry version as registered."""

    entry_uuid: str
    lid: str
    version: int
    unique_id: str
    patient_id: str
    status: str
    metadata: bytes
    document: bytes | None

    @property
    def confidentiality_codes(self) -> list[str]:
        """The registered DocumentEntry's confidentialityCode values (N, INVISIBLE_PATIENT...)."""
        from lxml import etree

        from engine.dmp import ebrim

        entry = etree.fromstring(self.metadata)
        return [
            c.get("nodeRepresentation") or "" for c in ebrim.classifications(entry, ebrim.DE["confidentialityCode"])
        ]

    @property
    def invisible_to_patient(self) -> bool:
        """Registered with the DMP code INVISIBLE_PATIENT: the patient does not see it in the DMP."""
        return "INVISIBLE_PATIENT" in self.confidentiality_codes


class DocumentStore:
    """Registry rows plus document bytes; `path=None` keeps everything in memory."""

    def __init__(self, path: Path | None = None):
        self._db = sqlite3.connect(str(path) if path else ":memory:")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def add(self, entry: StoredEntry, when: float) -> None:
        """Register one entry version."""
        self._db.execute(
            "INSERT INTO entries VALUES (?,?,?,?,?,?,?,?,?)",
            (
                entry.entry_uuid,
                entry.lid,
                entry.version,
                entry.unique_id,
                entry.patient_id,
                entry.status,
                entry.metadata,
                entry.document,
                when,
            ),
        )

    def set_status(self, entry_uuid: str, status: str) -> None:
        """Change availabilityStatus."""
        self._db.execute("UPDATE entries SET status=? WHERE entry_uuid=?", (status, entry_uuid))

    def commit(self) -> None:
        """Make the transaction durable (one per accepted submission)."""
        self._db.commit()

    def rollback(self) -> None:
        """Forget a rejected submission."""
        self._db.rollback()

    def by_uuid(self, entry_uuid: str) -> StoredEntry | None:
        """The entry with this entryUUID."""
        return self._one("SELECT * FROM entries WHERE entry_uuid=?", (entry_uuid,))

    def by_unique_id(self, unique_id: str) -> list[StoredEntry]:
        """Every version registered with this uniqueId."""
        return self._many("SELECT * FROM entries WHERE unique_id=? ORDER BY version", (unique_id,))

    def latest_of(self, lid: str) -> StoredEntry | None:
        """The newest version of a logical document."""
        return self._one("SELECT * FROM entries WHERE lid=? ORDER BY version DESC LIMIT 1", (lid,))

    def for_patient(self, patient_id: str, statuses: list[str]) -> list[StoredEntry]:
        """Entries of a patient in the given statuses."""
        marks = ",".join("?" for _ in statuses)
        return self._many(
            f"SELECT * FROM entries WHERE patient_id=? AND status IN ({marks}) ORDER BY submitted_at",
            (patient_id, *statuses),
        )

    def all(self) -> list[StoredEntry]:
        """Everything (tests, inspection)."""
        return self._many("SELECT * FROM entries ORDER BY submitted_at", ())

    def _one(self, sql: str, args) -> StoredEntry | None:
        rows = self._many(sql, args)
        return rows[0] if rows else None

    def _many(self, sql: str, args) -> list[StoredEntry]:
        return [StoredEntry(*row[:8]) for row in self._db.execute(sql, args)]
