"""The journal contract: the same checks on the embedded SQLite journal and on the shared
PostgreSQL journal (a fresh database on the real server), through the typed API the engine uses."""

from __future__ import annotations

import time

import pytest
import pytest_twisted

from engine.journal import deliveries as queue
from engine.journal.base import RECEIVED, InboundRecord
from engine.journal.plans import NewDelivery, Plan
from engine.ids import new_id
from tests.routing.peers import until
from tests.support import sample_adt


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path):
    if request.param == "sqlite":
        return "sqlite", tmp_path / "journal"
    return "postgresql", request.getfixturevalue("pg_url")


async def opened(backend):
    from twisted.internet import reactor

    from engine.journal.postgres import PostgresJournal
    from engine.journal.sqlite import SQLiteJournal

    kind, where = backend
    journal = (
        SQLiteJournal(where, reactor, node="n1") if kind == "sqlite" else PostgresJournal(where, reactor, node="n1")
    )
    await journal.open()
    await until(lambda: journal.is_leader, what="dispatch leadership")
    return journal


def record(control_id: str, dup_window: float = 0.0, received_at: float | None = None) -> InboundRecord:
    now = time.time() if received_at is None else received_at
    raw = sample_adt(control_id).encode()
    r = InboundRecord(
        uid=new_id(now),
        channel="in",
        received_at=now,
        raw=raw,
        control_id=control_id,
        msg_type="ADT^A01",
        sender="GAM",
        facility="CHU-X",
        ack_code="AA",
        ack=b"ACK " + raw[:20],
    )
    if dup_window:
        r.dup_key, r.dup_window = f"in\x1fGAM\x1fCHU-X\x1f{control_id}", dup_window
    return r


@pytest_twisted.ensureDeferred
async def test_a_stored_message_reads_back_with_its_received_event(backend):
    journal = await opened(backend)
    try:
        stored = await journal.append_inbound(record("C-1"))
        await journal.indexed()  # the index may follow the ACK (SQLite): readers see it from here
        message = journal.load_message(stored.uid)
        assert (message.state, message.control_id, message.raw) == (RECEIVED, "C-1", stored.raw)
        events = journal.events_after(0)
        assert [(e.message_uid, e.state) for e in events] == [(stored.uid, RECEIVED)]
        await journal.record_event(stored.uid, "note", "in", "an operator note")
        assert [e.state for e in journal.events_after(events[-1].id)] == ["note"]
    finally:
        await journal.stop()


@pytest_twisted.ensureDeferred
async def test_a_duplicate_points_to_the_original_and_gets_its_ack(backend):
    journal = await opened(backend)
    try:
        first = await journal.append_inbound(record("D-1", dup_window=3600))
        again = await journal.append_inbound(record("D-1", dup_window=3600))
        assert again.duplicate_of == first.uid and again.ack == first.ack
        other = await journal.append_inbound(record("D-2", dup_window=3600))
        assert other.duplicate_of is None
    finally:
        await journal.stop()


@pytest_twisted.ensureDeferred
async def test_route_queue_claim_and_finish(backend):
    journal = await opened(backend)
    try:
        stored = await journal.append_inbound(record("Q-1"))
        await journal.indexed()  # routing claims what is indexed (SQLite: once the indexer took it)
        [(uid, channel, _, raw)] = await journal.claim_received(10)
        assert (uid, channel, raw) == (stored.uid, "in", stored.raw)
        now = time.time()
        plan = Plan(
            uid, events=[("routed", "1 delivery")], deliveries=[NewDelivery("r", "deliver-1", "dest", "K", now, None)]
        )
        touched = await journal.submit(lambda c, s: queue.apply_plans(c, [plan], "n1", now))
        assert touched == ["dest"] and await journal.claim_received(10) == []
        assert [(d, state, n) for d, state, n, _ in journal.queue_depths()] == [("dest", "pending", 1)]
        assert [(d, n) for d, _, n, _ in journal.queue_depths(["dest", "other"])] == [("dest", 1)]
        assert journal.queue_depths(["other"]) == [] and journal.queue_depths([]) == []
        claimed = await journal.submit(
            lambda c, s: queue.claim_batch(c, "dest", now + 1, "n1", dialect=journal.dialect)
        )
        assert [d.message_uid for d in claimed] == [uid]
        await journal.submit(lambda c, s: queue.finish_all(c, [(claimed[0], "sent")], "done", "n1", now + 2))
        assert journal.queue_depths() == []
        assert journal.load_message(uid).state == "routed"
        last = journal.events_after(0)[-1]
        assert (last.state, last.channel, last.detail) == ("sent", "dest", f"delivery {claimed[0].id}: sent")
    finally:
        await journal.stop()
