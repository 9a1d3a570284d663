"""The embedded journal: an fsync'ed segment log for inbound messages, indexed in SQLite (WAL).

Writes go through the group-commit writer (engine/journal/groupcommit.py): a batch's records go
to the log in one writev and to the index in one multi-row INSERT per table. See docs/journal.md.

Durability: a batch of inbound messages is durable when the segment log is fdatasync'ed; the
SQLite index of such a batch commits with synchronous=NORMAL (no second fsync) and is completed
from the log after a crash (`recover`). Batches holding any other state change commit with
synchronous=FULL. Reads use their own connections.
"""

from __future__ import annotations

import operator
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable, cast

import structlog

from engine.errors import JournalError
from engine.journal import events, schema, stats
from engine.journal.base import DUPLICATE, RECEIVED, InboundRecord, JournalEvent, StoredMessage
from engine.journal.dialect import SQLITE
from engine.journal.groupcommit import GroupCommitWriter, IndexedOnly, any_to_route, mark_duplicates
from engine.journal.keyfilter import KeyFilter, filter_of
from engine.journal.payloads import META_FIELDS, PayloadStore
from engine.journal.tail import Chunk, TailIndexer, UnindexedTail

log = structlog.get_logger(__name__)

ROWS_PER_INSERT = 256  # 24 parameters a row, far below SQLite's limit of bound parameters
DURABILITY = (
    "segment log fdatasync before ACK (group commit), SQLite WAL index following the log "
    "(synchronous=NORMAL, rebuilt from the log after a crash); other state changes synchronous=FULL"
)
#: The index follows the log (docs/journal.md): the indexer thread (engine/journal/tail.py) indexes
#: acknowledged records together once INDEX_BATCH of them wait or INDEX_DELAY seconds after the
#: oldest came; the writer indexes them itself before any other operation (routing, operator
#: actions, purge), which therefore sees every one of them.
INDEX_BATCH = 512
INDEX_DELAY = 0.02
INDEX_RETRY = 1.0  # after a failed index commit (a full disk): seconds before the next try
#: The indexer waits for a write lock another process holds (the routing process, the console, a
#: `pfi` command) while the writer goes on answering from the log; past TAIL_LIMIT records the
#: writer indexes (and so waits) itself, which bounds the tail's memory.
TAIL_LIMIT = 4 * INDEX_BATCH
BUSY_TIMEOUT_MS = 30000

_INSERT_MESSAGE = """INSERT INTO messages (uid, received_at, channel, state, sender, facility,
    receiver, receiver_facility, control_id, msg_type, version, profile, patient_ids, charset,
    size, segment, offset, crc, dup_key, duplicate_of, ack_code, ack, reason, node)
    VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"""


def connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    # Sorts and temporary indexes in memory: SQLite otherwise creates and deletes temp files
    # (~45 a second under load, each a few system calls on the writer's path).
    conn.execute("PRAGMA temp_store=MEMORY")
    if not readonly:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    return conn


