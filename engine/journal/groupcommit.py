"""The group-commit writer shared by the journal implementations.

All writes go through one writer thread that commits in groups: whatever arrived while the
previous commit was being made durable is written in the next one, so throughput grows with
concurrency while every caller is answered only after its own data is durable. Inbound records
of one reactor turn are queued together; the writer waits up to BATCH_WAIT for the callers it
has just answered (closed-loop senders) so that they share the next sync. See docs/journal.md.

A subclass says how a batch becomes durable (`_commit`), how a run of inbound records is stored
(`_store_inbound_run`) and how one operation is isolated from the others of its batch (`_run_one`).
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Callable

import structlog
from twisted.internet import defer, threads

from engine.journal import events
from engine.journal.base import DUPLICATE, RECEIVED, InboundRecord
from engine.osthread import NamedThread

log = structlog.get_logger("engine.journal")

MAX_BATCH = 1024
# How long the writer waits for the callers it just answered before committing a smaller batch.
BATCH_WAIT = 0.0002


class IndexedOnly:
    """An operation that needs only what the index already holds: routing state (deliveries, and
    messages the dispatcher claimed from the index), never a message acknowledged so far but not
    indexed yet. The SQLite journal commits it without first indexing its tail (docs/journal.md,
    "Routing operations and the tail"); elsewhere it runs as any operation."""

    __slots__ = ("operation",)

    def __init__(self, operation: Callable):
        self.operation = operation

    def __call__(self, conn, store):
        return self.operation(conn, store)


class GroupCommitWriter:
    """Owns the writer thread, the queue of pending writes and the answers to their callers."""

    def __init__(self, reactor, node: str):
        self.reactor = reactor
        self.node = node
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        # Set by the engine. `on_received` wakes the dispatcher: called once messages to route are
        # committed (by this node: `_wake_dispatcher`; by another node of a shared journal: its
        # notification); `on_queued` when another node queued work for a destination.
        self.on_received: Callable[[], None] = lambda: None
        self.on_queued: Callable[[str], None] = lambda destination: None
        #: a shared journal: this node took over follow-ups a silent node left due (run them now)
        self.on_follow_ups_adopted: Callable[[], None] = lambda: None
        #: called in the writer thread with the event rows of each committed transaction (the
        #: engine's metrics count them: one observer of every state change, nothing counted twice)
        self.event_listeners: list[Callable[[list], None]] = []
        self._written: list = []  # the writer thread's event rows of the transaction in progress

    # -- to implement ----------------------------------------------------------------------
    def _commit(self, batch: list) -> None:
        """Run `batch` in one durable transaction and answer its callers (`_answer`)."""
        raise NotImplementedError

    def _store_inbound_run(self, conn, store, records: list[InboundRecord]) -> list:
        raise NotImplementedError

    def _run_one(self, conn, store, operation):
        raise NotImplementedError

    def start(self) -> None:
        """Open files and connections, upgrade the schema, recover, start the writer (blocking)."""
        raise NotImplementedError

    def _close_resources(self) -> None:
        """Called in the writer thread after the last batch."""

    def _idle_wait(self) -> float | None:
        """How long the writer may wait for work before `_when_idle` (None: as long as it takes)."""
        return None

    def _when_idle(self) -> None:
        """Called in the writer thread when no work came within `_idle_wait`."""

    # -- lifecycle -------------------------------------------------------------------------
    async def open(self) -> None:
        """`start` (files, schema, recovery: blocking I/O) in a thread, off the reactor thread."""
        await threads.deferToThread(self.start)

    def _start_writer(self) -> None:
        self._thread = NamedThread(target=self._run, name="journal-writer", daemon=True)
        self._thread.start()

    def stop(self) -> defer.Deferred:
        """Finish what is queued, then close; fires when the writer thread has exited."""
        if self._thread is None:
            return defer.succeed(None)
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
    def submit(self, operation: Callable, logged: bool = False, indexed_only: bool = False) -> defer.Deferred:
        """Run `operation(conn, store)` in the writer thread, inside the next group commit; fires
        once durable. `logged` operations may be lost in a crash without harm (the state they
        write is recomputed or the work redone), so they need no sync of their own.
        `indexed_only` operations need only what the index already holds (`IndexedOnly`)."""
        d: defer.Deferred = defer.Deferred()
        self._queue.put((IndexedOnly(operation) if indexed_only else operation, d, logged))
        return d

    def append_inbound(self, record: InboundRecord, then: Callable[[object], None] | None = None):
        """Store `record`; returns a Deferred firing with it, or, given `then`, calls `then(record)`
        (or `then(exception)` if it could not be stored) on the reactor thread and returns None:
        intake's hot path, without a Deferred and its callback chain per message."""
        # The record itself is queued (not a closure): the writer stores runs of inbound records
        # with one duplicate query and one multi-row insert per table instead of per-message ones.
        waiter: defer.Deferred | Callable = defer.Deferred() if then is None else then
        # Straight into the writer's queue (one C-level put): a writer busy syncing is not woken,
        # and it takes whatever queued meanwhile as its next batch. Gathering a reactor turn's
        # records first cost a callLater(0) and its heap work per turn, more than it saved.
        self._queue.put((record, waiter, True))
        return waiter if then is None else None

    def record_event(self, message_uid: str, state: str, channel: str = "", detail: str = "") -> defer.Deferred:
        row = (message_uid, time.time(), state, channel, detail, self.node)
        return self.submit(lambda conn, store: events.write(conn, [row]))

    # -- the writer thread -------------------------------------------------------------------
    def _next_batch(self, expected: int) -> list | None:
        """Block for the first item, then take whatever is queued. When the previous batch
        answered several callers, wait a little for them to come back, so that closed-loop
        senders share one sync instead of splitting into small batches."""
        item = self._first_item()
        if item is None:
            return None
        batch = [item]
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
            batch.append(nxt)
        return batch

    def _first_item(self):
        while True:
            try:
                return self._queue.get(timeout=self._idle_wait())
            except queue.Empty:
                self._when_idle()

    def _run(self) -> None:
        events.collect_into(self._written)
        expected = 1
        while True:
            batch = self._next_batch(expected)
            if batch is None:
                break
            self._commit(batch)
            expected = len(batch)
        self._close_resources()

    def _run_batch(self, conn, store, batch: list) -> list:
        """Run the batch in order, consecutive inbound records together; one result per item."""
        results: list = []
        run: list[InboundRecord] = []
        for operation, _, _ in batch:
            if isinstance(operation, InboundRecord):
                run.append(operation)
                continue
            if run:  # keep the order of the batch: earlier records are stored first
                results += self._store_inbound_run(conn, store, run)
                run = []
            results.append(self._run_one(conn, store, operation))
        if run:
            results += self._store_inbound_run(conn, store, run)
        return results

    def _wake_dispatcher(self) -> None:
        """After committing messages to route (writer thread): intake does not wake it itself."""
        self.reactor.callFromThread(self.on_received)

    def _events_committed(self) -> None:
        """The transaction of this thread (the writer, or the SQLite journal's indexer) committed:
        hand its event rows to the listeners."""
        written = events.collected()
        rows, written[:] = list(written), []
        for listener in self.event_listeners:
            try:
                listener(rows)
            except Exception:  # noqa: BLE001 - a metrics fault must never touch the journal
                log.exception("journal.event_listener_failed")

    def _events_rolled_back(self, mark: int = 0) -> None:
        del events.collected()[mark:]

    def _answer(self, batch: list, results: list) -> None:
        self.reactor.callFromThread(_resolve, [d for _, d, _ in batch], results)


