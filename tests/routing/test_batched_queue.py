"""The batched queue writes (a few statements per batch instead of several per message) keep the
per-message semantics: FIFO per key in claims, follow-ups once per step, plans in order."""

from __future__ import annotations

import time

from engine.journal import schema
from engine.journal.sqlite import connect
from engine.journal import deliveries as queue
from engine.routing.plan import NewDelivery, Plan


def _journal(tmp_path):
    conn = connect(tmp_path / "j.sqlite")
    schema.upgrade(conn)
    return conn


def _message(conn, uid: str, state: str = "received") -> None:
    conn.execute(
        "INSERT INTO messages (uid, received_at, channel, state, size, segment, offset, crc) VALUES (?,?,?,?,0,0,0,0)",
        (uid, time.time(), "in", state),
    )


def _new(destination="d", key="", step="s", **kw) -> NewDelivery:
    return NewDelivery(route="r", step=step, destination=destination, fifo_key=key, not_before=0, payload=b"x", **kw)


def _deliveries(conn) -> list[tuple]:
    return conn.execute("SELECT message_uid, destination, action, state FROM deliveries ORDER BY id").fetchall()


def test_a_key_with_an_older_delivery_in_flight_is_not_claimed(tmp_path):
    conn = _journal(tmp_path)
    for uid, key in (("a1", "A"), ("a2", "A"), ("b1", "B")):
        queue.enqueue(conn, uid, _new(key=key), "n", time.time())
    conn.execute("UPDATE deliveries SET state='sending', node='other' WHERE message_uid='a1'")
    claimed = [d.message_uid for d in queue.claim_batch(conn, "d", time.time(), "n")]
    assert claimed == ["b1"]  # a2 waits until a1 (another node's send) is finished


def test_follow_ups_are_due_once_with_the_last_delivery_of_a_step(tmp_path):
    conn = _journal(tmp_path)
    queue.enqueue(conn, "m1", _new("d1"), "n", time.time())
    queue.enqueue(conn, "m1", _new("d2"), "n", time.time())
    queue.enqueue(conn, "m2", _new("d1"), "n", time.time())
    queue.enqueue(conn, "m2", _new("d2"), "n", time.time())
    claimed = queue.claim_batch(conn, "d1", time.time(), "n") + queue.claim_batch(conn, "d2", time.time(), "n")
    by_uid = {(d.message_uid, d.destination): d for d in claimed}
    results = [(by_uid["m1", "d1"], "AA"), (by_uid["m1", "d2"], "AA"), (by_uid["m2", "d1"], "AA")]
    follows = queue.finish_all(conn, results, "done", "n", time.time())
    assert follows == [None, "on_success", None]  # m2 still has d2 in flight
    sent = conn.execute("SELECT message_uid, channel FROM events WHERE state='sent' ORDER BY id").fetchall()
    assert sent == [("m1", "d1"), ("m1", "d2"), ("m2", "d1")]


def test_plans_of_one_batch_apply_in_order_and_only_from_received(tmp_path):
    conn = _journal(tmp_path)
    for uid in ("init", "other", "rplc"):
        _message(conn, uid)
    _message(conn, "done-already", state="routed")
    plans = [
        Plan("init", deliveries=[_new(doc_id="DOC", action="initial")]),
        Plan("other", deliveries=[_new("d2")]),
        Plan("done-already", deliveries=[_new()]),
        Plan("rplc", deliveries=[_new(doc_id="DOC", action="replace", replaced_id="DOC")]),
        Plan("unrouted-msg", state=None, deliveries=[_new("d3")]),
    ]  # a follow-up: no state change
    touched = queue.apply_plans(conn, plans, "n")
    assert touched == ["d", "d2", "d", "d3"]  # one entry per delivery queued, in plan order
    assert _deliveries(conn) == [
        ("init", "d", "initial", "cancelled"),
        ("other", "d2", "", "pending"),
        ("rplc", "d", "initial", "pending"),
        ("unrouted-msg", "d3", "", "pending"),
    ]
    states = dict(conn.execute("SELECT uid, state FROM messages").fetchall())
    assert states == {"init": "routed", "other": "routed", "rplc": "routed", "done-already": "routed"}
    queued = conn.execute("SELECT message_uid, detail FROM events WHERE state='queued' ORDER BY id").fetchall()
    ids = dict(conn.execute("SELECT message_uid, id FROM deliveries").fetchall())
    assert [(uid, detail.startswith(f"delivery {ids[uid]} (")) for uid, detail in queued] == [
        ("init", True),
        ("other", True),
        ("rplc", True),
        ("unrouted-msg", True),
    ]