class SQLiteJournal(GroupCommitWriter):
    """Journal on local files under `data_dir`: journal.sqlite and payloads/."""

    durability = DURABILITY
    dialect = SQLITE
    is_leader = True  # one process owns the files: it is always the dispatcher
    lease = 300.0  # one process owns the file: a lease only matters after its own restart

    def __init__(self, data_dir: Path, reactor=None, node: str = "local", follower: bool = False):
        from twisted.internet import reactor as default_reactor

        super().__init__(reactor or default_reactor, node)
        #: the routing process's journal (docs/journal.md, "The routing process"): it reads the log
        #: and writes routing state, never appends to the log nor recovers it (the intake process
        #: owns both)
        self.follower = follower
        self.data_dir = Path(data_dir)
        self.db_path = self.data_dir / "journal.sqlite"
        self.payloads = PayloadStore(self.data_dir / "payloads")
        # Opened by start() before any use (the journal is a service started before its users).
        self._writer: sqlite3.Connection = None  # type: ignore[assignment]
        self._reader: sqlite3.Connection = None  # type: ignore[assignment]
        self._read_lock = threading.Lock()
        self._sync_mode = "FULL"
        self._tail = UnindexedTail()
        #: its thread is started by start(), never in the follower; its lock serves either way
        self._indexer = TailIndexer(self._tail, self._index_chunk, _index_settings)
        self._keys = KeyFilter(1)  # replaced by start(), built from the index
        #: channels no route names (set by the engine): their accepted messages are indexed
        #: `unrouted` at once, so the dispatcher never reads, plans or updates them
        self.unrouted_channels: frozenset[str] = frozenset()

    def notify_queued(self, conn, destinations) -> None:
        """Nothing to do: the only node's workers are woken in-process."""

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._writer = connect(self.db_path)
        schema.upgrade(self._writer)
        if self.follower:
            self._reader = connect(self.db_path)
            self._start_writer()
            return
        self.payloads.open()
        recovered = self.recover()
        if recovered:
            log.warning("journal.recovered", messages=recovered)
        self._build_key_filter()
        self._reader = connect(self.db_path)
        index_conn = connect(self.db_path)
        index_conn.execute("PRAGMA synchronous=NORMAL")  # the log is the truth (recover)
        self._indexer.start(index_conn)
        self._start_writer()

    def _close_resources(self) -> None:
        self._indexer.stop()
        try:
            self._index_tail()
        except Exception:  # noqa: BLE001 - the records are in the log: the next start indexes them
            log.exception("journal.index_failed", records=len(self._tail))
        self.payloads.close()
        for conn in (self._writer, self._reader, self._indexer.conn):
            if conn is not None:
                conn.close()

    def _index_rows(
        self, meta: dict, size: int, segment: int, offset: int, crc: int, ack: bytes, detail_prefix: str = ""
    ) -> tuple[tuple, tuple]:
        """The messages row and the events row of one logged record."""
        row = tuple(meta.get(k, "") for k in _META_FIELDS)
        detail = f"duplicate of {meta['duplicate_of']}" if meta.get("duplicate_of") else meta.get("reason", "")
        if meta["state"] == RECEIVED and meta["channel"] in self.unrouted_channels:
            row, detail = _as_unrouted(row), NOT_ROUTED
        message = row + (
            size,
            segment,
            offset,
            crc,
            meta.get("dup_key") if meta["state"] != DUPLICATE else None,
            meta.get("duplicate_of"),
            meta.get("ack_code", ""),
            ack,
            meta.get("reason", ""),
            self.node,
        )
        event = (meta["uid"], meta["received_at"], meta["state"], meta["channel"], detail_prefix + detail, self.node)
        return message, event

    def recover(self) -> int:
        """Index the records of the segment log that the SQLite index lost in a crash."""
        conn, store = self._writer, self.payloads
        recovered = 0
        conn.execute("BEGIN IMMEDIATE")
        after = _last_message_id(conn)
        for segment, offset, meta, raw in store.scan_from(*self._recovery_start(conn, store)):
            if meta is None:  # damaged bytes: `raw` is where to resume
                self._damaged_bytes(store, segment, offset, raw)
                continue
            raw = cast(bytes, raw)
            if conn.execute("SELECT 1 FROM messages WHERE uid=?", (meta["uid"],)).fetchone():
                continue
            crc = store.read_crc(segment, offset)
            message, event = self._index_rows(
                meta,
                len(raw),
                segment,
                offset,
                crc,
                meta.get("ack", "").encode("latin-1"),
                "recovered from the segment log; ",
            )
            conn.execute(_INSERT_MESSAGE, message)
            events.write(conn, [event])
            recovered += 1
        _note_segments(conn, after)
        conn.execute("COMMIT")
        return recovered

    @staticmethod
    def _recovery_start(conn, store: PayloadStore) -> tuple[int, int]:
        """Just after the last indexed record; past it by a search when that record is damaged."""
        last = conn.execute("SELECT segment, offset FROM messages ORDER BY id DESC LIMIT 1").fetchone()
        if not last:
            return min(store.segments(), default=1), 0
        try:
            return last[0], last[1] + store.record_length(*last)
        except (OSError, ValueError):
            log.error(
                "journal.damaged_record",
                segment=last[0],
                offset=last[1],
                detail="the last indexed record is unreadable; its message is marked damaged when routed",
            )
            resume = store.next_valid(last[0], last[1] + 1)
            return last[0], resume if resume is not None else os.path.getsize(store._path(last[0]))

    @staticmethod
    def _damaged_bytes(store: PayloadStore, segment: int, offset: int, resume) -> None:
        """Recovery met unreadable bytes: a torn tail (nothing valid after) was never synced, so
        never acknowledged, and is cut; damage with good records after it is kept and reported."""
        if resume is None:
            clean = store.zeros_from(segment, offset)  # the zeros written ahead of the log
            store.truncate(segment, offset)
            if not clean:
                log.warning("journal.torn_tail_truncated", segment=segment, offset=offset)
        else:
            log.error("journal.damaged_bytes_skipped", segment=segment, offset=offset, resume=resume)

    def _build_key_filter(self) -> None:
        """The duplicate keys of the index and the tail (keyfilter.py): at start, and when full
        (no index transaction meanwhile: none of its keys may fall between the two reads)."""
        with self._indexer.lock:
            indexed = [k for (k,) in self._writer.execute("SELECT dup_key FROM messages WHERE dup_key IS NOT NULL")]
            self._keys = filter_of(indexed + self._tail.all_keys())

    def _originals(self, conn, keys: list[str]) -> list[tuple]:
        """(dup_key, received_at, uid, ack_code, ack) of the journaled records with one of `keys`.
        The tail first: a record leaves it only once indexed, so none is missed between the two."""
        unindexed = self._tail.earlier(keys)
        seen = self._keys
        return _earlier(conn, [k for k in keys if k in seen]) + unindexed

    def _log_inbound_run(self, conn, store: PayloadStore, records: list[InboundRecord]) -> tuple[list, list]:
        """Mark duplicates and append a run of inbound records to the segment log (not synced);
        returns their messages rows and events rows, built from the records themselves."""
        if self._keys.full:
            self._build_key_filter()
        mark_duplicates(records, lambda keys: self._originals(conn, keys))
        self._keys.add_all(key for r in records if (key := _kept_key(r)))
        metas = [_meta_values(r) for r in records]
        positions = store.append_many(list(zip(metas, [r.raw for r in records])))
        node, messages, event_rows = self.node, [], []
        unrouted = self.unrouted_channels
        for r, meta, (segment, offset, crc) in zip(records, metas, positions):
            row, detail = meta[:_INDEXED], f"duplicate of {r.duplicate_of}" if r.duplicate_of else r.reason
            if r.state == RECEIVED and r.channel in unrouted:
                row, detail = _as_unrouted(row), NOT_ROUTED
            messages.append(
                row
                + (
                    len(r.raw),
                    segment,
                    offset,
                    crc,
                    _kept_key(r),
                    r.duplicate_of,
                    r.ack_code,
                    r.ack,
                    r.reason,
                    node,
                )
            )
            event_rows.append((r.uid, r.received_at, r.state, r.channel, detail, node))
        return messages, event_rows

    def _index_inbound_run(self, conn, store, records: list, messages: list, event_rows: list) -> list:
        """Insert the index rows of a logged run; returns one result per item of `records` (the
        records, or the tail's uids): the item itself, or a JournalError for a refused row.

        One multi-row INSERT per table: every SQLite call releases and takes back the GIL, and
        taking it back means waiting for the busy reactor thread, so few calls beat many."""
        after = _last_message_id(conn)
        conn.execute("SAVEPOINT run")
        try:
            for start in range(0, len(messages), ROWS_PER_INSERT):
                _insert_many(conn, _INSERT_MESSAGE, messages[start : start + ROWS_PER_INSERT])
            events.write(conn, event_rows)
        except (sqlite3.IntegrityError, ValueError):
            # Rare (a uid collision): redo row by row so that only the bad record fails.
            conn.execute("ROLLBACK TO run")
            conn.execute("RELEASE run")
            results = [
                self._run_one(conn, store, _insert_rows(m, e)) or r for r, m, e in zip(records, messages, event_rows)
            ]
            _note_segments(conn, after)
            return results
        _note_segments(conn, after)
        conn.execute("RELEASE run")
        return records

    def _store_inbound_run(self, conn, store: PayloadStore, records: list[InboundRecord]) -> list:
        """Inbound records within a batch of other operations: indexed in its transaction."""
        messages, event_rows = self._log_inbound_run(conn, store, records)
        return self._index_inbound_run(conn, store, records, messages, event_rows)

    def _set_sync_mode(self, conn, logged: bool) -> None:
        mode = "NORMAL" if logged else "FULL"
        if mode != self._sync_mode:
            conn.execute(f"PRAGMA synchronous={mode}")
            self._sync_mode = mode

    def _commit(self, batch: list) -> None:
        if self.follower and any(isinstance(operation, InboundRecord) for operation, _, _ in batch):
            self._answer(batch, [JournalError("the routing process never stores inbound messages")] * len(batch))
            return
        if all(isinstance(operation, InboundRecord) for operation, _, _ in batch):
            self._commit_to_log(batch)
        elif all(isinstance(operation, (InboundRecord, IndexedOnly)) for operation, _, _ in batch):
            self._commit_beside_tail(batch)
        else:
            self._commit_with_index(batch)

    def _commit_to_log(self, batch: list) -> None:
        """Inbound records only: durable once in the synced log, answered at once; their index
        rows join the tail, indexed later (`_index_tail`) or rebuilt from the log after a crash."""
        store = self.payloads
        position = store.position()
        records = [record for record, _, _ in batch]
        try:
            if len(self._tail) >= TAIL_LIMIT:  # the indexer fell behind, failed or waits for a lock
                self._index_tail()
            messages, event_rows = self._log_inbound_run(self._writer, store, records)
            store.sync()
        except Exception as exc:  # disk full, read-only, I/O error: every caller must hear it
            self._abort(self._writer, store, position)
            log.exception("journal.commit_failed", error=str(exc), batch=len(batch))
            self._answer(batch, [JournalError(f"journal write failed: {exc}")] * len(batch))
            return
        kept_keys = [_kept_key(r) for r in records]
        routable = any_to_route(records, self.unrouted_channels)
        self._tail.add(records, kept_keys, messages, event_rows, routable, INDEX_BATCH)
        self._answer(batch, records)

    def _commit_beside_tail(self, batch: list) -> None:
        """Inbound records and `IndexedOnly` operations (routing's): the records go to the log
        and the tail as in `_commit_to_log`, the operations commit without indexing the tail, which
        the indexer goes on indexing in its own batches. Indexing it here cut it into one small
        chunk per routing operation, on the thread that answers the ACKs."""
        records = [item for item in batch if isinstance(item[0], InboundRecord)]
        if records:
            self._commit_to_log(records)
        self._commit_with_index([item for item in batch if not isinstance(item[0], InboundRecord)], with_tail=False)

    def _commit_with_index(self, batch: list, with_tail: bool = True) -> None:
        """A batch holding other operations: the tail is indexed first, in the same transaction,
        so that the operations see every acknowledged record (unless not `with_tail`). Under the
        indexer's lock either way: one write transaction at a time in this process, without
        SQLite's busy-wait polling."""
        with self._indexer.lock:
            chunk = self._tail.take() if with_tail else Chunk.empty()
            results = self._commit_batch_and_tail(batch, chunk)
            if not isinstance(results, JournalError):
                self._tail.drop(chunk.count)
        if isinstance(results, JournalError):
            results = [results] * len(batch)
        self._answer(batch, results)

    def _commit_batch_and_tail(self, batch: list, chunk: Chunk) -> list | JournalError:
        conn, store = self._writer, self.payloads
        position = store.position()
        try:
            self._set_sync_mode(conn, all(logged for _, _, logged in batch))
            conn.execute("BEGIN IMMEDIATE")
            self._insert_tail(conn, chunk)
            results = self._run_batch(conn, store, batch)
            store.sync()  # the log first: the index of a synced batch can be rebuilt from it
            conn.execute("COMMIT")
        except Exception as exc:  # disk full, read-only, I/O error: every caller must hear it
            self._events_rolled_back()
            self._abort(conn, store, position)
            log.exception("journal.commit_failed", error=str(exc), batch=len(batch))
            return JournalError(f"journal write failed: {exc}")
        self._tail_indexed(chunk.routable or any_to_route([op for op, _, _ in batch], self.unrouted_channels))
        return results

    def _index_tail(self) -> None:
        """Index the whole tail now, in the writer thread (past TAIL_LIMIT, at a stop); raises
        when that fails."""
        self._indexer.index_now(self._writer)

    def _index_chunk(self, conn, chunk: Chunk) -> None:
        """Index the tail's `chunk` in one transaction of `conn` (the indexer's, or the writer's),
        without fsync: after a crash, `recover` rebuilds it from the log."""
        if conn is self._writer:
            self._set_sync_mode(conn, True)
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._insert_tail(conn, chunk)
            conn.execute("COMMIT")
        except Exception:
            self._events_rolled_back()
            self._abort(conn, self.payloads, None)
            raise
        self._tail_indexed(chunk.routable)

    def _insert_tail(self, conn, chunk: Chunk) -> None:
        if not chunk.count:
            return
        results = self._index_inbound_run(conn, self.payloads, chunk.uids, chunk.messages, chunk.events)
        for uid, result in zip(chunk.uids, results):
            if isinstance(result, Exception):  # acknowledged, in the log: say it loudly
                log.error("journal.index_failed", message_id=uid, error=str(result))

    def _tail_indexed(self, routable: bool) -> None:
        """Index rows committed (in this thread): the listeners count their events, and the
        dispatcher routes what it can now read."""
        self._events_committed()
        if routable:
            self._wake_dispatcher()

    def _run_one(self, conn, store, operation):
        conn.execute("SAVEPOINT op")
        mark = len(events.collected())
        try:
            result = operation(conn, store)
        except (sqlite3.IntegrityError, ValueError) as exc:
            # One bad operation must not sink the others committed with it.
            conn.execute("ROLLBACK TO op")
            self._events_rolled_back(mark)
            result = JournalError(str(exc))
        conn.execute("RELEASE op")
        return result

    @staticmethod
    def _abort(conn, store, position) -> None:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        if position is None:
            return
        try:
            store.rollback_to(*position)
        except OSError:
            pass

    def indexed(self):
        """Fires once every record acknowledged so far is in the index (any operation first
        indexes the tail): for readers that must see a message right after its ACK."""
        return self.submit(lambda conn, store: None, logged=True)

    def claim_received(self, limit: int, channels: frozenset | None = None):
        """The oldest indexed messages still to route, with their raw bytes (one dispatcher per
        file); a message of a channel outside `channels` comes with raw None (no route can match
        it). Messages still in the tail come once indexed: the indexer's commit wakes the
        dispatcher."""
        return self.submit(lambda conn, store: _received(conn, store, limit, channels), logged=True, indexed_only=True)

    async def purge_before(self, before: float) -> int:
        """Retention: drop whole segments, oldest first, while every message in them was received
        before `before` and is finished (routed, with no delivery pending). The index rows go in
        short transactions of PURGE_BATCH, then the file. Oldest first and never the segment being
        written, so `recover()` never meets a record whose index row was purged."""
        total = 0
        while segment := await self.submit(lambda c, s: _purgeable_segment(c, s, before), logged=True):
            while count := await self.submit(lambda c, s: _delete_segment_rows(c, segment), logged=True):
                total += count
            await self.submit(lambda c, s: _forget_segment(c, s, segment), logged=True)
            log.info("journal.segment_purged", segment=segment)
        return total

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.data_dir.rglob("*") if f.is_file())

    def unindexed(self) -> tuple[int, float]:
        return self._tail.backlog()

    # -- reads -----------------------------------------------------------------------------
    def _read(self, sql: str, args=()) -> list:
        with self._read_lock:
            return self._reader.execute(sql, args).fetchall()

    def queue_depths(self, destinations=None) -> list[tuple]:
        """Per destination and waiting state: count and oldest (for the queue gauges)."""
        from engine.journal.deliveries import queue_depths

        return queue_depths(self._read, destinations)

    def events_after(self, last_id: int, limit: int = 500, channel=None, msg_type=None) -> list[JournalEvent]:
        return events_after(self._read, last_id, limit, channel, msg_type)

    def load_message(self, uid: str) -> StoredMessage | None:
        return load_message(self._read, self.payloads, uid)