def _resolve(waiters: list, results: list) -> None:
    """Hand each operation's result to its waiter: a Deferred, or a plain callable (`then` of
    append_inbound) that gets the result or the exception. One waiter's defect spares the rest."""
    for waiter, result in zip(waiters, results):
        if type(waiter) is not defer.Deferred:
            try:
                waiter(result)
            except Exception:  # noqa: BLE001
                log.exception("journal.waiter_failed")
        elif isinstance(result, Exception):
            waiter.errback(result)
        else:
            waiter.callback(result)


def any_to_route(operations: list, unrouted: frozenset = frozenset()) -> bool:
    """Some of `operations` are accepted messages the dispatcher must route."""
    return any(isinstance(r, InboundRecord) and r.state == RECEIVED and r.channel not in unrouted for r in operations)


def mark_duplicates(records: list[InboundRecord], earlier: Callable[[list[str]], list[tuple]]) -> None:
    """Mark the records whose dup_key is already journaled within its window, with one lookup
    (`earlier(keys)` -> rows of (dup_key, received_at, uid, ack_code, ack) in journal order) for
    the whole run, plus the duplicates inside the run itself (they point to its first record)."""
    keyed = [(r, r.dup_key) for r in records if r.dup_key and r.dup_window > 0]
    if not keyed:
        return
    journaled: dict[str, list] = {}
    for key, received_at, uid, ack_code, ack in earlier(list({k for _, k in keyed})):
        journaled.setdefault(key, []).append((received_at, uid, ack_code, bytes(ack or b"")))
    for r, dup_key in keyed:
        oldest = r.received_at - r.dup_window
        original = next((o for o in journaled.get(dup_key, ()) if o[0] >= oldest), None)
        if original is not None:
            _, r.duplicate_of, r.ack_code, r.ack = original
            r.state = DUPLICATE
        else:  # later records of this run with the same key are its duplicates
            journaled.setdefault(dup_key, []).append((r.received_at, r.uid, r.ack_code, r.ack))
