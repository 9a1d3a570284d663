"""Connections of a process that reads a running engine's journal from outside and writes operator
actions into it: the operator console (engine/console/). Two backends, one interface:

* `read(sql, args)` -> rows, from any thread (SQLite: one read-only connection per thread, with the
  console's key file search.sqlite attached; PostgreSQL: a small pool);
* `writing()` -> a connection inside a transaction, for operator actions (the same functions the
  `pfi` commands call: engine/journal/deliveries.py);
* `keys_writing()` -> a connection inside a transaction on the table of search keys (SQLite: the
  separate file search.sqlite, so that the indexer never takes the journal's write lock from the
  engine's writer; PostgreSQL: the search_keys table);
* `raw_of(uid)` -> the stored bytes of a message.

The SQL is portable (`?` placeholders; engine/journal/postgres.py's connection converts them).
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.journal.payloads import PayloadStore
    from engine.journal.postgres import PgConnection

KEYS_FILE = "search.sqlite"
_KEYS_SCHEMA = """
CREATE TABLE IF NOT EXISTS search_keys (message_uid TEXT NOT NULL, kind TEXT NOT NULL, value TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS search_keys_value ON search_keys(kind, value);
CREATE INDEX IF NOT EXISTS search_keys_message ON search_keys(message_uid);
CREATE TABLE IF NOT EXISTS search_cursor (name TEXT PRIMARY KEY, last_id INTEGER NOT NULL);
"""


class JournalUnavailable(Exception):
    """The journal does not exist yet (the engine never ran) or cannot be opened."""


class SqliteAccess:
    dialect = "sqlite"

    def __init__(self, journal_dir: Path):
        self.dir = Path(journal_dir)
        self.db = self.dir / "journal.sqlite"
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None
        self._keys: sqlite3.Connection | None = None
        self._keys_lock = threading.Lock()
        self._payloads: PayloadStore | None = None

    def ready(self) -> bool:
        """The journal exists and has the console's schema (the engine upgrades it when it starts)."""
        from engine.journal import schema

        if not self.db.exists():
            return False
        try:
            return self.read("SELECT COALESCE(max(version), 0) FROM schema_version")[0][0] >= min(6, schema.LATEST)
        except Exception:  # no schema_version table yet: an engine creating the file right now
            return False

    def _reader(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            import sqlite3

            from engine.journal.sqlite import connect

            if not self.db.exists():
                raise JournalUnavailable(f"no journal at {self.db} yet (start the engine once)")
            self.ensure_keys()
            conn = connect(self.db, readonly=True)
            keys = self.dir / KEYS_FILE
            # Unqualified names resolve in main first, then attached files: `search_keys` is found.
            conn.execute("ATTACH DATABASE ? AS search", (f"file:{keys}?mode=ro",))
            conn.row_factory = None
            self._local.conn = conn
            assert isinstance(conn, sqlite3.Connection)
        return conn

    def read(self, sql: str, args=()) -> list:
        return self._reader().execute(sql, args).fetchall()

    @contextmanager
    def writer(self):
        """The write connection, outside any transaction (the callee opens its own)."""
        from engine.journal import schema
        from engine.journal.sqlite import connect

        with self._write_lock:
            if self._writer is None:
                if not self.db.exists():
                    raise JournalUnavailable(f"no journal at {self.db} yet (start the engine once)")
                self._writer = connect(self.db)
                schema.upgrade(self._writer)
            yield self._writer

    @contextmanager
    def writing(self):
        with self.writer() as conn:
            yield from _transaction(conn)

    def ensure_keys(self):
        """The key file, created on first use (it holds nothing the journal cannot give again)."""
        from engine.journal.sqlite import connect

        with self._keys_lock:
            if self._keys is None:
                self.dir.mkdir(parents=True, exist_ok=True)
                conn = connect(self.dir / KEYS_FILE)
                conn.executescript(_KEYS_SCHEMA)
                conn.execute("PRAGMA synchronous=NORMAL")  # rebuilt from the journal if lost
                self._keys = conn
            return self._keys

    @contextmanager
    def keys_writing(self):
        conn = self.ensure_keys()
        with self._keys_lock:
            yield from _transaction(conn)

    def raw_of(self, uid: str) -> bytes | None:
        from engine.journal.payloads import PayloadStore
        from engine.journal.sqlite import load_message

        if self._payloads is None:
            self._payloads = PayloadStore(self.dir / "payloads")
        message = load_message(self.read, self._payloads, uid)
        return None if message is None else message.raw

    def raws_of(self, rows: list[tuple]) -> list[tuple[str, bytes | None]]:
        """(uid, raw) for (uid, segment, offset) rows; None for a record the log cannot give."""
        from engine.journal.payloads import PayloadStore

        if self._payloads is None:
            self._payloads = PayloadStore(self.dir / "payloads")
        found: list[tuple[str, bytes | None]] = []
        for uid, segment, offset in rows:
            try:
                found.append((uid, self._payloads.read(segment, offset)[1]))
            except (OSError, ValueError):
                found.append((uid, None))
        return found

    def close(self) -> None:
        for conn in (self._writer, self._keys, getattr(self._local, "conn", None)):
            if conn is not None:
                conn.close()


class PgAccess:
    dialect = "postgresql"

    def __init__(self, url: str):
        from psycopg_pool import ConnectionPool

        self.url = url
        self._pool = ConnectionPool(url, min_size=1, max_size=4, kwargs={"autocommit": True}, open=True)
        self._write_lock = threading.Lock()
        self._writer: PgConnection | None = None

    def ready(self) -> bool:
        from engine.journal import pgschema

        try:
            with self._pool.connection() as raw:
                return pgschema.current_version(raw) >= 6
        except Exception:
            return False

    def read(self, sql: str, args=()) -> list:
        from engine.journal.postgres import PgConnection

        with self._pool.connection() as raw:
            return PgConnection(raw).execute(sql, args).fetchall()

    @contextmanager
    def writer(self):
        from engine.journal.postgres import connect

        with self._write_lock:
            if self._writer is None or self._writer.raw.closed or self._writer.raw.broken:
                self._writer = connect(self.url)
            yield self._writer

    @contextmanager
    def writing(self):
        with self.writer() as conn:
            yield from _transaction(conn)

    keys_writing = writing

    def raw_of(self, uid: str) -> bytes | None:
        rows = self.read("SELECT raw FROM payloads WHERE uid=?", (uid,))
        return bytes(rows[0][0]) if rows else None

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._pool.close()


def _transaction(conn):
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def open_access(journal: str, data_dir: Path):
    """The access of the configured journal: `sqlite` (data_dir/journal) or a postgresql:// URL."""
    from engine.journal.postgres import is_postgres_url

    if is_postgres_url(journal):
        return PgAccess(journal)
    return SqliteAccess(Path(data_dir) / "journal")