#: the messages row's indexed columns: the first fields of the segment log's meta tuple
_META_FIELDS = META_FIELDS[: META_FIELDS.index("ack_code")]


PURGE_BATCH = 2000


def _purgeable_segment(conn, store: PayloadStore, before: float) -> int | None:
    older = [s for s in store.segments() if s < store.position()[0]]
    if not older:
        return None
    first, last = _segment_span(conn, older[0])
    unfinished = conn.execute(
        "SELECT 1 FROM messages m WHERE m.id BETWEEN ? AND ? AND m.segment=? AND (m.received_at>=?"
        " OR m.state='received' OR EXISTS (SELECT 1 FROM deliveries d WHERE d.message_uid=m.uid"
        " AND d.state IN ('pending', 'sending', 'held'))) LIMIT 1",
        (first, last, older[0], before),
    ).fetchall()
    return None if unfinished else older[0]


def _delete_segment_rows(conn, segment: int) -> int:
    first, last = _segment_span(conn, segment)
    uids = [
        r[0]
        for r in conn.execute(
            "SELECT uid FROM messages WHERE id BETWEEN ? AND ? AND segment=? LIMIT ?",
            (first, last, segment, PURGE_BATCH),
        )
    ]
    for i in range(0, len(uids), 500):  # SQLite's bound-parameter limit
        chunk = uids[i : i + 500]
        stats.forget_messages(conn, chunk)  # the counters stay; the facts go with the messages
        marks = ",".join("?" * len(chunk))
        for table, column in (("events", "message_uid"), ("deliveries", "message_uid"), ("messages", "uid")):
            conn.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", chunk)
    return len(uids)


