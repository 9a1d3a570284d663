"""Read-only access to a journal directory, for operator commands (tail, search, show)."""

from __future__ import annotations

from pathlib import Path

from engine.hl7.scan import scan
from engine.journal.payloads import PayloadStore
from engine.journal.sqlite import connect, events_after, load_message


class JournalReader:
    def __init__(self, journal_dir: Path):
        self.dir = Path(journal_dir)
        self._conn = None
        self._payloads = None

    def exists(self) -> bool:
        return (self.dir / "journal.sqlite").exists()

    def _read(self, sql: str, args=()) -> list:
        if self._conn is None:
            self._conn = connect(self.dir / "journal.sqlite", readonly=True)
        return self._conn.execute(sql, args).fetchall()

    def _store(self) -> PayloadStore:
        if self._payloads is None:
            self._payloads = PayloadStore(self.dir / "payloads")
        return self._payloads

    def last_event_id(self) -> int:
        return self._read("SELECT COALESCE(max(id), 0) FROM events")[0][0]

    def events_after(self, last_id: int, limit: int = 500, channel=None, msg_type=None):
        return events_after(self._read, last_id, limit, channel, msg_type)

    def load_message(self, uid: str):
        return load_message(self._read, self._store(), uid)

    def patient_label(self, uid: str) -> str:
        """First PID-3 identifier and PID-5 name, read from the stored message (operator asked)."""
        message = self.load_message(uid)
        if message is None:
            return "?"
        header = scan(message.raw)
        enc = header.encoding_chars
        first_id = header.patient_ids.split(enc[1])[0].split(enc[0])[0]
        name = " ".join(p for p in header.patient_name.split(enc[1])[0].split(enc[0])[:2] if p)
        return f"{first_id} {name}".strip()
