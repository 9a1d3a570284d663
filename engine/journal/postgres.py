"""The shared journal: several engine nodes on one PostgreSQL database. See docs/cluster.md.

Writes go through the same group-commit writer as the SQLite journal, on one connection per
node: a batch of inbound messages (row, payload, event) commits with synchronous_commit=on
before any of its ACKs leaves; claims and recorded successes commit with it off (a crash loses
at most work that is redone, like SQLite's NORMAL mode). Beside the writer each node keeps:

* a *session* connection holding two advisory locks: its node name (two live nodes may not share
  one) and, on one node at a time, the *dispatch* lock. The dispatcher plans every node's messages
  in journal order, so a replace never overtakes its original wherever each arrived; when the
  leader dies its session ends, the lock is free, another node takes over within a second.
  Each second it also renews the leases of the node's sends in flight and hands back to the queue
  the sends of nodes that stopped renewing (a crashed node). The leader also runs retention.
* a *listener* connection (LISTEN): a new message wakes the leader, new deliveries wake every
  node's workers, instead of polling.
* a small pool for reads (tail, follow-ups, replay).
"""

from __future__ import annotations

import os
import socket
import threading
import time

import psycopg
import structlog
from psycopg_pool import ConnectionPool
from twisted.internet import defer, task, threads

from engine.errors import JournalError
from engine.journal import events, pgschema, stats
from engine.journal.deliveries import follow_up_kind
from engine.journal.base import DUPLICATE, RECEIVED, InboundRecord, JournalEvent, StoredMessage
from engine.journal.dialect import POSTGRES
from engine.journal.groupcommit import GroupCommitWriter, any_to_route, mark_duplicates
from engine.osthread import NamedThread

log = structlog.get_logger(__name__)

DURABILITY = (
    "PostgreSQL: inbound batch committed with synchronous_commit=on (WAL flushed) before ACK; "
    "claims and successes synchronous_commit=off"
)
_LOCK_SPACE_NODE, _LOCK_SPACE_DUP, _LOCK_DISPATCH = 7311, 7312, (7313, 0)
TICK = 1.0  # heartbeat: leases, leadership, node liveness
PURGE_BATCH = 500  # rows per retention transaction: short, never blocks intake for long
_NOTIFY_RECEIVED, _NOTIFY_QUEUED = "pfi_received", "pfi_queued"

_INSERT_MESSAGE = """INSERT INTO messages (uid, received_at, channel, state, sender, facility, receiver,
    receiver_facility, control_id, msg_type, version, profile, patient_ids, charset, size, dup_key,
    duplicate_of, ack_code, ack, reason, node) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"""
_INSERT_PAYLOAD = "INSERT INTO payloads (uid, raw) VALUES (%s, %s)"


def is_postgres_url(value: str) -> bool:
    return value.startswith(("postgresql://", "postgres://"))


class PgConnection:
    """A psycopg connection that takes the engine's portable SQL (`?` placeholders, as SQLite)."""

    def __init__(self, raw: psycopg.Connection):
        self.raw = raw

    def execute(self, sql: str, params=()):
        if params:
            return self.raw.execute(_pg_sql(sql), params)
        return self.raw.execute(sql.replace("BEGIN IMMEDIATE", "BEGIN"))

    def executemany(self, sql: str, rows):
        cur = self.raw.cursor()
        cur.executemany(_pg_sql(sql), list(rows))
        return cur

    def close(self) -> None:
        self.raw.close()


_SQL_CACHE: dict[str, str] = {}


def _pg_sql(sql: str) -> str:
    converted = _SQL_CACHE.get(sql)
    if converted is None:
        converted = _SQL_CACHE[sql] = sql.replace("%", "%%").replace("?", "%s")
    return converted


def connect(url: str) -> PgConnection:
    return PgConnection(psycopg.connect(url, autocommit=True))


