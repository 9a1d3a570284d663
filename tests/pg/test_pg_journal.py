"""The PostgreSQL journal in the engine's process: intake, routing and delivery on the shared
journal, global duplicates, exclusive claims with FIFO per key, leases, leadership, retention."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest_twisted
from twisted.internet import defer, reactor

from engine.journal.dialect import POSTGRES
from engine.journal.postgres import PgConnection, PostgresJournal
from engine.journal.reader import PgJournalReader
from engine.journal import deliveries as queue
from engine.routing.plan import NewDelivery
from tests.routing.peers import RecordingPeer, until
from tests.support import client_for, exchange, inbound, sample_adt, write_config

FAST_RETRY = {"initial": 0.05, "maximum": 0.2, "jitter": 0.0}


def _dest(port: int) -> dict:
    return {"type": "mllp-out", "host": "127.0.0.1", "port": port, "ack_timeout": 2, "retry": FAST_RETRY}


ROUTES = [{"name": "adt", "match": {"channel": "in"}, "steps": [{"deliver": {"to": "dest", "key": "PID-3.1"}}]}]


async def _node(tmp_path, pg_url: str, name: str, dest_port: int, lease: float = 15.0, routes=ROUTES, more=None):
    from engine.config.load import load_config
    from engine.service import Engine

    cfg = write_config(
        tmp_path / name,
        {"in": inbound(duplicate_window="1d"), "dest": _dest(dest_port), **(more or {})},
        routes,
        engine={"journal": pg_url, "node": name, "lease_seconds": lease},
    )
    engine = Engine(load_config(cfg), tmp_path / f"{name}-data", reactor, with_metrics=False)
    await engine.startService()
    return engine


def _adt(ctrl: str, patient: str) -> bytes:
    return sample_adt(ctrl).replace("IPP001", patient).encode()


def _events(pg_url: str) -> list:
    return PgJournalReader(pg_url).events_after(0, limit=100000)


@pytest_twisted.ensureDeferred
async def test_one_node_journals_routes_and_names_itself(tmp_path, pg_url):
    peer = RecordingPeer()
    engine = await _node(tmp_path, pg_url, "n1", await peer.listen())
    client = await client_for(engine, "in")
    try:
        for i in range(6):
            assert (await exchange(client, _adt(f"M-{i}", f"P{i % 2}"))).code == "AA"
        again = await exchange(client, _adt("M-0", "P0"))
        assert again.code == "AA"  # the original's answer, once more
        await until(lambda: len(peer.received) == 6, what="six deliveries")
        assert peer.control_ids() == [f"M-{i}" for i in range(6)]
        events = _events(pg_url)
        assert {e.node for e in events} == {"n1"}
        assert sum(e.state == "duplicate" for e in events) == 1
        stored = PgJournalReader(pg_url).load_message(events[0].message_uid)
        assert stored.raw == _adt("M-0", "P0") and stored.control_id == "M-0"
    finally:
        client.close()
        await engine.stopService()
        await peer.close()


@pytest_twisted.ensureDeferred
async def test_same_message_at_two_nodes_at_once_is_processed_once(tmp_path, pg_url):
    peer = RecordingPeer()
    port = await peer.listen()
    n1, n2 = await _node(tmp_path, pg_url, "n1", port), await _node(tmp_path, pg_url, "n2", port)
    c1, c2 = await client_for(n1, "in"), await client_for(n2, "in")
    try:
        for i in range(20):  # sent together, so both nodes check the key in the same instant
            a1, a2 = await defer.gatherResults(
                [defer.ensureDeferred(exchange(c, _adt(f"D-{i}", "P1"))) for c in (c1, c2)]
            )
            assert a1.code == a2.code == "AA"
        await until(lambda: len(peer.received) >= 20, what="deliveries")
        await _settle(0.5)
        assert sorted(peer.control_ids()) == sorted(f"D-{i}" for i in range(20))
        states = [e.state for e in _events(pg_url) if e.state in ("received", "duplicate")]
        assert states.count("received") == 20 and states.count("duplicate") == 20
    finally:
        for c in (c1, c2):
            c.close()
        for e in (n1, n2):
            await e.stopService()
        await peer.close()


@pytest_twisted.ensureDeferred
async def test_dispatch_leadership_moves_when_the_leader_stops(tmp_path, pg_url):
    peer = RecordingPeer()
    port = await peer.listen()
    n1 = await _node(tmp_path, pg_url, "n1", port)
    n2 = await _node(tmp_path, pg_url, "n2", port)
    try:
        assert n1.journal.is_leader and not n2.journal.is_leader
        c2 = await client_for(n2, "in")
        assert (await exchange(c2, _adt("L-1", "P1"))).code == "AA"  # n2 receives, n1 plans
        await until(lambda: peer.control_ids() == ["L-1"], what="routed by the leader")
        await n1.stopService()
        await until(lambda: n2.journal.is_leader, timeout=5, what="n2 takes the lead")
        assert (await exchange(c2, _adt("L-2", "P1"))).code == "AA"
        await until(lambda: peer.control_ids() == ["L-1", "L-2"], what="routed by the new leader")
        c2.close()
    finally:
        if n1.running:
            await n1.stopService()
        await n2.stopService()
        await peer.close()


@pytest_twisted.ensureDeferred
async def test_sends_of_a_node_that_stopped_renewing_its_lease_are_taken_over(tmp_path, pg_url):
    with psycopg.connect(pg_url, autocommit=True) as raw:
        conn = PgConnection(raw)
        _message(conn, "m-dead", b"MSH|^~\\&|A|B|C|D|1||ADT^A01|ORPHAN|P|2.5\rPID|1||P9\r", state="routed")
        queue.enqueue(
            conn,
            "m-dead",
            NewDelivery(route="adt", step="deliver", destination="dest", fifo_key="P9", not_before=0, payload=None),
            "ghost",
            time.time(),
        )
        # In flight on a node that is gone: its lease runs out two seconds from now.
        conn.execute("UPDATE deliveries SET state='sending', node='ghost', lease_until=?", (time.time() + 2,))
    peer = RecordingPeer()
    engine = await _node(tmp_path, pg_url, "n1", await peer.listen())
    try:
        await until(lambda: peer.control_ids() == ["ORPHAN"], timeout=10, what="orphan sent again")
        expired = [e for e in _events(pg_url) if e.state == "lease-expired"]
        assert expired and "node ghost stopped renewing" in expired[0].detail and expired[0].node == "n1"
    finally:
        await engine.stopService()
        await peer.close()


FOLLOWED_ROUTES = [
    {
        "name": "adt",
        "match": {"channel": "in"},
        "steps": [{"label": "first", "deliver": {"to": "dest"}, "on_success": [{"deliver": {"to": "after"}}]}],
    }
]


@pytest_twisted.ensureDeferred
async def test_follow_ups_left_due_by_a_node_that_never_returns_are_run_by_another(tmp_path, pg_url):
    # Node "ghost" sent the message to dest, made its on_success steps due, and crashed before it
    # ran them; it never comes back (its last heartbeat is older than a lease). Before, only ghost
    # itself would have resumed them at its next start: the second destination never got it.
    with psycopg.connect(pg_url, autocommit=True) as raw:
        conn = PgConnection(raw)
        _message(conn, "m-left", b"MSH|^~\\&|A|B|C|D|1||ADT^A01|LEFT|P|2.5\rPID|1||P9\r", state="routed")
        first = NewDelivery(route="adt", step="first", destination="dest", fifo_key="P9", not_before=0, payload=None)
        queue.enqueue(conn, "m-left", first, "ghost", time.time())
        conn.execute("UPDATE deliveries SET state='done', node='ghost', follow_up='on_success'")
        conn.execute(
            "INSERT INTO nodes (name, host, pid, started_at, heartbeat_at) VALUES ('ghost', 'h', 1, ?, ?)",
            (time.time() - 120, time.time() - 60),
        )
    dest, after = RecordingPeer(), RecordingPeer()
    more = {"after": _dest(await after.listen())}
    engine = await _node(tmp_path, pg_url, "n1", await dest.listen(), routes=FOLLOWED_ROUTES, more=more)
    try:
        await until(lambda: after.control_ids() == ["LEFT"], timeout=10, what="the follow-up run by n1")
        adopted = [e for e in _events(pg_url) if e.state == "follow-up-adopted"]
        assert len(adopted) == 1 and "left due by node ghost" in adopted[0].detail and adopted[0].node == "n1"
        with psycopg.connect(pg_url, autocommit=True) as raw:
            row = raw.execute("SELECT node, follow_up FROM deliveries WHERE destination='dest'").fetchone()
        assert row == ("n1", None)  # adopted, then applied once: nothing left due
        assert dest.control_ids() == []  # the send itself was done: not repeated
    finally:
        await engine.stopService()
        await dest.close()
        await after.close()


def _message(conn, uid: str, raw: bytes, received_at: float = 0.0, state: str = "received") -> None:
    conn.execute(
        "INSERT INTO messages (uid, received_at, channel, state, size) VALUES (?,?,?,?,?)",
        (uid, received_at or time.time(), "in", state, len(raw)),
    )
    conn.execute("INSERT INTO payloads (uid, raw) VALUES (?,?)", (uid, raw))


def test_concurrent_claims_are_exclusive_and_keep_fifo_per_key(pg_url):
    with psycopg.connect(pg_url, autocommit=True) as raw:
        conn = PgConnection(raw)
        for i in range(300):
            _message(conn, f"m{i}", b"x", state="routed")
            queue.enqueue(
                conn,
                f"m{i}",
                NewDelivery(route="r", step="s", destination="dest", fifo_key=f"K{i % 7}", not_before=0, payload=None),
                "n0",
                time.time(),
            )
    sent: list[tuple[str, int]] = []
    lock = threading.Lock()

    def worker(node: str) -> None:
        with psycopg.connect(pg_url, autocommit=True) as raw:
            conn = PgConnection(raw)
            while True:
                conn.execute("BEGIN")
                batch = queue.claim_batch(conn, "dest", time.time(), node, limit=8, dialect=POSTGRES)
                conn.execute("COMMIT")
                if not batch:
                    with lock:
                        if len(sent) == 300:
                            return
                    continue
                with lock:
                    sent.extend((d.fifo_key, d.id) for d in batch)
                conn.execute("BEGIN")
                for d in batch:
                    queue.finish(conn, d, "done", "AA", node, time.time())
                conn.execute("COMMIT")

    threads = [threading.Thread(target=worker, args=(f"n{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    ids = [i for _, i in sent]
    assert len(ids) == 300 and len(set(ids)) == 300  # every delivery claimed exactly once
    for key in {k for k, _ in sent}:
        per_key = [i for k, i in sent if k == key]
        assert per_key == sorted(per_key), f"key {key} sent out of order"


def test_retention_purges_only_finished_messages_in_bounded_batches(pg_url, monkeypatch):
    import engine.journal.postgres as pg

    old, now = time.time() - 40 * 86400, time.time()
    with psycopg.connect(pg_url, autocommit=True) as raw:
        conn = PgConnection(raw)
        for i in range(12):
            _message(conn, f"old{i}", b"x", received_at=old, state="routed")
            queue.enqueue(
                conn,
                f"old{i}",
                NewDelivery(route="r", step="s", destination="d", fifo_key="", not_before=0, payload=None),
                "n",
                old,
            )
        conn.execute("UPDATE deliveries SET state='done'")
        _message(conn, "old-pending", b"x", received_at=old, state="routed")
        queue.enqueue(
            conn,
            "old-pending",
            NewDelivery(route="r", step="s", destination="d", fifo_key="", not_before=0, payload=None),
            "n",
            old,
        )
        _message(conn, "old-unrouted", b"x", received_at=old, state="received")
        _message(conn, "recent", b"x", received_at=now, state="routed")
    monkeypatch.setattr(pg, "PURGE_BATCH", 5)  # 12 purgeable rows: three transactions
    journal = PostgresJournal(pg_url, reactor, node="n1")
    from psycopg_pool import ConnectionPool

    journal._pool = ConnectionPool(pg_url, min_size=1, max_size=1, kwargs={"autocommit": True}, open=True)
    try:
        assert journal.purge(now - 30 * 86400) == 12
    finally:
        journal._pool.close()
    with psycopg.connect(pg_url, autocommit=True) as raw:
        left = {r[0] for r in raw.execute("SELECT uid FROM messages")}
        assert left == {"old-pending", "old-unrouted", "recent"}
        assert raw.execute("SELECT count(*) FROM payloads").fetchone()[0] == 3
        assert (
            raw.execute(
                "SELECT count(*) FROM events WHERE message_uid LIKE 'old%%' AND message_uid NOT IN ('old-pending')"
            ).fetchone()[0]
            == 0
        )


async def _settle(seconds: float) -> None:
    d = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    await d


@pytest_twisted.ensureDeferred
async def test_operator_commands_work_on_the_shared_journal(tmp_path, pg_url):
    from tests.routing.test_crash_and_operators import pfi

    peer = RecordingPeer()
    deferred = [
        {
            "name": "adt",
            "match": {"channel": "in"},
            "steps": [{"deliver": {"to": "dest", "key": "PID-3.1", "delay": "1h"}}],
        }
    ]
    engine = await _node(tmp_path, pg_url, "n1", await peer.listen(), routes=deferred)
    client = await client_for(engine, "in")
    try:
        for ctrl in ("Q-1", "Q-2"):
            assert (await exchange(client, _adt(ctrl, ctrl))).code == "AA"
        common = ("--config", str(tmp_path / "n1"), "--journal", pg_url)
        await until(lambda: " 2 " in pfi("queue", *common).stdout, timeout=10, what="two deferred sends")
        tail = pfi("tail", *common).stdout
        assert "@n1" in tail and "ctrl=Q-1" in tail
        uid = next(line.split()[1] for line in tail.splitlines() if "ctrl=Q-1" in line)
        assert pfi("cancel", uid, *common).returncode == 0
        assert " 1 " in pfi("queue", *common).stdout
        replayed = pfi("replay", uid, *common)
        assert replayed.returncode == 0 and "1 message(s) re-queued" in replayed.stdout
        await until(lambda: " 2 " in pfi("queue", *common).stdout, timeout=10, what="replayed and queued again")
        assert peer.received == []  # deferred by an hour: nothing left yet
    finally:
        client.close()
        await engine.stopService()
        await peer.close()


@pytest_twisted.ensureDeferred
async def test_a_lost_database_session_gives_ar_then_the_node_reconnects(tmp_path, pg_url):
    peer = RecordingPeer()
    engine = await _node(tmp_path, pg_url, "n1", await peer.listen())
    client = await client_for(engine, "in")
    try:
        assert (await exchange(client, _adt("S-1", "P1"))).code == "AA"
        old_pid = engine.journal._conn.raw.info.backend_pid
        with psycopg.connect(pg_url, autocommit=True) as admin:  # the server ends the writer's session
            admin.execute("SELECT pg_terminate_backend(%s)", (old_pid,))
        # The first batch on the dead session fails: every caller in it hears it (an inbound message
        # gets AR, "not stored, send it again later"; the dispatcher retries its poll). The next reconnects.
        codes = [(await exchange(client, _adt("S-2", "P1"))).code]
        if codes[0] == "AR":
            codes.append((await exchange(client, _adt("S-2", "P1"))).code)
        assert codes[-1] == "AA" and set(codes) <= {"AR", "AA"}
        assert engine.journal._conn.raw.info.backend_pid != old_pid
        await until(lambda: peer.control_ids() == ["S-1", "S-2"], what="both delivered once")
    finally:
        client.close()
        await engine.stopService()
        await peer.close()


def test_tail_prints_an_event_committed_after_a_higher_id_once(pg_url):
    def event(conn, event_id: int) -> None:
        conn.execute(
            "INSERT INTO events (id, message_uid, at, state, channel, detail, node) VALUES"
            " (?, 'm', 1, 'queued', 'c', '', 'n1')",
            (event_id,),
        )

    with psycopg.connect(pg_url, autocommit=True) as raw:
        conn = PgConnection(raw)
        for i in (1, 2, 4):  # id 3 taken by a node whose transaction is still open
            event(conn, i)
        reader = PgJournalReader(pg_url)
        assert [e.id for e in reader.events_after(0)] == [1, 2, 4]
        assert reader.events_after(4) == []
        event(conn, 3)  # that node commits now
        assert [e.id for e in reader.events_after(4)] == [3]
        event(conn, 5)
        assert [e.id for e in reader.events_after(4)] == [5]  # 3 is not printed twice