def _forget_segment(conn, store: PayloadStore, segment: int) -> None:
    conn.execute("DELETE FROM segment_ids WHERE segment=?", (segment,))
    store.remove(segment)


def _segment_span(conn, segment: int) -> tuple[int, int]:
    """The ids of `segment`'s index rows lie within this span (empty when it has none left)."""
    row = conn.execute("SELECT first_id, last_id FROM segment_ids WHERE segment=?", (segment,)).fetchone()
    return row if row else (1, 0)


def _last_message_id(conn) -> int:
    return conn.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()[0]


def _note_segments(conn, after: int) -> None:
    """Widen each segment's span by the index rows inserted since id `after` (one statement per
    batch of rows: retention then reads a segment's rows by id, see schema migration 8)."""
    conn.execute(
        "INSERT INTO segment_ids SELECT segment, min(id), max(id) FROM messages WHERE id > ? GROUP BY segment"
        " ON CONFLICT(segment) DO UPDATE SET first_id=min(first_id, excluded.first_id),"
        " last_id=max(last_id, excluded.last_id)",
        (after,),
    )


def _earlier(conn, keys: list[str]) -> list[tuple]:
    """(dup_key, received_at, uid, ack_code, ack) of journaled messages with one of `keys`."""
    rows = []
    for i in range(0, len(keys), 500):  # stay under SQLite's bound-parameter limit
        chunk = keys[i : i + 500]
        rows += conn.execute(
            f"SELECT dup_key, received_at, uid, ack_code, ack FROM messages "
            f"WHERE dup_key IN ({','.join('?' * len(chunk))}) ORDER BY id",
            chunk,
        ).fetchall()
    return rows


