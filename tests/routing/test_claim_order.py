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


def _claim_work(conn, now: float) -> tuple[int, int]:
    """(deliveries claimed, SQLite virtual machine steps the claim took, counted by hundreds
    through the progress handler: a measure of the rows visited that no machine load changes)."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0  # go on

    conn.set_progress_handler(count, 100)
    try:
        conn.execute("BEGIN")
        claimed = queue.claim_batch(conn, "d", now, "n")
        conn.execute("ROLLBACK")
    finally:
        conn.set_progress_handler(None, 0)
    return len(claimed), steps[0]


def test_a_claim_does_not_read_the_finished_history_of_a_key(tmp_path):
    """A creator's ZAMs all share one key (its application) and stay in the table until
    retention: the FIFO check must reach only the key's open rows. It once scanned every row the
    key ever had, per candidate: ~1 s per claim at 100,000 finished ZAMs, holding the writer."""
    now = time.time()
    work = {}
    for history in (10, 5000):
        conn = connect(tmp_path / f"h{history}.sqlite")
        schema.upgrade(conn)
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO deliveries (message_uid, route, step, destination, fifo_key, doc_id, action, state,"
            " created_at, not_before, next_attempt, updated_at, node) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [(f"old{i}", "r", "s", "d", "RIS-Y", "", "initial", "done", now, 0, 0, now, "n") for i in range(history)],
        )
        for i in range(64):
            _queue(conn, f"new{i}", "RIS-Y", now - 1)
        conn.execute("COMMIT")
        work[history] = _claim_work(conn, now)
    assert work[10][0] == work[5000][0] == 64
    # The same claim over 500 times the history: about the same work (it grew ~500 times).
    assert work[5000][1] < 2 * work[10][1], work


def test_the_queue_gauges_read_only_open_rows_of_the_configured_destinations(tmp_path):
    """Every 10 s the engine counts each destination's waiting and dead deliveries: given the
    destinations, the work does not grow with the finished ones (it read them all before)."""
    now = time.time()
    work = {}
    for history in (10, 5000):
        conn = connect(tmp_path / f"g{history}.sqlite")
        schema.upgrade(conn)
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO deliveries (message_uid, route, step, destination, fifo_key, doc_id, action, state,"
            " created_at, not_before, next_attempt, updated_at, node) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [(f"old{i}", "r", "s", "d", f"K{i}", "", "initial", "done", now, 0, 0, now, "n") for i in range(history)],
        )
        for i in range(5):
            _queue(conn, f"new{i}", "K", now - 1)
        conn.execute("COMMIT")
        steps = [0]
        conn.set_progress_handler(lambda: steps.__setitem__(0, steps[0] + 1), 100)

        def read(sql, args=()):
            return conn.execute(sql, args).fetchall()

        rows = queue.queue_depths(read, ["d"])
        conn.set_progress_handler(None, 0)
        assert [(d, state, n) for d, state, n, _ in rows] == [("d", "pending", 5)]
        work[history] = steps[0]
    assert work[5000] < 2 * work[10] + 2, work
