"""Retention on the embedded journal: whole segments go, oldest first, only when everything in
them is old and finished; a restart never brings purged messages back."""

from __future__ import annotations

import time

import pytest_twisted

from engine.journal.base import InboundRecord
from engine.journal.sqlite import SQLiteJournal

OLD = time.time() - 40 * 86400


def _record(i: int, received_at: float) -> InboundRecord:
    return InboundRecord(
        uid=f"UID-{i}",
        channel="in",
        received_at=received_at,
        raw=f"MSH|^~\\&|A|B|C|D|||ADT^A01|C-{i}|P|2.5\r".encode() + b"x" * 400,
        control_id=f"C-{i}",
        msg_type="ADT^A01",
        ack_code="AA",
        ack=b"MSA|AA\r",
    )


def _open(directory) -> SQLiteJournal:
    journal = SQLiteJournal(directory)
    journal.payloads.segment_bytes = 2000  # a few records per segment
    journal.start()
    return journal


@pytest_twisted.ensureDeferred
async def test_old_finished_segments_are_purged_and_stay_purged(tmp_path):
    journal = _open(tmp_path / "journal")
    for i in range(20):
        at = OLD if i < 14 else time.time()
        await journal.append_inbound(_record(i, at))
    # Everything is routed but message 9, still waiting for the dispatcher: its segment stays,
    # and so does every later one (segments go oldest first).
    await journal.submit(lambda c, s: c.execute("UPDATE messages SET state='routed' WHERE uid != 'UID-9'"))
    segments_before = journal.payloads.segments()
    kept_segment = (
        await journal.submit(lambda c, s: c.execute("SELECT segment FROM messages WHERE uid='UID-9'").fetchall())
    )[0][0]

    purged = await journal.purge_before(time.time() - 30 * 86400)

    remaining = await journal.submit(lambda c, s: [r[0] for r in c.execute("SELECT uid FROM messages ORDER BY id")])
    assert purged > 0 and len(remaining) == 20 - purged
    assert "UID-9" in remaining and "UID-0" not in remaining
    assert journal.payloads.segments() == [s for s in segments_before if s >= kept_segment]
    events = await journal.submit(lambda c, s: c.execute("SELECT count(*) FROM events").fetchall())
    assert events[0][0] == len(remaining)
    await journal.stop()

    again = _open(tmp_path / "journal")  # recovery must not re-index purged records
    after = await again.submit(lambda c, s: [r[0] for r in c.execute("SELECT uid FROM messages ORDER BY id")])
    assert after == remaining
    assert (await again.purge_before(time.time() - 30 * 86400)) == 0  # nothing more until 9 is routed
    await again.stop()
