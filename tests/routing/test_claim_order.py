"""FIFO per key inside one claim: a delivery never joins a batch past a waiting one of its key."""

from __future__ import annotations

import time

from engine.journal import schema
from engine.journal.sqlite import connect
from engine.journal import deliveries as queue
from engine.routing.plan import NewDelivery


def _queue(conn, uid: str, key: str, not_before: float) -> None:
    queue.enqueue(
        conn,
        uid,
        NewDelivery(route="r", step="s", destination="d", fifo_key=key, not_before=not_before, payload=b"x"),
        "n",
        time.time(),
    )


def test_a_deferred_delivery_holds_the_later_ones_of_its_key(tmp_path):
    conn = connect(tmp_path / "j.sqlite")
    schema.upgrade(conn)
    now = time.time()
    _queue(conn, "a1", "A", now - 1)
    _queue(conn, "a2", "A", now + 300)  # deferred (e.g. a delay before the DMP)
    _queue(conn, "a3", "A", now - 1)
    _queue(conn, "b1", "B", now - 1)
    _queue(conn, "b2", "B", now - 1)
    claimed = [d.message_uid for d in queue.claim_batch(conn, "d", now, "n")]
    assert claimed == ["a1", "b1", "b2"]  # a3 waits for a2; B's two follow each other


def test_a_long_blocked_key_does_not_starve_the_others(tmp_path):
    conn = connect(tmp_path / "j.sqlite")
    schema.upgrade(conn)
    now = time.time()
    _queue(conn, "head", "K", now - 1)
    [head] = queue.claim_batch(conn, "d", now, "n")
    queue.finish(conn, head, "retry", "AE", "n", now, retry_at=now + 600)  # backing off
    for i in range(300):  # more than a claim's window, all behind the head
        _queue(conn, f"k{i}", "K", now - 1)
    _queue(conn, "other", "L", now - 1)
    assert [d.message_uid for d in queue.claim_batch(conn, "d", now, "n")] == ["other"]


def test_an_outcome_from_a_node_that_lost_the_send_is_not_recorded(tmp_path):
    conn = connect(tmp_path / "j.sqlite")
    schema.upgrade(conn)
    now = time.time()
    _queue(conn, "m", "K", now - 1)
    [mine] = queue.claim_batch(conn, "d", now, "slow-node")
    conn.execute("UPDATE deliveries SET state='pending'")  # its lease ran out: handed back...
    [theirs] = queue.claim_batch(conn, "d", now, "other-node")  # ...and taken by another node
    assert queue.finish_all(conn, [(mine, "AA")], "done", "slow-node", now) == [None]
    assert queue.finish(conn, mine, "retry", "AE", "slow-node", now, retry_at=now + 5) is None
    state, node = conn.execute("SELECT state, node FROM deliveries").fetchone()
    assert (state, node) == ("sending", "other-node")
    lost = conn.execute("SELECT count(*) FROM events WHERE state='lease-lost'").fetchone()[0]
    assert lost == 2
    assert queue.finish_all(conn, [(theirs, "AA")], "done", "other-node", now) == ["on_success"]