class PgPayloads:
    """What journal operations get as `store` on PostgreSQL: payloads are rows."""

    @staticmethod
    def message_raw(conn, uid: str) -> bytes:
        return conn.execute("SELECT raw FROM payloads WHERE uid=?", (uid,)).fetchall()[0][0]

    @staticmethod
    def messages_raw(conn, uids: list[str]) -> dict[str, bytes]:
        """uid -> raw bytes, in one query (a claim loads every payload of its batch)."""
        if not uids:
            return {}
        return dict(conn.execute("SELECT uid, raw FROM payloads WHERE uid = ANY(?)", (list(set(uids)),)).fetchall())


class PostgresJournal(GroupCommitWriter):
    durability = DURABILITY
    dialect = POSTGRES
    unrouted_channels: frozenset[str] = frozenset()  # the leader's routes decide (unused here)

    def __init__(self, url: str, reactor=None, node: str = "", lease: float = 15.0):
        from twisted.internet import reactor as default_reactor

        super().__init__(reactor or default_reactor, node or socket.gethostname())
        self.url = url
        self.lease = lease
        self.store = PgPayloads()
        self.is_leader = False
        # Opened by start() before any use (the journal is a service started before its users).
        self._conn: PgConnection = None  # type: ignore[assignment]
        self._session: PgConnection = None  # type: ignore[assignment]
        self._pool: ConnectionPool = None  # type: ignore[assignment]
        self._listening = False
        self._listener: threading.Thread | None = None
        self._beating: defer.Deferred | None = None
        self._heartbeat = task.LoopingCall(self._beat)
        self._heartbeat.clock = self.reactor

    # -- lifecycle -------------------------------------------------------------------------

    def notify_queued(self, conn, destinations) -> None:
        """Wake every node's worker of these destinations when the transaction on `conn` commits."""
        for name in set(destinations):
            conn.raw.execute("SELECT pg_notify(%s, %s)", (_NOTIFY_QUEUED, name))

    def start(self) -> None:
        self._connect_all()
        self._heartbeat.start(TICK, now=False)
        self._try_lead()

    async def open(self) -> None:
        """`start` with its blocking I/O (connections, schema check, leadership) in a thread."""
        await threads.deferToThread(self._connect_all)
        self._heartbeat.start(TICK, now=False)  # a LoopingCall: the reactor thread
        await threads.deferToThread(self._try_lead)

    def _connect_all(self) -> None:
        self._conn = connect(self.url)
        pgschema.check(self._conn.raw)
        self._session = connect(self.url)
        self._claim_node_name()
        self._pool = ConnectionPool(self.url, min_size=1, max_size=4, kwargs={"autocommit": True}, open=True)
        self._start_writer()
        self._start_listener()

    def stop(self) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._heartbeat.running:
            self._heartbeat.stop()
        if self._beating is not None:  # the session connection is in use until it fires
            finished: defer.Deferred[None] = defer.Deferred()

            def release(result):
                finished.callback(None)
                return result

            self._beating.addBoth(release)
            await finished
        self._listening = False
        await super().stop()
        await threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self._close)

    def close_now(self) -> None:
        if self._heartbeat.running:
            self._heartbeat.stop()
        self._listening = False
        super().close_now()
        self._close()

    def _close(self) -> None:
        if self._listener is not None:
            self._listener.join(timeout=5)
        if self._session is not None and not self._session.raw.closed:
            self._session.close()
        if self._pool is not None:
            self._pool.close()
        self.is_leader = False

    def _close_resources(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def _claim_node_name(self) -> None:
        from engine.errors import ConfigurationError

        if not self._session.execute(
            "SELECT pg_try_advisory_lock(?, hashtext(?))", (_LOCK_SPACE_NODE, self.node)
        ).fetchone()[0]:
            raise ConfigurationError(
                [
                    f"another running node is already named {self.node!r} on this journal; "
                    "give each node its own `node:` name (pfi.yaml or --node)"
                ]
            )
        # The console names the dispatch leader from the session holding the dispatch lock.
        self._session.execute("SELECT set_config('application_name', ?, false)", (f"pfi:{self.node}"[:63],))
        now = time.time()
        self._session.execute(
            "INSERT INTO nodes (name, host, pid, started_at, heartbeat_at) VALUES (?,?,?,?,?)"
            " ON CONFLICT (name) DO UPDATE SET host=excluded.host, pid=excluded.pid,"
            " started_at=excluded.started_at, heartbeat_at=excluded.heartbeat_at",
            (self.node, socket.gethostname(), os.getpid(), now, now),
        )

    # -- the writer ------------------------------------------------------------------------
    def _commit(self, batch: list) -> None:
        conn = self._conn
        durable = any(not logged or isinstance(op, InboundRecord) for op, _, logged in batch)
        try:
            if conn.raw.closed or conn.raw.broken:  # the server restarted: a new session
                self._conn = conn = connect(self.url)
            conn.raw.execute("BEGIN")
            if not durable:
                conn.raw.execute("SET LOCAL synchronous_commit = off")
            results = self._run_batch(conn, self.store, batch)
            conn.raw.execute("COMMIT")
            self._events_committed()
        except Exception as exc:  # server gone, disk full: every caller must hear it
            self._events_rolled_back()
            _rollback(conn)
            log.exception("journal.commit_failed", error=str(exc), batch=len(batch))
            results = [JournalError(f"journal write failed: {exc}")] * len(batch)
        else:
            if any_to_route([op for op, _, _ in batch]):  # the leader routes every channel's messages
                self._wake_dispatcher()
        self._answer(batch, results)

    def _run_one(self, conn, store, operation):
        conn.raw.execute("SAVEPOINT op")
        mark = len(events.collected())
        try:
            result = operation(conn, store)
        except (psycopg.Error, ValueError) as exc:
            # One failed operation (a constraint, a deadlock, a lock timeout) must not sink the
            # others of its group commit, inbound messages included; a lost connection does.
            if conn.raw.broken:
                raise
            conn.raw.execute("ROLLBACK TO SAVEPOINT op")
            self._events_rolled_back(mark)
            result = JournalError(str(exc))
        conn.raw.execute("RELEASE SAVEPOINT op")
        return result

    def _store_inbound_run(self, conn, store, records: list[InboundRecord]) -> list:
        """Two round trips for the run, whatever its size: the duplicate lock and lookup, then the
        messages and payloads rows as one statement, the events rows (engine/journal/events.py),
        the savepoint and the leader's wake-up, pipelined."""
        keys = sorted({r.dup_key for r in records if r.dup_key and r.dup_window > 0})
        if keys:
            with conn.raw.pipeline():
                self._lock_dup_keys(conn, keys)
                earlier = conn.raw.execute(
                    "SELECT dup_key, received_at, uid, ack_code, ack FROM messages WHERE dup_key = ANY(%s) ORDER BY id",
                    (keys,),
                )
            journaled = earlier.fetchall()
            mark_duplicates(records, lambda _keys: journaled)
        rows = [_rows(r, self.node) for r in records]
        try:
            with conn.raw.pipeline():  # one round trip on the common path
                conn.raw.execute("SAVEPOINT run")
                for start in range(0, len(rows), _INSERT_ROWS):
                    conn.raw.execute(*_insert_all(rows[start : start + _INSERT_ROWS]))
                events.write(conn, [event for _, _, event in rows])
                _end_run(conn, records)
            return records
        except psycopg.errors.IntegrityError:
            # Rare (a uid collision): redo row by row so that only the bad record fails.
            conn.raw.execute("ROLLBACK TO SAVEPOINT run")
            results = [self._run_one(conn, store, _insert_rows(*row)) or r for r, row in zip(records, rows)]
            _end_run(conn, records)
            return results

    @staticmethod
    def _lock_dup_keys(conn, keys: list[str]) -> None:
        """Duplicates are global: the same key arriving at two nodes at once is checked in turn
        (an advisory lock per key until commit; taken in one order, so no deadlock). The lookup
        that follows is another statement, so its snapshot sees what the lock waited for."""
        conn.raw.execute(
            "SELECT pg_advisory_xact_lock(%s, h) FROM (SELECT DISTINCT hashtext(k) AS h"
            " FROM unnest(%s::text[]) AS k ORDER BY 1) AS s",
            (_LOCK_SPACE_DUP, keys),
        )

    # -- routing ---------------------------------------------------------------------------
    def indexed(self):
        """Already: the messages rows are committed before the ACK."""
        return defer.succeed(None)

    def claim_received(self, limit: int, channels: frozenset | None = None):
        """The oldest messages still to route, with their raw bytes, on the dispatch leader only
        (`channels` is accepted for the API and ignored: the payload comes in the same query)."""
        if not self.is_leader:
            return defer.succeed([])
        return self.submit(
            lambda conn, store: conn.execute(
                "SELECT m.uid, m.channel, m.received_at, p.raw FROM messages m JOIN payloads p ON p.uid = m.uid"
                " WHERE m.state='received' ORDER BY m.id LIMIT ?",
                (limit,),
            ).fetchall(),
            logged=True,
        )

    # -- heartbeat: leadership, leases, retention ----------------------------------------------
    def _beat(self):
        d = threads.deferToThread(self._beat_in_thread)
        d.addErrback(lambda f: log.warning("journal.heartbeat_failed", error=f.getErrorMessage()))
        d.addBoth(self._beat_done)
        self._beating = d
        return d

    def _beat_done(self, result):
        self._beating = None
        return result

    def _beat_in_thread(self) -> None:
        if self._session.raw.closed or self._session.raw.broken:
            self._reconnect_session()
        now = time.time()
        conn = self._session
        conn.execute("UPDATE nodes SET heartbeat_at=? WHERE name=?", (now, self.node))
        # Rows the writer is finishing right now are locked by its transaction: skip them (they
        # need no lease any more) instead of waiting. Waiting deadlocked with the writer's
        # updates taken in another order: a 1 s stall, and sometimes its whole batch rolled back.
        conn.execute(
            "UPDATE deliveries SET lease_until=? WHERE id IN (SELECT id FROM deliveries"
            " WHERE node=? AND state='sending' ORDER BY id FOR UPDATE SKIP LOCKED)",
            (now + self.lease, self.node),
        )
        self._reap_expired(conn, now)
        self._adopt_follow_ups(conn, now)
        self._try_lead()

    def _reconnect_session(self) -> None:
        was_leader, self.is_leader = self.is_leader, False
        if was_leader:
            log.warning("journal.leadership_lost", node=self.node)
        self._session = connect(self.url)
        self._claim_node_name()

    def _try_lead(self) -> None:
        if self.is_leader:
            return
        if self._session.execute("SELECT pg_try_advisory_lock(?, ?)", _LOCK_DISPATCH).fetchone()[0]:
            self.is_leader = True
            log.info("journal.dispatch_leader", node=self.node)
            self.reactor.callFromThread(self.on_received)

    def _reap_expired(self, conn, now: float) -> None:
        """Sends of a node that stopped renewing its leases (crashed) go back to the queue."""
        with conn.raw.transaction():
            # Locked rows are being finished or claimed by a writer: skip them, never wait (see above).
            rows = conn.execute(
                "UPDATE deliveries SET state='pending', updated_at=? WHERE id IN (SELECT id FROM deliveries"
                " WHERE state='sending' AND lease_until<? ORDER BY id FOR UPDATE SKIP LOCKED)"
                " RETURNING id, message_uid, destination, node",
                (now, now),
            ).fetchall()
            events.write(
                conn,
                [
                    (
                        uid,
                        now,
                        "lease-expired",
                        destination,
                        f"delivery {delivery_id}: node {node} stopped renewing its lease; queued again",
                        self.node,
                    )
                    for delivery_id, uid, destination, node in rows
                ],
            )
        if rows:
            log.warning("delivery.leases_expired", count=len(rows), node=self.node)
            for destination in {r[2] for r in rows}:
                self.reactor.callFromThread(self.on_queued, destination)

    def _adopt_follow_ups(self, conn, now: float) -> None:
        """Follow-ups (on_success/on_failure steps) left due by a node silent for longer than a
        lease (crashed, or stopped for good) become this node's, which runs them: only the node
        that made them due resumes them at its start, and it may never come back. Applied at
        most once whoever runs them (the transaction applying one clears its mark)."""
        with conn.raw.transaction():
            rows = conn.execute(
                "UPDATE deliveries d SET node=? FROM (SELECT id, node FROM deliveries WHERE follow_up IS NOT NULL"
                " AND node IN (SELECT name FROM nodes WHERE heartbeat_at<? AND name<>?)"
                " ORDER BY id FOR UPDATE SKIP LOCKED) o WHERE d.id=o.id"
                " RETURNING d.id, d.message_uid, d.destination, d.follow_up, o.node",
                (self.node, now - self.lease, self.node),
            ).fetchall()
            events.write(
                conn,
                [
                    (
                        uid,
                        now,
                        "follow-up-adopted",
                        destination,
                        f"delivery {delivery_id}: its {follow_up_kind(mark)} steps, left due by node {node}"
                        f" (silent for over {self.lease:g} s), run by this node",
                        self.node,
                    )
                    for delivery_id, uid, destination, mark, node in rows
                ],
            )
        if rows:
            log.warning("routing.follow_ups_adopted", count=len(rows), node=self.node)
            self.reactor.callFromThread(self.on_follow_ups_adopted)

    def purge_before(self, before: float) -> defer.Deferred:
        """Retention, run by the dispatch leader only (one purger for the cluster)."""
        if not self.is_leader:
            return defer.succeed(0)
        return threads.deferToThread(self.purge, before)

    def purge(self, before: float) -> int:
        """Delete messages received before `before` whose work is finished, with their payloads,
        events and deliveries, in short transactions of PURGE_BATCH messages."""
        total = 0
        with self._pool.connection() as raw:
            while True:
                with raw.transaction():
                    raw.execute("SET LOCAL synchronous_commit = off")
                    uids = [r[0] for r in raw.execute(_PURGE_SELECT, (before, PURGE_BATCH)).fetchall()]
                    stats.forget_messages(PgConnection(raw), uids)  # counters stay, facts go
                    for table, column in (
                        ("events", "message_uid"),
                        ("deliveries", "message_uid"),
                        ("search_keys", "message_uid"),
                        ("payloads", "uid"),
                        ("messages", "uid"),
                    ):
                        raw.execute(f"DELETE FROM {table} WHERE {column} = ANY(%s)", (uids,))
                total += len(uids)
                if len(uids) < PURGE_BATCH:
                    break
        return total

    # -- notifications ---------------------------------------------------------------------
    def _start_listener(self) -> None:
        listen = psycopg.connect(self.url, autocommit=True)
        listen.execute(f"LISTEN {_NOTIFY_RECEIVED}")
        listen.execute(f"LISTEN {_NOTIFY_QUEUED}")
        self._listening = True
        self._listener = NamedThread(target=self._listen, args=(listen,), name="journal-listen", daemon=True)
        self._listener.start()

    def _listen(self, listen) -> None:
        try:
            while self._listening:
                for note in listen.notifies(timeout=0.5):
                    if note.channel == _NOTIFY_RECEIVED:
                        if self.is_leader:
                            self.reactor.callFromThread(self.on_received)
                    else:
                        self.reactor.callFromThread(self.on_queued, note.payload)
        except psycopg.Error as exc:
            log.warning("journal.listen_failed", error=str(exc))  # polling still covers it
        finally:
            listen.close()

    # -- reads -----------------------------------------------------------------------------
    def _read(self, sql: str, args=()) -> list:
        with self._pool.connection() as raw:
            return PgConnection(raw).execute(sql, args).fetchall()

    def queue_depths(self, destinations=None) -> list[tuple]:
        """Per destination and waiting state: count and oldest (for the queue gauges)."""
        from engine.journal.deliveries import queue_depths

        return queue_depths(self._read, destinations)

    def events_after(self, last_id: int, limit: int = 500, channel=None, msg_type=None) -> list[JournalEvent]:
        from engine.journal.sqlite import events_after

        return events_after(self._read, last_id, limit, channel, msg_type)

    def load_message(self, uid: str) -> StoredMessage | None:
        return load_message(self._read, uid)

    def size_bytes(self) -> int:
        return self._read("SELECT pg_database_size(current_database())")[0][0]

    def unindexed(self) -> tuple[int, float]:
        return 0, 0.0  # the messages rows commit before the ACK


_PURGE_SELECT = """SELECT m.uid FROM messages m WHERE m.received_at < %s AND m.state <> 'received'
    AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message_uid = m.uid AND d.state IN ('pending', 'sending', 'held'))
    ORDER BY m.received_at LIMIT %s FOR UPDATE SKIP LOCKED"""


def load_message(read, uid: str) -> StoredMessage | None:
    rows = read(
        "SELECT m.uid, m.channel, m.received_at, m.state, m.msg_type, m.control_id, p.raw, m.ack_code,"
        " m.reason FROM messages m JOIN payloads p ON p.uid = m.uid WHERE m.uid = ?",
        (uid,),
    )
    if not rows:
        return None
    uid, channel, at, state, mtype, ctrl, raw, ack_code, reason = rows[0]
    return StoredMessage(uid, channel, at, state, mtype, ctrl, bytes(raw), ack_code or "", reason or "")


def _rows(r: InboundRecord, node: str) -> tuple[tuple, tuple, tuple]:
    """The messages, payloads and events rows of one inbound record."""
    dup_key = r.dup_key if r.state != DUPLICATE else None
    message = (
        r.uid,
        r.received_at,
        r.channel,
        r.state,
        r.sender,
        r.facility,
        r.receiver,
        r.receiver_facility,
        r.control_id,
        r.msg_type,
        r.version,
        r.profile,
        r.patient_ids,
        r.charset,
        len(r.raw),
        dup_key,
        r.duplicate_of,
        r.ack_code,
        r.ack,
        r.reason,
        node,
    )
    detail = f"duplicate of {r.duplicate_of}" if r.duplicate_of else r.reason
    return message, (r.uid, r.raw), (r.uid, r.received_at, r.state, r.channel, detail, node)


_INSERT_ROWS = 500  # records per statement: 29 parameters each, within PostgreSQL's 65535


def _insert_all(rows: list[tuple[tuple, tuple, tuple]]) -> tuple[str, list]:
    """One statement inserting the messages and payloads rows of these records (their events
    rows go through engine/journal/events.py)."""

    def values(width: int) -> str:
        return ",".join(["(" + ",".join(["%s"] * width) + ")"] * len(rows))

    into_messages, into_payloads = (sql.split(" VALUES ")[0] for sql in (_INSERT_MESSAGE, _INSERT_PAYLOAD))
    sql = f"WITH m AS ({into_messages} VALUES {values(21)}) {into_payloads} VALUES {values(2)}"
    params = [v for m, _, _ in rows for v in m] + [v for _, p, _ in rows for v in p]
    return sql, params


def _end_run(conn, records: list[InboundRecord]) -> None:
    """Close a run's savepoint; wake the dispatch leader when something is to be routed."""
    conn.raw.execute("RELEASE SAVEPOINT run")
    if any(r.state == RECEIVED for r in records):
        conn.raw.execute(f"NOTIFY {_NOTIFY_RECEIVED}")


def _insert_rows(message: tuple, payload: tuple, event: tuple):
    def insert(conn, store) -> None:
        conn.raw.execute(_INSERT_MESSAGE, message)
        conn.raw.execute(_INSERT_PAYLOAD, payload)
        events.write(conn, [event])

    return insert


def _rollback(conn) -> None:
    try:
        if not conn.raw.closed:
            conn.raw.execute("ROLLBACK")
    except psycopg.Error:
        pass
