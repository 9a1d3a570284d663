"""Retention on the embedded journal: whole segments go, oldest first, only when everything in
them is old and finished; a restart never brings purged messages back."""

from __future__ import annotations

import time

import pytest_twisted
from twisted.internet import defer

from engine.journal import schema
from engine.journal.base import InboundRecord
from engine.journal.sqlite import SQLiteJournal, connect

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


def _spans_cover_rows(conn) -> bool:
    """Every segment's index rows lie within its recorded span of ids (schema migration 8)."""
    rows = conn.execute(
        "SELECT m.segment, min(m.id), max(m.id), s.first_id, s.last_id FROM messages m"
        " LEFT JOIN segment_ids s ON s.segment = m.segment GROUP BY m.segment"
    ).fetchall()
    return bool(rows) and all(first is not None and first <= lo and hi <= last for _, lo, hi, first, last in rows)


@pytest_twisted.ensureDeferred
async def test_segment_spans_follow_every_way_index_rows_are_written(tmp_path):
    journal = _open(tmp_path / "journal")
    for i in range(12):  # indexed by the tail, after the ACK
        await journal.append_inbound(_record(i, OLD))
    # with another operation in the batch: indexed in its transaction
    both = [journal.append_inbound(_record(12, OLD)), journal.submit(lambda c, s: None)]
    await both[0]
    await both[1]
    assert await journal.submit(lambda c, s: _spans_cover_rows(c))
    await journal.stop()

    # A crash lost the last index rows: recovery writes them again from the log, spans too.
    conn = connect(tmp_path / "journal" / "journal.sqlite")
    conn.execute("DELETE FROM messages WHERE id > (SELECT max(id) - 5 FROM messages)")
    conn.execute("DELETE FROM segment_ids WHERE segment = (SELECT max(segment) FROM segment_ids)")
    conn.close()
    again = _open(tmp_path / "journal")
    count = await again.submit(lambda c, s: c.execute("SELECT count(*) FROM messages").fetchone()[0])
    assert count == 13
    assert await again.submit(lambda c, s: _spans_cover_rows(c))
    await again.stop()


def test_the_migration_gives_an_existing_journal_its_segment_spans(tmp_path):
    conn = connect(tmp_path / "old.sqlite")
    schema.current_version(conn)  # creates schema_version
    for number, sql in sorted(schema.MIGRATIONS):
        if number < 8:
            conn.executescript(f"BEGIN;{sql};INSERT INTO schema_version VALUES ({number});COMMIT;")
    conn.executemany(
        "INSERT INTO messages (uid, received_at, channel, state, size, segment, offset, crc) VALUES (?,?,?,?,?,?,?,?)",
        [(f"U{i}", OLD, "in", "routed", 10, 1 + i // 4, i, 0) for i in range(10)],
    )
    assert schema.upgrade(conn) == schema.LATEST
    spans = conn.execute("SELECT segment, first_id, last_id FROM segment_ids ORDER BY segment").fetchall()
    assert spans == [(1, 1, 4), (2, 5, 8), (3, 9, 10)]


@pytest_twisted.ensureDeferred
async def test_purging_a_segment_reads_that_segment_not_the_whole_index(tmp_path):
    """Retention runs in the writer thread that also answers intake: the work of purging the old
    segments must not grow with the rest of the journal (it read every row of `messages` twice
    per purged segment before)."""
    work, purged = {}, {}
    for later in (10, 3000):
        journal = _open(tmp_path / f"j{later}")
        for i in range(10):
            await journal.append_inbound(_record(i, OLD))
        journal.payloads.segment_bytes = 64 << 20  # the recent records share one segment
        await defer.gatherResults([journal.append_inbound(_record(100 + i, time.time())) for i in range(later)])
        await journal.submit(lambda c, s: c.execute("UPDATE messages SET state='routed'"))
        steps = [0]

        def count() -> int:
            steps[0] += 1
            return 0

        await journal.submit(lambda c, s: c.set_progress_handler(count, 100))
        purged[later] = await journal.purge_before(time.time() - 30 * 86400)
        await journal.submit(lambda c, s: c.set_progress_handler(None, 0))
        work[later] = steps[0]
        await journal.stop()
    # the old segments only (the last old record shares its segment with the recent ones)
    assert purged[10] == purged[3000] == 9
    assert work[3000] < 2 * work[10] + 5, work
