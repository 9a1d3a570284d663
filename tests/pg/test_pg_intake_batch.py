"""Group commit on PostgreSQL: a run of inbound records is stored with one statement, yet each
record keeps its own outcome (duplicates inside the run, a failing record)."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from engine.errors import JournalError
from engine.journal.base import DUPLICATE, RECEIVED
from engine.journal.postgres import PostgresJournal
from tests.core.test_journal_batch import _record


@pytest.fixture
def journal(pg_url):
    journal = PostgresJournal(pg_url, reactor, node="n1")
    journal.start()
    yield journal
    journal.close_now()


@pytest_twisted.ensureDeferred
async def test_duplicate_inside_one_batch_points_to_the_first(journal):
    key = "in\x1fA\x1fB\x1fC-1"
    first, second = await defer.gatherResults(
        [
            journal.append_inbound(_record("U-1", "C-1", dup_key=key)),
            journal.append_inbound(_record("U-2", "C-1", dup_key=key)),
        ]
    )
    assert first.state == RECEIVED
    assert (second.state, second.duplicate_of, second.ack) == (DUPLICATE, "U-1", b"MSA|AA|C-1\r")
    later = await journal.append_inbound(_record("U-3", "C-1", dup_key=key))
    assert (later.state, later.duplicate_of) == (DUPLICATE, "U-1")


@pytest_twisted.ensureDeferred
async def test_a_failing_record_does_not_sink_its_batch(journal):
    await journal.append_inbound(_record("U-1", "C-1"))
    clash = journal.append_inbound(_record("U-1", "C-2"))  # same uid: the unique index refuses it
    fine = journal.append_inbound(_record("U-2", "C-3"))
    (clash_ok, clash_result), (fine_ok, fine_result) = await defer.DeferredList([clash, fine], consumeErrors=True)
    assert not clash_ok and clash_result.check(JournalError)
    assert fine_ok and fine_result.uid == "U-2"
    assert journal.load_message("U-2").raw == _record("U-2", "C-3").raw
    events = journal.events_after(0)
    assert [(e.message_uid, e.control_id) for e in events] == [("U-1", "C-1"), ("U-2", "C-3")]