def _received(conn, store: PayloadStore, limit: int, channels: frozenset | None = None) -> list[tuple]:
    rows = conn.execute(
        "SELECT uid, channel, received_at, segment, offset, size FROM messages WHERE state='received'"
        " ORDER BY id LIMIT ?",
        (limit,),
    ).fetchall()
    claimed: list[tuple] = []
    for uid, channel, at, segment, offset, size in rows:
        if channels is not None and channel not in channels:
            claimed.append((uid, channel, at, None))  # unroutable: not worth reading
            continue
        try:
            claimed.append((uid, channel, at, store.read_raw(segment, offset, size)))
        except (OSError, ValueError) as exc:
            _mark_damaged(conn, uid, channel, exc)
    return claimed


def _mark_damaged(conn, uid: str, channel: str, error: Exception) -> None:
    """An indexed record the log cannot give back: the message leaves routing once, visibly
    (state `damaged`, an event and an error log), instead of failing every dispatch for ever."""
    conn.execute("UPDATE messages SET state='damaged' WHERE uid=?", (uid,))
    events.write_one(conn, uid, time.time(), "damaged", channel, f"record unreadable in the segment log: {error}", "")
    log.error("journal.message_damaged", message_id=uid, channel=channel, error=str(error))


def _insert_many(conn, insert: str, rows: list[tuple]) -> None:
    """`insert` (INSERT ... VALUES (?,...)) for all `rows` in one statement."""
    head, values = insert.split("VALUES")
    conn.execute(head + "VALUES" + ",".join([values.strip()] * len(rows)), [value for row in rows for value in row])


