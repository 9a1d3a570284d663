"""The embedded journal: an fsync'ed segment log for inbound messages, indexed in SQLite (WAL).

All writes go through one writer thread that commits in groups: whatever arrived while the
previous commit was being synced is written in the next one, so throughput grows with
concurrency while every caller is answered only after its own data is on disk.

Durability: a batch of inbound messages is durable when the segment log is fdatasync'ed; the
SQLite index of such a batch commits with synchronous=NORMAL (no second fsync) and is completed
from the log after a crash (`recover`). Batches holding any other state change commit with
synchronous=FULL. Reads use their own connections.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable

import structlog
from twisted.internet import defer, threads

from engine.errors import JournalError
from engine.journal import schema
from engine.journal.base import DUPLICATE, InboundRecord, JournalEvent, StoredMessage
from engine.journal.payloads import PayloadStore

log = structlog.get_logger(__name__)

MAX_BATCH = 1024
DURABILITY = ("segment log fdatasync before ACK (group commit), SQLite WAL index synchronous=NORMAL "
              "rebuilt from the log after a crash; other state changes synchronous=FULL")

_INSERT_MESSAGE = """INSERT INTO messages (uid, received_at, channel, state, sender, facility,
    receiver, receiver_facility, control_id, msg_type, version, profile, patient_ids, charset,
    size, segment, offset, crc, dup_key, duplicate_of, ack_code, ack, reason, node)
    VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"""
_INSERT_EVENT = "INSERT INTO events (message_uid, at, state, channel, detail, node) VALUES (?,?,?,?,?,?)"


def connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA busy_timeout=30000")
    if not readonly:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    return conn


class SQLiteJournal:
    """Journal on local files under `data_dir`: journal.sqlite and payloads/."""

    durability = DURABILITY

    def __init__(self, data_dir: Path, reactor=None, node: str = "local"):
        from twisted.internet import reactor as default_reactor

        self.data_dir = Path(data_dir)
        self.reactor = reactor or default_reactor
        self.node = node
        self.db_path = self.data_dir / "journal.sqlite"
        self.payloads = PayloadStore(self.data_dir / "payloads")
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._sync_mode = "FULL"

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._writer = connect(self.db_path)
        schema.upgrade(self._writer)
        self.payloads.open()
        recovered = self.recover()
        if recovered:
            log.warning("journal.recovered", messages=recovered)
        self._reader = connect(self.db_path)
        self._thread = threading.Thread(target=self._run, name="journal-writer", daemon=True)
        self._thread.start()

    def stop(self) -> defer.Deferred:
        """Finish what is queued, then close; fires when the writer thread has exited."""
        done = defer.Deferred()
        if self._thread is None:
            done.callback(None)
            return done
        self._queue.put(None)
        thread, self._thread = self._thread, None
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), thread.join)

    def close_now(self) -> None:
        """Synchronous stop, for command-line tools and tests that own no reactor."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    # -- writes ----------------------------------------------------------------------------
    def submit(self, operation: Callable[[sqlite3.Connection, PayloadStore], object],
               logged: bool = False) -> defer.Deferred:
        """Run `operation` in the writer thread, inside the next group commit; fires once durable.
        `logged` operations are made durable by the segment log and need no SQLite fsync."""
        d = defer.Deferred()
        self._queue.put((operation, d, logged))
        return d

    def append_inbound(self, record: InboundRecord) -> defer.Deferred:
        return self.submit(lambda conn, store: self._store_inbound(conn, store, record), logged=True)

    def record_event(self, message_uid: str, state: str, channel: str = "", detail: str = "") -> defer.Deferred:
        row = (message_uid, time.time(), state, channel, detail, self.node)
        return self.submit(lambda conn, store: conn.execute(_INSERT_EVENT, row) and None)

    def _store_inbound(self, conn, store: PayloadStore, r: InboundRecord) -> InboundRecord:
        if r.dup_key and r.dup_window > 0:
            self._mark_if_duplicate(conn, r)
        meta = _meta(r)
        segment, offset, crc = store.append(meta, r.raw)
        self._index(conn, meta, len(r.raw), segment, offset, crc, r.ack)
        return r

    def _index(self, conn, meta: dict, size: int, segment: int, offset: int, crc: int, ack: bytes,
               detail_prefix: str = "") -> None:
        row = tuple(meta.get(k, "") for k in _META_FIELDS)
        conn.execute(_INSERT_MESSAGE, row[:14] + (size, segment, offset, crc) + (
            meta.get("dup_key") if meta["state"] != DUPLICATE else None, meta.get("duplicate_of"),
            meta.get("ack_code", ""), ack, meta.get("reason", ""), self.node))
        detail = f"duplicate of {meta['duplicate_of']}" if meta.get("duplicate_of") else meta.get("reason", "")
        conn.execute(_INSERT_EVENT, (meta["uid"], meta["received_at"], meta["state"], meta["channel"],
                                     detail_prefix + detail, self.node))

    def recover(self) -> int:
        """Index the records of the segment log that the SQLite index lost in a crash."""
        conn, store = self._writer, self.payloads
        last = conn.execute("SELECT segment, offset FROM messages ORDER BY id DESC LIMIT 1").fetchone()
        start = (last[0], last[1] + store.record_length(*last)) if last else (min(store.segments(), default=1), 0)
        recovered = 0
        conn.execute("BEGIN IMMEDIATE")
        for segment, offset, meta, raw in store.scan_from(*start):
            if not meta:
                store.truncate(segment, offset)  # torn tail: never synced, so never acknowledged
                break
            if conn.execute("SELECT 1 FROM messages WHERE uid=?", (meta["uid"],)).fetchone():
                continue
            crc = store.read_crc(segment, offset)
            self._index(conn, meta, len(raw), segment, offset, crc, meta.get("ack", "").encode("latin-1"),
                        "recovered from the segment log; ")
            recovered += 1
        conn.execute("COMMIT")
        return recovered

    @staticmethod
    def _mark_if_duplicate(conn, r: InboundRecord) -> None:
        row = conn.execute(
            "SELECT uid, ack_code, ack FROM messages WHERE dup_key=? AND received_at>=? "
            "ORDER BY id LIMIT 1",
            (r.dup_key, r.received_at - r.dup_window),
        ).fetchone()
        if row:
            r.state, r.duplicate_of, r.ack_code, r.ack = DUPLICATE, row[0], row[1], row[2]

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                break
            batch = [item]
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            self._commit(batch)
        self.payloads.close()
        for conn in (self._writer, self._reader):
            if conn is not None:
                conn.close()

    def _set_sync_mode(self, conn, batch: list) -> None:
        mode = "NORMAL" if all(logged for _, _, logged in batch) else "FULL"
        if mode != self._sync_mode:
            conn.execute(f"PRAGMA synchronous={mode}")
            self._sync_mode = mode

    def _commit(self, batch: list) -> None:
        conn, store = self._writer, self.payloads
        results: list = []
        position = store.position()
        try:
            self._set_sync_mode(conn, batch)
            conn.execute("BEGIN IMMEDIATE")
            for operation, _, _ in batch:
                results.append(self._run_one(conn, store, operation))
            store.sync()
            conn.execute("COMMIT")
        except Exception as exc:  # disk full, read-only, I/O error: every caller must hear it
            self._abort(conn, store, position)
            log.error("journal.commit_failed", error=str(exc), batch=len(batch))
            failure = JournalError(f"journal write failed: {exc}")
            results = [failure] * len(batch)
        self.reactor.callFromThread(_resolve, [d for _, d, _ in batch], results)

    @staticmethod
    def _run_one(conn, store, operation):
        conn.execute("SAVEPOINT op")
        try:
            result = operation(conn, store)
        except (sqlite3.IntegrityError, ValueError) as exc:
            # One bad operation must not sink the others committed with it.
            conn.execute("ROLLBACK TO op")
            result = JournalError(str(exc))
        conn.execute("RELEASE op")
        return result

    @staticmethod
    def _abort(conn, store, position) -> None:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        try:
            store.rollback_to(*position)
        except OSError:
            pass

    # -- reads -----------------------------------------------------------------------------
    def _read(self, sql: str, args=()) -> list:
        with self._read_lock:
            return self._reader.execute(sql, args).fetchall()

    def events_after(self, last_id: int, limit: int = 500, channel=None, msg_type=None) -> list[JournalEvent]:
        return events_after(self._read, last_id, limit, channel, msg_type)

    def load_message(self, uid: str) -> StoredMessage | None:
        return load_message(self._read, self.payloads, uid)