def test_due_follow_ups_are_marked_with_the_finish_only_where_the_step_has_some(tmp_path):
    conn = _journal(tmp_path)
    for uid, step in (("m1", "s"), ("m2", "quiet"), ("m3", "s")):
        queue.enqueue(conn, uid, _new("d1", key=uid, step=step), "n", time.time())
    claimed = {d.message_uid: d for d in queue.claim_batch(conn, "d1", time.time(), "n")}
    with_steps = {("r", "s", "on_success"), ("r", "s", "on_failure")}
    done = [(claimed["m1"], "AA"), (claimed["m2"], "AA")]
    # m2's step has no follow-up: its siblings are not even looked for (one query less per batch)
    assert queue.finish_all(conn, done, "done", "n", time.time(), follow_ups=with_steps) == ["on_success", None]
    refused = ("XDSRegistryError", "the registry refused the document", False)  # the DMP's code
    queue.finish_all(
        conn, [(claimed["m3"], "XDSRegistryError: ...", refused)], "dead", "n", time.time(), follow_ups=with_steps
    )
    pending = [(d.message_uid, kind, state, error) for d, kind, state, _, error in queue.pending_follow_ups(conn, "n")]
    # m2's step has none; the failure's code, label and origin are kept with its mark
    assert pending == [("m1", "on_success", "done", None), ("m3", "on_failure", "dead", refused)]
    assert queue.pending_follow_ups(conn, "another node") == []
    queue.follow_up_done(conn, claimed["m1"].id)
    assert [d.message_uid for d, *_ in queue.pending_follow_ups(conn, "n")] == ["m3"]


def test_a_follow_up_plan_is_applied_only_while_it_is_due(tmp_path):
    from engine.routing.dispatcher import _apply_follow_up

    conn = _journal(tmp_path)
    queue.enqueue(conn, "m1", _new("d1"), "n", time.time())
    (claimed,) = queue.claim_batch(conn, "d1", time.time(), "n")
    queue.finish_all(conn, [(claimed, "AA")], "done", "n", time.time(), follow_ups={("r", "s", "on_success")})
    plan = Plan("m1", state=None, deliveries=[_new("after")])
    assert _apply_follow_up(None, conn, plan, claimed.id, "n", set(), time.time(), []) == ["after"]
    assert _apply_follow_up(None, conn, plan, claimed.id, "n", set(), time.time(), []) == []  # run twice: once
    assert [row[1] for row in _deliveries(conn)] == ["d1", "after"]


def test_a_resumed_failure_reports_the_destinations_code(tmp_path):
    """After a crash between a failed delivery's finish and its on_failure steps, the failure
    ZAM still carries the destination's code (it used to say DELIVERY_FAILED with the text)."""
    from engine.connectors.base import Action
    from engine.routing.dispatcher import _resumed_outcome

    conn = _journal(tmp_path)
    queue.enqueue(conn, "m1", _new("d1"), "n", time.time())
    (claimed,) = queue.claim_batch(conn, "d1", time.time(), "n")
    error = ("XDSDocumentUniqueIdError", "the document's id is already used", False)
    queue.finish(
        conn,
        claimed,
        "dead",
        "XDSDocumentUniqueIdError: ...",
        "n",
        time.time(),
        None,
        {("r", "s", "on_failure")},
        error,
    )
    [(_, kind, state, last_error, kept)] = queue.pending_follow_ups(conn, "n")
    resumed = _resumed_outcome(state, last_error, kept)
    assert (kind, resumed.action, resumed.error()) == ("on_failure", Action.DEAD, error)
    # A mark written before failures were kept: the delivery's state and last error, as before.
    old = _resumed_outcome("dead", "AE from destination", None)
    assert old.error() == ("DELIVERY_FAILED", "AE from destination", True)
