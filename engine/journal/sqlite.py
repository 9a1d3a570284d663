"""The embedded journal: an fsync'ed segment log for inbound messages, indexed in SQLite (WAL).

All writes go through one writer thread that commits in groups: whatever arrived while the
previous commit was being synced is written in the next one, so throughput grows with
concurrency while every caller is answered only after its own data is on disk. Inbound records
of one reactor turn are queued together, a batch's records go to the log in one writev and to
the index in one multi-row INSERT per table, and the writer waits up to BATCH_WAIT for the
callers it has just answered (closed-loop senders) so that they share the next fdatasync.
See docs/journal.md.

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
from twisted.python import threadable

from engine.errors import JournalError
from engine.journal import schema
from engine.journal.base import DUPLICATE, InboundRecord, JournalEvent, StoredMessage
from engine.journal.payloads import PayloadStore

log = structlog.get_logger(__name__)

MAX_BATCH = 1024
# How long the writer waits for the callers it just answered before committing a smaller batch.
BATCH_WAIT = 0.0002
ROWS_PER_INSERT = 256  # 24 parameters a row, far below SQLite's limit of bound parameters
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
        self._turn: list = []  # inbound records of the current reactor turn

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
        self._flush_turn()
        self._queue.put(None)
        thread, self._thread = self._thread, None
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), thread.join)

    def close_now(self) -> None:
        """Synchronous stop, for command-line tools and tests that own no reactor."""
        if self._thread is not None:
            self._flush_turn()
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    # -- writes ----------------------------------------------------------------------------
    def submit(self, operation: Callable[[sqlite3.Connection, PayloadStore], object],
               logged: bool = False) -> defer.Deferred:
        """Run `operation` in the writer thread, inside the next group commit; fires once durable.
        `logged` operations are made durable by the segment log and need no SQLite fsync."""
        d = defer.Deferred()
        self._flush_turn()  # keep the order of the calls
        self._queue.put((operation, d, logged))
        return d

    def append_inbound(self, record: InboundRecord) -> defer.Deferred:
        # The record itself is queued (not a closure): the writer stores runs of inbound records
        # with one duplicate query and one executemany per table instead of per-message statements.
        d = defer.Deferred()
        item = (record, d, True)
        if self.reactor.running and threadable.isInIOThread():
            # Records of one reactor turn reach the writer together: it wakes once for them.
            if not self._turn:
                self.reactor.callLater(0, self._flush_turn)
            self._turn.append(item)
        else:
            self._queue.put(item)
        return d

    def _flush_turn(self) -> None:
        if self._turn:
            turn, self._turn = self._turn, []
            self._queue.put(turn)

    def record_event(self, message_uid: str, state: str, channel: str = "", detail: str = "") -> defer.Deferred:
        row = (message_uid, time.time(), state, channel, detail, self.node)
        return self.submit(lambda conn, store: conn.execute(_INSERT_EVENT, row) and None)

    def _index_rows(self, meta: dict, size: int, segment: int, offset: int, crc: int, ack: bytes,
                    detail_prefix: str = "") -> tuple[tuple, tuple]:
        """The messages row and the events row of one logged record."""
        row = tuple(meta.get(k, "") for k in _META_FIELDS)
        message = row + (size, segment, offset, crc,
                         meta.get("dup_key") if meta["state"] != DUPLICATE else None, meta.get("duplicate_of"),
                         meta.get("ack_code", ""), ack, meta.get("reason", ""), self.node)
        detail = f"duplicate of {meta['duplicate_of']}" if meta.get("duplicate_of") else meta.get("reason", "")
        event = (meta["uid"], meta["received_at"], meta["state"], meta["channel"], detail_prefix + detail,
                 self.node)
        return message, event

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
            message, event = self._index_rows(meta, len(raw), segment, offset, crc,
                                              meta.get("ack", "").encode("latin-1"),
                                              "recovered from the segment log; ")
            conn.execute(_INSERT_MESSAGE, message)
            conn.execute(_INSERT_EVENT, event)
            recovered += 1
        conn.execute("COMMIT")
        return recovered

    def _mark_duplicates(self, conn, records: list[InboundRecord]) -> None:
        """Mark the records whose dup_key is already journaled within its window: one query for
        the whole run of records, plus the duplicates inside the run itself."""
        keyed = [r for r in records if r.dup_key and r.dup_window > 0]
        if not keyed:
            return
        keys = list({r.dup_key for r in keyed})
        earlier: dict[str, list] = {}
        for i in range(0, len(keys), 500):  # stay under SQLite's bound-parameter limit
            chunk = keys[i:i + 500]
            rows = conn.execute(
                f"SELECT dup_key, received_at, uid, ack_code, ack FROM messages "
                f"WHERE dup_key IN ({','.join('?' * len(chunk))}) ORDER BY id", chunk).fetchall()
            for key, received_at, uid, ack_code, ack in rows:
                earlier.setdefault(key, []).append((received_at, uid, ack_code, ack))
        for r in keyed:
            oldest = r.received_at - r.dup_window
            original = next((o for o in earlier.get(r.dup_key, ()) if o[0] >= oldest), None)
            if original is not None:
                _, r.duplicate_of, r.ack_code, r.ack = original
                r.state = DUPLICATE
            else:  # later records of this run with the same key are its duplicates
                earlier.setdefault(r.dup_key, []).append((r.received_at, r.uid, r.ack_code, r.ack))

    def _log_inbound_run(self, conn, store: PayloadStore, records: list[InboundRecord]) -> tuple[list, list]:
        """Mark duplicates and append a run of inbound records to the segment log (not synced);
        returns their messages rows and events rows."""
        self._mark_duplicates(conn, records)
        metas = [_meta(r) for r in records]
        positions = store.append_many([(meta, r.raw) for meta, r in zip(metas, records)])
        messages, events = [], []
        for r, meta, (segment, offset, crc) in zip(records, metas, positions):
            message, event = self._index_rows(meta, len(r.raw), segment, offset, crc, r.ack)
            messages.append(message)
            events.append(event)
        return messages, events

    def _index_inbound_run(self, conn, store, records: list[InboundRecord], messages: list, events: list) -> list:
        """Insert the index rows of a logged run; returns one result per record.

        One multi-row INSERT per table: every SQLite call releases and takes back the GIL, and
        taking it back means waiting for the busy reactor thread, so few calls beat many."""
        conn.execute("SAVEPOINT run")
        try:
            for start in range(0, len(messages), ROWS_PER_INSERT):
                _insert_many(conn, _INSERT_MESSAGE, messages[start:start + ROWS_PER_INSERT])
                _insert_many(conn, _INSERT_EVENT, events[start:start + ROWS_PER_INSERT])
        except (sqlite3.IntegrityError, ValueError):
            # Rare (a uid collision): redo row by row so that only the bad record fails.
            conn.execute("ROLLBACK TO run")
            conn.execute("RELEASE run")
            return [self._run_one(conn, store, _insert_rows(m, e)) or r
                    for r, m, e in zip(records, messages, events)]
        conn.execute("RELEASE run")
        return records

    def _store_inbound_run(self, conn, store: PayloadStore, records: list[InboundRecord]) -> list:
        messages, events = self._log_inbound_run(conn, store, records)
        return self._index_inbound_run(conn, store, records, messages, events)

    def _next_batch(self, expected: int) -> list | None:
        """Block for the first item, then take whatever is queued. When the previous batch
        answered several callers, wait a little for them to come back, so that closed-loop
        senders share one fdatasync instead of splitting into small batches."""
        item = self._queue.get()
        if item is None:
            return None
        batch = item if isinstance(item, list) else [item]
        deadline = time.perf_counter() + BATCH_WAIT if expected > 1 else 0.0
        while len(batch) < MAX_BATCH:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.perf_counter()
                if len(batch) >= expected or remaining <= 0:
                    break
                try:
                    nxt = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if nxt is None:
                self._queue.put(None)
                break
            if isinstance(nxt, list):
                batch += nxt
            else:
                batch.append(nxt)
        return batch

    def _run(self) -> None:
        expected = 1
        while True:
            batch = self._next_batch(expected)
            if batch is None:
                break
            self._commit(batch)
            expected = len(batch)
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
        position = store.position()
        try:
            self._set_sync_mode(conn, batch)
            conn.execute("BEGIN IMMEDIATE")
            results = self._run_batch(conn, store, batch)
            conn.execute("COMMIT")
        except Exception as exc:  # disk full, read-only, I/O error: every caller must hear it
            self._abort(conn, store, position)
            log.error("journal.commit_failed", error=str(exc), batch=len(batch))
            failure = JournalError(f"journal write failed: {exc}")
            results = [failure] * len(batch)
        self.reactor.callFromThread(_resolve, [d for _, d, _ in batch], results)

    def _run_batch(self, conn, store: PayloadStore, batch: list) -> list:
        """Run the batch in order (consecutive inbound records together), then sync the log."""
        results: list = []
        run: list[InboundRecord] = []
        for operation, _, _ in batch:
            if isinstance(operation, InboundRecord):
                run.append(operation)
                continue
            if run:  # keep the order of the batch: earlier records are indexed first
                results += self._store_inbound_run(conn, store, run)
                run = []
            results.append(self._run_one(conn, store, operation))
        if run:
            results += self._store_inbound_run(conn, store, run)
        store.sync()
        return results

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


def _insert_many(conn, insert: str, rows: list[tuple]) -> None:
    """`insert` (INSERT ... VALUES (?,...)) for all `rows` in one statement."""
    head, values = insert.split("VALUES")
    conn.execute(head + "VALUES" + ",".join([values.strip()] * len(rows)),
                 [value for row in rows for value in row])


def _insert_rows(message: tuple, event: tuple) -> Callable:
    def insert(conn, store) -> None:
        conn.execute(_INSERT_MESSAGE, message)
        conn.execute(_INSERT_EVENT, event)
    return insert


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