def _insert_rows(message: tuple, event: tuple) -> Callable:
    def insert(conn, store) -> None:
        conn.execute(_INSERT_MESSAGE, message)
        events.write(conn, [event])

    return insert


_INDEXED = len(_META_FIELDS)
_STATE = _META_FIELDS.index("state")
UNROUTED = "unrouted"
NOT_ROUTED = "no route names this channel: not routed"


def _index_settings() -> tuple[int, float, float]:
    """(INDEX_BATCH, INDEX_DELAY, INDEX_RETRY), read when used (tests change them)."""
    return INDEX_BATCH, INDEX_DELAY, INDEX_RETRY


def _kept_key(r: InboundRecord) -> str | None:
    """The dup_key the index keeps for a record: a duplicate's points to its original instead,
    so only originals are found (the messages row, the tail and the key filter agree on it)."""
    return r.dup_key if r.state != DUPLICATE else None


def _as_unrouted(row: tuple) -> tuple:
    return row[:_STATE] + (UNROUTED,) + row[_STATE + 1 :]


#: the record's PFI2 meta, in META_FIELDS order (one C-level call on the hot path)
_meta_values = operator.attrgetter(*META_FIELDS)


def _meta(r: InboundRecord) -> dict:
    """The JSON meta of a PFI1 record (the format before PFI2): tests write old logs with it."""
    meta = {k: getattr(r, k) for k in _META_FIELDS}
    meta.update(
        state=r.state,
        ack_code=r.ack_code,
        ack=r.ack.decode("latin-1"),
        reason=r.reason,
        dup_key=r.dup_key,
        duplicate_of=r.duplicate_of,
    )
    return meta


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
