"""The SQLite journal's unindexed tail and the thread that indexes it (docs/journal.md).

Acknowledged records are in the synced segment log; their index rows wait here, in log order,
until the indexer thread inserts them with a connection of its own, while the writer goes on
logging and answering. Two rules keep duplicates and readers right across the two threads:

* a record leaves the tail only after its index rows are committed, and the writer looks a key up
  in the tail before the index: a record absent from the tail is therefore visible to the
  writer's next index query (never missed between the two look-ups);
* one index transaction at a time (`TailIndexer.lock`): the writer takes the lock to index the
  tail itself before any other operation, which thus sees every acknowledged record.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

import structlog

from engine.journal import events
from engine.journal.payloads import META_FIELDS
from engine.osthread import NamedThread

log = structlog.get_logger("engine.journal")

_RECEIVED_AT = META_FIELDS.index("received_at")  # a messages row starts with the meta, in that order


@dataclass
class Chunk:
    """The index rows of the tail's first `count` records, taken to be indexed."""

    count: int
    uids: list
    messages: list
    events: list
    routable: bool  # holds a record the dispatcher must route

    @classmethod
    def empty(cls) -> "Chunk":
        """Nothing to index (an operation that commits beside the tail)."""
        return cls(0, [], [], [], False)


class UnindexedTail:
    """Records synced to the log and acknowledged, not yet in the SQLite index, in log order.

    The writer thread adds and looks keys up; the indexer takes the rows and, once committed,
    drops them. `changed` (its lock guards every field) wakes the indexer."""

    def __init__(self) -> None:
        self.changed = threading.Condition(threading.Lock())
        # Uids, not the records: a record holds its raw bytes (megabytes for a report with its
        # PDF), which must be freed once answered, not kept until indexed.
        self.uids: list[str] = []
        self.messages: list[tuple] = []
        self.events: list[tuple] = []
        self._kept_keys: list[str | None] = []  # per record, to forget its key when dropped
        #: dup_key -> (dup_key, received_at, uid, ack_code, ack) of originals, as the index gives
        self.keys: dict[str, list[tuple]] = {}
        self.since = 0.0  # monotonic time of the oldest record
        self._routable_end = 0  # the records before this position hold one to route

    def __len__(self) -> int:
        return len(self.uids)

    def add(
        self, records: list, kept_keys: list, messages: list, event_rows: list, routable: bool, batch_size: int
    ) -> None:
        """Append a logged run (`kept_keys`: each record's key the index keeps, or None);
        `batch_size`: the indexer's INDEX_BATCH."""
        with self.changed:
            was = len(self.uids)
            if not was:
                self.since = time.monotonic()
            self.uids += [r.uid for r in records]
            self.messages += messages
            self.events += event_rows
            self._kept_keys += kept_keys
            for r, key in zip(records, kept_keys):
                if key:
                    self.keys.setdefault(key, []).append((key, r.received_at, r.uid, r.ack_code, r.ack))
            if routable:
                self._routable_end = len(self.uids)
            # Woken only when its wait changes: the first record (it sleeps until one comes) or
            # a full batch; otherwise it is already waiting until the oldest is due. A wake per
            # writer batch cost a thread switch and a GIL hand-off each.
            if not was or was < batch_size <= len(self.uids):
                self.changed.notify()

    def backlog(self) -> tuple[int, float]:
        """(records waiting, seconds since the oldest was received: wall clock, as its row says)."""
        with self.changed:
            if not self.messages:
                return 0, 0.0
            return len(self.messages), max(0.0, time.time() - self.messages[0][_RECEIVED_AT])

    def earlier(self, keys: list[str]) -> list[tuple]:
        """The originals among the tail's records (they follow every indexed one)."""
        with self.changed:
            if not self.keys:
                return []
            return [original for key in keys for original in self.keys.get(key, ())]

    def all_keys(self) -> list[str]:
        with self.changed:
            return list(self.keys)

    def take(self) -> Chunk:
        """The rows of every record now in the tail; they stay until `drop`ped."""
        with self.changed:
            return Chunk(len(self.uids), self.uids[:], self.messages[:], self.events[:], self._routable_end > 0)

    def drop(self, count: int) -> None:
        """The first `count` records are indexed: forget them. Nothing indexed changes nothing (the
        rest's INDEX_DELAY is not restarted: routing's operations commit beside the tail)."""
        if not count:
            return
        with self.changed:
            for key in self._kept_keys[:count]:
                if key:
                    originals = self.keys[key]
                    del originals[0]  # in log order: the oldest is the one indexed
                    if not originals:
                        del self.keys[key]
            for rows in (self.uids, self.messages, self.events, self._kept_keys):
                del rows[:count]
            self._routable_end = max(0, self._routable_end - count)
            if self.uids:
                self.since = time.monotonic()  # the rest waits INDEX_DELAY from now at most


class TailIndexer:
    """The thread that indexes the tail: once `batch` records wait, or `delay` seconds after the
    oldest came; after a failure, not before `retry` seconds (not in a loop: a full disk)."""

    def __init__(self, tail: UnindexedTail, index: Callable[[object, Chunk], None], settings: Callable[[], tuple]):
        self.tail = tail
        self.conn = None  # the thread's own connection, given to `start` (closed by the journal)
        self._index = index  # (conn, chunk): inserts and commits the chunk's rows, or raises
        self._settings = settings  # () -> (batch, delay, retry), read each time (tests change them)
        #: held for the whole of an index transaction, by this thread or by the writer
        self.lock = threading.Lock()
        self._retry_at = 0.0
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self, conn) -> None:
        self.conn = conn
        self._thread = NamedThread(target=self._run, name="journal-indexer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Let an index transaction in progress finish, then end the thread (the writer indexes
        what is left)."""
        if self._thread is None:
            return
        with self.tail.changed:
            self._stopping = True
            self.tail.changed.notify()
        self._thread.join()
        self._thread = None

    def _run(self) -> None:
        events.collect_into([])  # this thread's event rows, for the journal's listeners
        while self._wait_until_due():
            self.index_now(self.conn, from_thread=True)

    def _wait_until_due(self) -> bool:
        with self.tail.changed:
            while not self._stopping:
                wait = self._time_to_wait()
                if wait <= 0:
                    return True
                self.tail.changed.wait(wait)
            return False

    def _time_to_wait(self) -> float:
        """Seconds until the tail is due (<= 0: now); called with the tail's lock held."""
        count = len(self.tail)
        if not count:
            return 3600.0  # woken by the next `add`
        batch, delay, _ = self._settings()
        due = self.tail.since + delay if count < batch else 0.0
        return max(due, self._retry_at) - time.monotonic()

    def index_now(self, conn, from_thread: bool = False) -> None:
        """Index the whole tail in one transaction. In the writer (not `from_thread`) a failure
        is raised to the caller; in the indexer it is logged and tried again after `retry`."""
        with self.lock:
            chunk = self.tail.take()
            if not chunk.count:
                return
            try:
                self._index(conn, chunk)
            except Exception as exc:
                if not from_thread:
                    raise
                self._retry_at = time.monotonic() + self._settings()[2]
                log.exception("journal.index_failed", error=str(exc), records=chunk.count)
                return
            self.tail.drop(chunk.count)
