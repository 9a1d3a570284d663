"""FIFO per key inside one claim: a delivery never joins a batch past a waiting one of its key."""

from __future__ import annotations

import time

from engine.journal import schema
from engine.journal.dialect import SQLITE
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


def _with_finished(path, history: int, key_of, open_rows: int, open_key: str):
    """A journal whose destination d has `history` finished deliveries (keys from `key_of(i)`)
    and `open_rows` pending ones of `open_key`."""
    now = time.time()
    conn = connect(path)
    schema.upgrade(conn)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO deliveries (message_uid, route, step, destination, fifo_key, doc_id, action, state,"
        " created_at, not_before, next_attempt, updated_at, node) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        [(f"old{i}", "r", "s", "d", key_of(i), "", "initial", "done", now, 0, 0, now, "n") for i in range(history)],
    )
    for i in range(open_rows):
        _queue(conn, f"new{i}", open_key, now - 1)
    conn.execute("COMMIT")
    return conn


def _vm_steps(conn, work):
    """(what `work()` returns, the SQLite virtual-machine steps it took, by hundreds through the
    progress handler): a measure of the rows visited that no machine load changes."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0  # go on

    conn.set_progress_handler(count, 100)
    try:
        return work(), steps[0]
    finally:
        conn.set_progress_handler(None, 0)


def test_a_claim_does_not_read_the_finished_history_of_a_key(tmp_path):
    """A creator's ZAMs all share one key (its application) and stay in the table until
    retention: the FIFO check must reach only the key's open rows. It once scanned every row the
    key ever had, per candidate: ~1 s per claim at 100,000 finished ZAMs, holding the writer."""
    work = {}
    for history in (10, 5000):
        conn = _with_finished(tmp_path / f"h{history}.sqlite", history, lambda i: "RIS-Y", 64, "RIS-Y")
        claimed, work[history] = _vm_steps(conn, lambda: queue.claim_batch(conn, "d", time.time(), "n"))
        assert len(claimed) == 64
    # The same claim over 500 times the history: about the same work (it grew ~65 times).
    assert work[5000] < 2 * work[10], work


def test_the_queue_gauges_read_only_open_rows_of_the_configured_destinations(tmp_path):
    """Every 10 s the engine counts each destination's waiting and dead deliveries: given the
    destinations, the work does not grow with the finished ones (it read them all before)."""
    work = {}
    for history in (10, 5000):
        conn = _with_finished(tmp_path / f"g{history}.sqlite", history, lambda i: f"K{i}", 5, "K")

        def read(sql, args=()):
            return conn.execute(sql, args).fetchall()

        rows, work[history] = _vm_steps(conn, lambda: queue.queue_depths(read, ["d"]))
        assert [(d, state, n) for d, state, n, _ in rows] == [("d", "pending", 5)]
    assert work[5000] < 2 * work[10] + 2, work


def _operator_views(conn) -> tuple:
    """What `pfi queue` and `pfi held` show, and what a restart resets, on SQLite."""

    def read(sql, args=()):
        return conn.execute(sql, args).fetchall()

    conn.execute("BEGIN")
    reset = queue.reset_in_flight(conn, "n", SQLITE)
    conn.execute("ROLLBACK")
    summary = [
        (d, pending, sending, dead, held) for d, pending, _, _, sending, dead, held in queue.queue_summary(read, SQLITE)
    ]
    return reset, summary, [(d, uid) for _, d, uid, _ in queue.held_deliveries(read, SQLITE)]


def test_restart_and_queue_views_read_open_rows_not_the_history(tmp_path):
    """Once at start (in-flight sends back to the queue) and at every `pfi queue`: their work
    does not grow with the finished deliveries of the journal (each read them all before)."""
    work, views = {}, {}
    for history in (10, 5000):
        conn = _with_finished(tmp_path / f"v{history}.sqlite", history, lambda i: f"K{i}", 6, "K")
        _queue(conn, "other", "L", time.time())  # a second destination, with one held and one sending
        conn.execute("UPDATE deliveries SET destination='e', state='held' WHERE message_uid='other'")
        conn.execute("UPDATE deliveries SET state='sending', node='n' WHERE message_uid IN ('new0', 'new1')")
        views[history], work[history] = _vm_steps(conn, lambda: _operator_views(conn))
    assert views[10] == views[5000] == (2, [("d", 4, 2, 0, 0), ("e", 0, 0, 0, 1)], [("e", "other")])
    assert work[5000] < 2 * work[10] + 5, work


def _fifo_reference(rows: list[tuple], now: float, limit: int) -> list[int]:
    """What a claim must take, said plainly: in id order, the due pending deliveries whose key
    has no older one sending, held or not yet due, and no older due one left out; at most `limit`."""
    blocked: set[str] = set()
    taken: list[int] = []
    for delivery_id, key, state, next_attempt in sorted(rows):
        if state in (queue.SENDING, queue.HELD) or (state == queue.PENDING and next_attempt > now):
            blocked.add(key)
        elif state == queue.PENDING and len(taken) < limit and key not in blocked:
            taken.append(delivery_id)
        elif state == queue.PENDING:
            blocked.add(key)
    return taken


def test_a_claim_on_sqlite_takes_what_the_fifo_rule_says_on_random_queues(tmp_path):
    # SQLite's claim trusts its candidate query alone (no row is ever skipped by a lock): on
    # random queues of keys, states and due times it takes exactly what the rule takes.
    import random

    rng = random.Random(15)
    conn = connect(tmp_path / "j.sqlite")
    schema.upgrade(conn)
    states = [queue.PENDING] * 6 + [queue.SENDING, queue.HELD, queue.DONE, queue.DEAD, queue.CANCELLED]
    for case in range(150):
        conn.execute("DELETE FROM deliveries")
        now = time.time()
        for n in range(rng.randint(1, 40)):
            _queue(conn, f"m{case}-{n}", rng.choice("ABCDE"), now + rng.choice([-5, -1, 60]))
        for (delivery_id,) in conn.execute("SELECT id FROM deliveries").fetchall():
            conn.execute("UPDATE deliveries SET state=? WHERE id=?", (rng.choice(states), delivery_id))
        rows = conn.execute("SELECT id, fifo_key, state, next_attempt FROM deliveries").fetchall()
        limit = rng.choice([1, 3, 8, 64])
        expected = _fifo_reference(rows, now, limit)
        claimed = [d.id for d in queue.claim_batch(conn, "d", now, "n", limit, dialect=SQLITE)]
        assert claimed == expected, (case, rows, limit)
