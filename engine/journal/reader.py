"""Read-only access to a journal directory, for operator commands (tail, search, show)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Callable

from engine.hl7.scan import scan
from engine.journal.payloads import PayloadStore
from engine.journal.sqlite import connect, events_after, load_message


class _PatientLabels:
    load_message: Callable

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


class _Statistics:
    _read: Callable[..., list]

    def statistics(self, first: str, last: str, site: str | None = None, settings=None):
        """The programme's monthly indicators (engine.journal.stats.statistics): the query API of
        `pfi stats` and of the operator console."""
        from engine.journal.stats import statistics

        return statistics(self._read, first, last, site, settings)


class JournalReader(_PatientLabels, _Statistics):
    def __init__(self, journal_dir: Path):
        self.dir = Path(journal_dir)
        self._conn: sqlite3.Connection | None = None
        self._payloads: PayloadStore | None = None

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


class PgJournalReader(_PatientLabels, _Statistics):
    """Reads the shared PostgreSQL journal. Event ids come from a sequence, and nodes commit in
    any order: an id may become visible after a higher one. So each read looks back LOOKBACK ids
    behind the last one returned and skips the events already returned."""

    LOOKBACK = 2000

    def __init__(self, url: str):
        from engine.journal.postgres import connect

        self._conn = connect(url)
        self._seen: set[int] = set()

    def exists(self) -> bool:
        return True

    def _read(self, sql: str, args=()) -> list:
        return self._conn.execute(sql, args).fetchall()

    def last_event_id(self) -> int:
        return self._read("SELECT COALESCE(max(id), 0) FROM events")[0][0]

    def events_after(self, last_id: int, limit: int = 500, channel=None, msg_type=None):
        floor = max(last_id - self.LOOKBACK, 0) if self._seen else last_id
        fresh = [
            e
            for e in events_after(self._read, floor, limit + len(self._seen), channel, msg_type)
            if e.id > last_id or (e.id > floor and e.id not in self._seen)
        ]
        self._seen.update(e.id for e in fresh)
        newest = max(self._seen, default=0)
        self._seen = {i for i in self._seen if i > newest - self.LOOKBACK}
        return fresh[:limit]

    def load_message(self, uid: str):
        from engine.journal.postgres import load_message as load

        return load(self._read, uid)


def open_reader(journal: str, data_dir: Path):
    """The reader of the configured journal (a PostgreSQL URL, or SQLite in `data_dir`/journal)."""
    from engine.journal.postgres import is_postgres_url

    if is_postgres_url(journal):
        return PgJournalReader(journal)
    return JournalReader(data_dir / "journal")
