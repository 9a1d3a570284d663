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
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def events(engine, state: str) -> list[str]:
    return [e.detail for e in JournalReader(engine.journal.data_dir).events_after(0, limit=1000) if e.state == state]


@pytest_twisted.ensureDeferred
async def test_a_held_deferred_send_waits_for_its_release_in_fifo_order(tmp_path):
    peer = RecordingPeer()
    port = await peer.listen()
    routes = [{"name": "r", "match": {"channel": "in"},
               "steps": [{"deliver": {"to": "dest", "delay": "60s", "key": "PID-3.1"}}]}]
    clock = task.Clock()
    clock.advance(reactor.seconds())
    engine = await _engine(tmp_path, {"in": inbound(), "dest": out(port)}, routes, clock=clock)
    journal = ["--config", str(tmp_path / "cfg"), "--data", str(tmp_path / "data")]
    client = await client_for(engine, "in")
    try:
        for ctrl in ("H-1", "H-2"):  # same patient: H-2 must never overtake H-1
            assert (await exchange(client, sample_adt(ctrl).encode())).code == "AA"
        await until(lambda: len(events(engine, "queued")) == 2, what="both sends deferred")
        [first] = [e.message_uid for e in JournalReader(engine.journal.data_dir).events_after(0, limit=100)
                   if e.control_id == "H-1" and e.state == "received"]
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
        queue.enqueue(conn, uid, NewDelivery(route="r", step="s", destination="d", fifo_key="k", not_before=0,
                                            payload=b"x"), "n1", now)
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
    queue.enqueue(conn, "m1", NewDelivery(route="r", step="s", destination="d", fifo_key="k", not_before=0,
                                         payload=b"x"), "n1", now)
    queue.hold(conn, "m1", "check", "n1", now, "alice")
    assert queue.cancel(conn, "m1", "withdrawn", "n1", now, "carol") == 1
    details = [d for (d,) in conn.execute("SELECT detail FROM events ORDER BY id").fetchall()]
    assert any("cancelled by carol: withdrawn" in d for d in details)
