"""The heartbeat never waits for rows the writer holds: renewing leases and taking back expired
sends skip rows locked by another transaction (waiting deadlocked with the writer's updates)."""

from __future__ import annotations

import time

import psycopg
from twisted.internet import reactor

from engine.journal.postgres import PgConnection, PostgresJournal, connect
from engine.journal import deliveries as queue
from engine.routing.plan import NewDelivery


def _sending(conn, uid: str, node: str, lease_until: float) -> int:
    queue.enqueue(
        conn,
        uid,
        NewDelivery(route="r", step="s", destination="d", fifo_key=uid, not_before=0, payload=b"x"),
        node,
        time.time(),
    )
    conn.execute(
        "UPDATE deliveries SET state='sending', node=?, lease_until=? WHERE message_uid=?", (node, lease_until, uid)
    )
    return conn.execute("SELECT id FROM deliveries WHERE message_uid=?", (uid,)).fetchone()[0]


def test_heartbeat_skips_rows_locked_by_the_writer(pg_url):
    soon = time.time() + 5
    with psycopg.connect(pg_url, autocommit=True) as raw:
        conn = PgConnection(raw)
        mine_locked, mine_free = _sending(conn, "m1", "n1", soon), _sending(conn, "m2", "n1", soon)
        ghost_locked, ghost_free = _sending(conn, "g1", "ghost", 1.0), _sending(conn, "g2", "ghost", 1.0)
    journal = PostgresJournal(pg_url, reactor, node="n1", lease=15.0)
    journal._session = connect(pg_url)
    journal._session.execute("SET lock_timeout = '5s'")  # the old code would wait, then fail here
    with psycopg.connect(pg_url) as writer:  # a writer transaction in progress, holding two rows
        writer.execute("UPDATE deliveries SET updated_at=0 WHERE id = ANY(%s)", ([mine_locked, ghost_locked],))
        journal._beat_in_thread()
        writer.rollback()
    with psycopg.connect(pg_url, autocommit=True) as raw:
        rows = dict(
            (i, (state, lease))
            for i, state, lease in raw.execute("SELECT id, state, lease_until FROM deliveries").fetchall()
        )
    journal._session.close()
    assert rows[mine_locked] == ("sending", soon)  # skipped: the writer is finishing it
    assert rows[mine_free][0] == "sending" and rows[mine_free][1] > soon  # renewed
    assert rows[ghost_locked][0] == "sending"  # skipped this beat, taken back at a later one
    assert rows[ghost_free][0] == "pending"  # the crashed node's send is queued again
