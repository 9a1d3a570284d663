"""The zeros written ahead of the segment log (payloads.py, docs/journal.md "The pre-zeroed log"):
records land on synced zeros so that their fdatasync flushes data only; the zeros are the log's
clean end, which a clean close and recovery cut without calling it damage, while a torn record
before them is still a torn tail. Real files, a real fill thread."""

from __future__ import annotations

import os
import shutil

import pytest_twisted
from structlog.testing import capture_logs
from twisted.internet import reactor

from engine.journal import payloads
from engine.journal.payloads import ZERO_AHEAD, PayloadStore
from engine.journal.reader import JournalReader
from engine.journal.sqlite import SQLiteJournal
from tests.core.test_journal_batch import _record
from tests.support import until


def segment_file(store: PayloadStore):
    number, _ = store.position()
    return store.directory / f"seg-{number:08d}.dat"


def records(directory) -> list[str]:
    """The uids of the log's records, in order, then what follows them: 'zeros' or 'torn'."""
    store = PayloadStore(directory)
    found = []
    for segment, offset, meta, _ in store.scan_from(1, 0):
        found.append(meta["uid"] if meta else ("zeros" if store.zeros_from(segment, offset) else "torn"))
    store.close()
    return found


async def zeroed(store: PayloadStore) -> int:
    """Wait for the fill thread: the file holds ZERO_AHEAD bytes past the records' end."""
    path, end = segment_file(store), store.position()[1]
    await until(lambda: path.stat().st_size >= end + ZERO_AHEAD, timeout=20, what="the zeros ahead")
    return end


@pytest_twisted.ensureDeferred
async def test_records_are_written_over_synced_zeros_and_a_clean_close_cuts_them(tmp_path):
    store = PayloadStore(tmp_path / "payloads")
    store.open()
    store.append_many([(_meta(i), b"raw-%d" % i) for i in range(3)])
    store.sync()
    end = await zeroed(store)
    path = segment_file(store)
    assert path.read_bytes()[end:] == bytes(ZERO_AHEAD)

    segment, offset, _ = store.append(_meta(3), b"raw-3")
    store.sync()
    assert offset == end  # right after the records, over the zeros: the file did not grow
    assert path.stat().st_size == end + ZERO_AHEAD
    assert store.read(segment, offset)[1] == b"raw-3"

    store.close()
    assert path.stat().st_size == store.position()[1]  # the log ends with its last record
    assert records(tmp_path / "payloads") == ["U-0", "U-1", "U-2", "U-3"]


@pytest_twisted.ensureDeferred
async def test_a_record_larger_than_the_zeros_goes_past_them_intact(tmp_path, monkeypatch):
    monkeypatch.setattr(payloads, "ZERO_AHEAD", 64 * 1024)
    store = PayloadStore(tmp_path / "payloads")
    store.open()
    store.append(_meta(0), b"small")
    store.sync()
    path, end = segment_file(store), store.position()[1]
    await until(lambda: path.stat().st_size >= end + 64 * 1024, what="the zeros ahead")
    big = os.urandom(1 << 20)  # the writer writes past the zeros itself, the fill thread held off
    segment, offset, _ = store.append(_meta(1), big)
    store.sync()
    assert store.read(segment, offset)[1] == big
    store.close()
    assert records(tmp_path / "payloads") == ["U-0", "U-1"]


@pytest_twisted.ensureDeferred
async def test_a_crash_with_zeros_ahead_recovers_quietly_and_appends_right_after_the_records(tmp_path):
    journal = SQLiteJournal(tmp_path / "journal", reactor)
    journal.start()
    for i in range(3):
        await journal.append_inbound(_record(f"U-{i}", f"C-{i}"))
    await zeroed(journal.payloads)
    crashed = tmp_path / "crashed"  # what a SIGKILL leaves: the records, then the synced zeros
    shutil.copytree(journal.data_dir, crashed)
    journal.close_now()
    assert records(crashed / "payloads") == ["U-0", "U-1", "U-2", "zeros"]

    with capture_logs() as logs:
        restarted = SQLiteJournal(crashed, reactor)
        restarted.start()
    try:
        said = {e["event"] for e in logs if e["log_level"] in ("warning", "error")}
        assert said <= {"journal.recovered"}  # the unindexed records; no torn tail, no damage
        await restarted.append_inbound(_record("U-3", "C-3"))
        await restarted.indexed()
    finally:
        restarted.close_now()
    assert records(crashed / "payloads") == ["U-0", "U-1", "U-2", "U-3"]  # no gap of zeros between
    assert [e.control_id for e in JournalReader(crashed).events_after(0)] == ["C-0", "C-1", "C-2", "C-3"]


@pytest_twisted.ensureDeferred
async def test_a_torn_record_before_the_zeros_is_still_a_torn_tail(tmp_path):
    journal = SQLiteJournal(tmp_path / "journal", reactor)
    journal.start()
    await journal.append_inbound(_record("U-0", "C-0"))
    end = await zeroed(journal.payloads)
    crashed = tmp_path / "crashed"
    shutil.copytree(journal.data_dir, crashed)
    journal.close_now()
    [segment] = (crashed / "payloads").glob("seg-*.dat")
    with open(segment, "r+b") as f:  # a record's first bytes reached the disk, not the rest
        f.seek(end)
        f.write(b"PFI2\x00\x00\x01")

    with capture_logs() as logs:
        restarted = SQLiteJournal(crashed, reactor)
        restarted.start()
    restarted.close_now()
    assert "journal.torn_tail_truncated" in [e["event"] for e in logs if e["log_level"] == "warning"]
    assert segment.stat().st_size == end
    assert records(crashed / "payloads") == ["U-0"]


def _meta(i: int) -> dict:
    return {"uid": f"U-{i}", "received_at": 0.0, "channel": "in", "state": "received", "control_id": f"C-{i}"}
