"""The segment log is the durable truth: the SQLite index is completed from it after a crash."""

from __future__ import annotations

import time

import pytest
import pytest_twisted

from engine.errors import JournalError
from engine.journal.base import InboundRecord
from engine.journal.payloads import PayloadStore
from engine.journal.reader import JournalReader
from engine.journal.sqlite import SQLiteJournal, _meta


def _record(control: str) -> InboundRecord:
    return InboundRecord(
        uid=f"UID-{control}",
        channel="in",
        received_at=time.time(),
        raw=f"MSH|^~\\&|A|B|C|D|||ADT^A01|{control}|P|2.5\r".encode(),
        control_id=control,
        msg_type="ADT^A01",
        ack_code="AA",
        ack=b"MSH|ack\rMSA|AA\r",
    )


def _logged_not_indexed(journal_dir, controls) -> tuple[int, int]:
    """A journal whose log holds synced records of `controls` that its index lacks, then a torn
    write; returns (segment, its size before the torn write)."""
    first = SQLiteJournal(journal_dir)
    first.start()
    first.close_now()
    store = PayloadStore(journal_dir / "payloads")
    store.open()
    for control in controls:
        store.append(_meta(_record(control)), _record(control).raw)
    store.sync()
    segment, size = store.position()
    store.close()
    with open(journal_dir / "payloads" / f"seg-{segment:08d}.dat", "ab") as f:
        f.write(b"PFI1\x00\x00\x01")
    return segment, size


def test_records_synced_but_not_indexed_are_recovered_and_torn_tail_dropped(tmp_path):
    journal_dir = tmp_path / "journal"
    # A crash after the log fdatasync (ACK sent) but before the index commit, with a torn write
    # after them that was never synced nor acknowledged.
    segment, size = _logged_not_indexed(journal_dir, ("C-1", "C-2"))

    second = SQLiteJournal(journal_dir)
    second.start()
    second.close_now()

    reader = JournalReader(journal_dir)
    events = reader.events_after(0)
    assert [(e.control_id, e.state) for e in events] == [("C-1", "received"), ("C-2", "received")]
    assert all("recovered" in e.detail for e in events)
    assert reader.load_message("UID-C-2").raw == _record("C-2").raw
    assert (journal_dir / "payloads" / f"seg-{segment:08d}.dat").stat().st_size == size

    third = SQLiteJournal(journal_dir)  # recovery is idempotent
    third.start()
    third.close_now()
    assert len(JournalReader(journal_dir).events_after(0)) == 2


@pytest_twisted.ensureDeferred
async def test_the_routing_process_journal_neither_recovers_nor_writes_the_log(tmp_path):
    """A follower (the routing process's journal) shares the files of a running intake process:
    it must leave the log's unindexed records and a tail being written alone, and refuse inbound."""
    journal_dir = tmp_path / "journal"
    number, _ = _logged_not_indexed(journal_dir, ("C-1",))  # and the owner's next write, half done
    segment = journal_dir / "payloads" / f"seg-{number:08d}.dat"
    size = segment.stat().st_size

    follower = SQLiteJournal(journal_dir, follower=True)
    follower.start()
    with pytest.raises(JournalError, match="routing process"):
        await follower.append_inbound(_record("C-2"))
    await follower.stop()

    assert segment.stat().st_size == size and [p.name for p in segment.parent.iterdir()] == [segment.name]
    assert JournalReader(journal_dir).events_after(0) == []  # C-1 is the owner's to recover
