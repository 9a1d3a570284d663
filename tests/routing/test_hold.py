"""An operator holds a pending (deferred) send and releases it, by the real CLI on the running
engine's journal: a held delivery is never sent, keeps its patient's FIFO order, and the journal
names the operator on hold, release, cancel and replay."""

from __future__ import annotations

import subprocess
import sys

import pytest_twisted
from twisted.internet import reactor, task, threads

from engine.journal.reader import JournalReader
from tests.routing.peers import RecordingPeer, until
from tests.routing.test_delivery import _engine, out
from tests.routing.test_destination_pause import conn  # noqa: F401  (SQLite and PostgreSQL)
from tests.support import ROOT, client_for, exchange, inbound, sample_adt, sleep


def pfi(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def events(engine, state: str) -> list[str]:
    return [e.detail for e in JournalReader(engine.journal.data_dir).events_after(0, limit=1000) if e.state == state]


@pytest_twisted.ensureDeferred
async def test_a_held_deferred_send_waits_for_its_release_in_fifo_order(tmp_path):
    peer = RecordingPeer()
    port = await peer.listen()
    routes = [
        {
            "name": "r",
            "match": {"channel": "in"},
            "steps": [{"deliver": {"to": "dest", "delay": "60s", "key": "PID-3.1"}}],
        }
    ]
    clock = task.Clock()
    clock.advance(reactor.seconds())
    engine = await _engine(tmp_path, {"in": inbound(), "dest": out(port)}, routes, clock=clock)
    journal = ["--config", str(tmp_path / "cfg"), "--data", str(tmp_path / "data")]
    client = await client_for(engine, "in")
    try:
        for ctrl in ("H-1", "H-2"):  # same patient: H-2 must never overtake H-1
            assert (await exchange(client, sample_adt(ctrl).encode())).code == "AA"
        await until(lambda: len(events(engine, "queued")) == 2, what="both sends deferred")
        [first] = [
            e.message_uid
            for e in JournalReader(engine.journal.data_dir).events_after(0, limit=100)
            if e.control_id == "H-1" and e.state == "received"
        ]
        held = await threads.deferToThread(pfi, "hold", first, *journal, "--operator", "alice", "--reason", "check")
        assert held.returncode == 0, held.stdout + held.stderr
        queue = await threads.deferToThread(pfi, "queue", *journal)
        assert "HELD delivery" in queue.stdout and "by alice: check" in queue.stdout
        clock.advance(120)  # the deferral is over: H-1 is held, H-2 waits behind it
        engine.dispatcher.wake(["dest"])
        await sleep(0.5)
        assert peer.control_ids() == []
        released = await threads.deferToThread(pfi, "release", first, *journal, "--operator", "bob")
        assert released.returncode == 0, released.stdout + released.stderr
        for _ in range(40):
            clock.advance(1)
            if peer.control_ids() == ["H-1", "H-2"]:
                break
            await sleep(0.05)
        assert peer.control_ids() == ["H-1", "H-2"]
        assert any("held by alice: check" in d for d in events(engine, "held"))
        assert any("released by bob" in d for d in events(engine, "released"))
    finally:
        client.close()
        await engine.stopService()
        await peer.close()


def test_held_rows_block_their_key_on_both_journals(conn):
    import time

    from engine.journal import deliveries as queue
    from engine.routing.plan import NewDelivery

    now = time.time()
    for uid in ("m1", "m2"):
        queue.enqueue(
            conn,
            uid,
            NewDelivery(route="r", step="s", destination="d", fifo_key="k", not_before=0, payload=b"x"),
            "n1",
            now,
        )
    assert queue.hold(conn, "m1", "check", "n1", now, "alice") == 1
    assert queue.claim_batch(conn, "d", now, "n1") == []  # m2 waits behind the held m1
    assert queue.next_due(conn, "d") is None  # nothing to wake for
    assert queue.release_held(conn, "m1", "ok", "n1", now, "bob") == 1
    assert [d.message_uid for d in queue.claim_batch(conn, "d", now, "n1")] == ["m1", "m2"]
    details = [d for (d,) in conn.execute("SELECT detail FROM events ORDER BY id").fetchall()]
    assert any("held by alice: check" in d for d in details) and any("released by bob" in d for d in details)


def test_cancel_takes_held_rows_and_names_the_operator(conn):
    import time

    from engine.journal import deliveries as queue
    from engine.routing.plan import NewDelivery

    now = time.time()
    queue.enqueue(
        conn,
        "m1",
        NewDelivery(route="r", step="s", destination="d", fifo_key="k", not_before=0, payload=b"x"),
        "n1",
        now,
    )
    queue.hold(conn, "m1", "check", "n1", now, "alice")
    assert queue.cancel(conn, "m1", "withdrawn", "n1", now, "carol") == 1
    details = [d for (d,) in conn.execute("SELECT detail FROM events ORDER BY id").fetchall()]
    assert any("cancelled by carol: withdrawn" in d for d in details)


# -- identity holds and supersession (both journals) ------------------------------------------

INS_A = "279035121518989^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS"
INS_B_WITH_IPP = "180017512345660^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS~IPP77^^^CHU-X&1.2.3&ISO^PI"
NOT_QUALIFIED = "PFI:INS_NOT_QUALIFIED: identity not qualified (PID-32 is not VALI)"


def _journaled(conn, uid: str, patient_ids: str) -> None:
    """A message row as intake writes it (the backends' columns differ)."""
    import sqlite3

    if isinstance(conn, sqlite3.Connection):
        conn.execute(
            "INSERT INTO messages (uid, received_at, channel, state, patient_ids, size, segment, offset, crc)"
            " VALUES (?, 1, 'in', 'routed', ?, 1, 0, 0, 0)",
            (uid, patient_ids),
        )
    else:
        conn.execute(
            "INSERT INTO messages (uid, received_at, channel, state, patient_ids, size)"
            " VALUES (?, 1, 'in', 'routed', ?, 1)",
            (uid, patient_ids),
        )


def _new(**values):
    from engine.routing.plan import NewDelivery

    return NewDelivery(
        **{"route": "r", "step": "s", "destination": "dmp", "fifo_key": "k", "not_before": 0, "payload": b"x", **values}
    )


def _state(conn, uid: str) -> tuple:
    return tuple(
        conn.execute(
            "SELECT state, action, attempts, last_error FROM deliveries WHERE message_uid=?", (uid,)
        ).fetchone()
    )


def test_a_qualified_identity_releases_the_holds_of_its_patient_only(conn):
    import time

    from engine.journal import deliveries as queue

    now = time.time()
    for uid, ids in (("m1", INS_A), ("m2", INS_B_WITH_IPP)):
        _journaled(conn, uid, ids)
        queue.enqueue(conn, uid, _new(fifo_key=uid), "n1", now)
    for delivery in queue.claim_batch(conn, "dmp", now, "n1"):
        queue.hold_for_identity(conn, delivery, NOT_QUALIFIED, "n1", now)
    # Held at the gate, the DMP was never called: not an attempt (a replace may still supersede it).
    assert [_state(conn, u)[:3] for u in ("m1", "m2")] == [("held", "", 0)] * 2
    assert queue.release_identity_holds(conn, {"279035121518989", "900001"}, ["dmp"], "n1", now) == ["dmp"]
    assert (_state(conn, "m1")[0], _state(conn, "m2")[0]) == ("pending", "held")
    assert queue.release_identity_holds(conn, {"IPP77"}, ["dmp"], "n1", now) == ["dmp"]  # by its IPP
    assert _state(conn, "m2")[0] == "pending"
    released = [d for (d,) in conn.execute("SELECT detail FROM events WHERE state='released'").fetchall()]
    assert len(released) == 2 and all("identity was qualified" in d for d in released)


def test_an_operator_hold_on_a_document_is_not_released_by_an_identity_update(conn):
    import time

    from engine.journal import deliveries as queue

    now = time.time()
    _journaled(conn, "m1", INS_A)
    queue.enqueue(conn, "m1", _new(), "n1", now)
    queue.hold(conn, "m1", "wrong patient?", "n1", now, "alice")
    assert queue.release_identity_holds(conn, {"279035121518989"}, ["dmp"], "n1", now) == []
    assert _state(conn, "m1")[0] == "held"


def test_a_newer_version_supersedes_a_held_initial_and_keeps_an_operator_hold(conn):
    import time

    from engine.journal import deliveries as queue

    now = time.time()
    queue.enqueue(conn, "v1", _new(doc_id="D1", action="initial"), "n1", now)
    queue.hold(conn, "v1", "check the side", "n1", now, "alice")
    queue.enqueue(conn, "v2", _new(doc_id="D2", action="replace", replaced_id="D1"), "n1", now)
    assert _state(conn, "v1")[0] == "cancelled"
    # v1 never left: v2 is the first version the DMP gets, and the operator's hold stands on it.
    state, action, _, reason = _state(conn, "v2")
    assert (state, action) == ("held", "initial") and "check the side" in reason
    held = [d for (d,) in conn.execute("SELECT detail FROM events WHERE message_uid='v2' AND state='held'")]
    assert len(held) == 1 and "alice" in held[0] and "superseded" in held[0]
    # A withdrawal inside the window cancels the held version too: nothing ever reaches the DMP.
    queue.enqueue(conn, "d2", _new(doc_id="D2", action="delete"), "n1", now)
    assert _state(conn, "v2")[0] == _state(conn, "d2")[0] == "cancelled"


def test_a_newer_version_of_an_identity_held_initial_goes_to_the_gate_again(conn):
    import time

    from engine.journal import deliveries as queue

    now = time.time()
    queue.enqueue(conn, "v1", _new(doc_id="D1", action="initial"), "n1", now)
    [delivery] = queue.claim_batch(conn, "dmp", now, "n1")
    queue.hold_for_identity(conn, delivery, NOT_QUALIFIED, "n1", now)
    queue.enqueue(conn, "v2", _new(doc_id="D2", action="replace", replaced_id="D1"), "n1", now)
    assert _state(conn, "v1")[0] == "cancelled" and _state(conn, "v2")[:2] == ("pending", "initial")