_META_FIELDS = ("uid", "received_at", "channel", "state", "sender", "facility", "receiver",
                "receiver_facility", "control_id", "msg_type", "version", "profile", "patient_ids",
                "charset")


def _meta(r: InboundRecord) -> dict:
    """What the segment log keeps beside the raw bytes: enough to rebuild the index row."""
    meta = {k: getattr(r, k) for k in _META_FIELDS}
    meta.update(state=r.state, ack_code=r.ack_code, ack=r.ack.decode("latin-1"), reason=r.reason,
                dup_key=r.dup_key, duplicate_of=r.duplicate_of)
    return meta


def _resolve(deferreds: list, results: list) -> None:
    for d, result in zip(deferreds, results):
        if isinstance(result, Exception):
            d.errback(result)
        else:
            d.callback(result)


_EVENTS_SQL = """SELECT e.id, e.at, e.message_uid, e.state, COALESCE(NULLIF(e.channel, ''), m.channel),
    m.msg_type, m.control_id, e.detail, e.node, m.patient_ids
    FROM events e LEFT JOIN messages m ON m.uid = e.message_uid WHERE e.id > ?"""


def events_after(read, last_id, limit=500, channel=None, msg_type=None) -> list[JournalEvent]:
    sql, args = _EVENTS_SQL, [last_id]
    if channel:
        sql += " AND (e.channel = ? OR m.channel = ?)"
        args += [channel, channel]
    if msg_type:
        sql += " AND m.msg_type = ?"
        args.append(msg_type)
    sql += " ORDER BY e.id LIMIT ?"
    args.append(limit)
    return [JournalEvent(*row) for row in read(sql, args)]


def load_message(read, payloads: PayloadStore, uid: str) -> StoredMessage | None:
    rows = read(
        "SELECT uid, channel, received_at, state, msg_type, control_id, segment, offset,"
        " ack_code, reason FROM messages WHERE uid = ?",
        (uid,),
    )
    if not rows:
        return None
    uid, channel, at, state, mtype, ctrl, seg, off, ack_code, reason = rows[0]
    _, raw = payloads.read(seg, off)
    return StoredMessage(uid, channel, at, state, mtype, ctrl, raw, ack_code or "", reason or "")
