"""Group commit: records queued in one reactor turn share a batch, yet each gets its own outcome."""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from engine.journal.base import DUPLICATE, RECEIVED, InboundRecord
from engine.journal.reader import JournalReader
from engine.journal.sqlite import SQLiteJournal


def _record(uid: str, control: str, dup_key: str | None = None) -> InboundRecord:
    return InboundRecord(
        uid=uid,
        channel="in",
        received_at=time.time(),
        raw=f"MSH|^~\\&|A|B|C|D|||ADT^A01|{control}|P|2.5\r".encode(),
        control_id=control,
        msg_type="ADT^A01",
        ack_code="AA",
        ack=f"MSA|AA|{control}\r".encode(),
        dup_key=dup_key,
        dup_window=3600.0 if dup_key else 0.0,
    )


@pytest.fixture
def journal(tmp_path):
    journal = SQLiteJournal(tmp_path / "journal", reactor)
    journal.start()
    yield journal
    journal.close_now()


@pytest_twisted.ensureDeferred
async def test_duplicate_inside_one_batch_points_to_the_first(journal):
    # Same turn: both records reach the writer together and are stored in one batch.
    first = journal.append_inbound(_record("U-1", "C-1", dup_key="in\x1fA\x1fB\x1fC-1"))
    second = journal.append_inbound(_record("U-2", "C-1", dup_key="in\x1fA\x1fB\x1fC-1"))
    stored_first, stored_second = await defer.gatherResults([first, second])
    assert stored_first.state == RECEIVED
    assert (stored_second.state, stored_second.duplicate_of, stored_second.ack) == (DUPLICATE, "U-1", b"MSA|AA|C-1\r")
    later = await journal.append_inbound(_record("U-3", "C-1", dup_key="in\x1fA\x1fB\x1fC-1"))
    assert (later.state, later.duplicate_of) == (DUPLICATE, "U-1")


@pytest_twisted.ensureDeferred
async def test_a_failing_record_does_not_sink_its_batch(journal):
    await journal.append_inbound(_record("U-1", "C-1"))
    await journal.indexed()
    # The index follows the ACK: both are logged and answered, then indexed in one multi-row
    # INSERT that the clash fails; redone row by row, only the clash stays out of the index
    # (logged `journal.index_failed`; uids are ULIDs, a clash happens only in a test like this).
    clash = journal.append_inbound(_record("U-1", "C-2"))  # same uid: the index refuses it
    fine = journal.append_inbound(_record("U-2", "C-3"))
    await defer.DeferredList([clash, fine], consumeErrors=True)
    await journal.indexed()
    events = JournalReader(journal.data_dir).events_after(0)
    assert [(e.message_uid, e.control_id) for e in events] == [("U-1", "C-1"), ("U-2", "C-3")]
    assert JournalReader(journal.data_dir).load_message("U-2").raw == _record("U-2", "C-3").raw


@pytest_twisted.ensureDeferred
async def test_a_plain_callable_waiter_gets_its_record_and_a_defective_one_spares_the_batch(journal):
    """Intake's hot path waits with a callable instead of a Deferred (append_inbound's `then`):
    called on the reactor thread with the stored record, duplicates marked as for a Deferred;
    one waiter that raises leaves the others of its batch answered."""
    import threading

    from structlog.testing import capture_logs

    got: list = []
    done = defer.Deferred()

    def broken(result):
        raise RuntimeError("a defect in the waiter")

    def keep(result):
        got.append((result.uid, result.state, threading.current_thread() is threading.main_thread()))
        if len(got) == 2:
            done.callback(None)

    with capture_logs() as logs:
        assert journal.append_inbound(_record("U-1", "C-1", dup_key="k1"), broken) is None
        journal.append_inbound(_record("U-2", "C-2", dup_key="k2"), keep)
        journal.append_inbound(_record("U-3", "C-2", dup_key="k2"), keep)
        await done
    assert got == [("U-2", RECEIVED, True), ("U-3", DUPLICATE, True)]
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["journal.waiter_failed"]
    await journal.indexed()
    assert [e.message_uid for e in JournalReader(journal.data_dir).events_after(0)] == ["U-1", "U-2", "U-3"]
