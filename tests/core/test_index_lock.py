"""The index follows the log without holding the ACKs: while another process holds the journal's
write lock (the routing process, the console, a `pfi` command), accepted records are answered from
the synced log, and their index rows wait in the tail until the lock is free."""

from __future__ import annotations

import time

import pytest_twisted
from twisted.internet import defer, reactor

from engine.journal.base import InboundRecord
from engine.journal.sqlite import INDEX_BATCH, TAIL_LIMIT, SQLiteJournal, connect


def _record(i: int, uid: str = "") -> InboundRecord:
    return InboundRecord(
        uid=uid or f"UID-L{i}",
        channel="in",
        received_at=time.time(),
        raw=f"MSH|^~\\&|A|B|C|D|||ADT^A01|L-{i}|P|2.5\r".encode(),
        control_id=f"L-{i}",
        msg_type="ADT^A01",
        dup_key=f"A|B|L-{i}",
        dup_window=3600.0,
        ack_code="AA",
        ack=b"MSA|AA\r",
    )


@pytest_twisted.ensureDeferred
async def test_acks_do_not_wait_for_another_process_write_lock(tmp_path):
    journal = SQLiteJournal(tmp_path / "journal")
    journal.start()
    other = connect(journal.db_path)
    other.execute("BEGIN IMMEDIATE")  # held as a routing transaction would, longer
    count = INDEX_BATCH + 100  # past the size at which the tail is indexed, below TAIL_LIMIT
    assert count < TAIL_LIMIT
    try:
        answered = defer.gatherResults([journal.append_inbound(_record(i)) for i in range(count)])
        # Waiting for the lock would take the 30 s busy timeout: 10 s is far from both.
        answered.addTimeout(10, reactor)
        await answered
        duplicate = await journal.append_inbound(_record(7, uid="UID-AGAIN"))  # the tail answers duplicates
        assert duplicate.state == "duplicate" and duplicate.duplicate_of == "UID-L7"
    finally:
        other.execute("ROLLBACK")
        other.close()
    await journal.indexed()  # the lock is free: the index catches up
    rows = await journal.submit(lambda c, s: c.execute("SELECT count(*) FROM messages").fetchone()[0])
    assert rows == count + 1
    await journal.stop()
