"""FIFO per key inside one claim: a delivery never joins a batch past a waiting one of its key."""

from __future__ import annotations

import time

from engine.journal import schema
from engine.journal.sqlite import connect
from engine.routing import queue
from engine.routing.plan import NewDelivery


def _queue(conn, uid: str, key: str, not_before: float) -> None:
    queue._queue(conn, uid, NewDelivery(route="r", step="s", destination="d", fifo_key=key,
                                        not_before=not_before, payload=b"x"), "n", time.time())


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
