"""The SQLite index follows the ACK (docs/journal.md): a record is durable once the segment log is
synced and answered then; its index rows come later, in batches. These tests hold the index back
(a long INDEX_DELAY) to look at what happens between the log sync and the index update."""

from __future__ import annotations

import gc
import shutil
import sqlite3

import pytest
import pytest_twisted
from twisted.internet import reactor

from engine.journal import sqlite as sqlite_journal
from engine.journal.base import DUPLICATE, RECEIVED
from engine.journal.reader import JournalReader
from engine.journal.sqlite import SQLiteJournal
from tests.core.test_journal_batch import _record
from tests.support import sleep, until

KEY = "in\x1fA\x1fB\x1fC-{}"


@pytest.fixture
def held_index(monkeypatch):
    """The tail is indexed only by an operation, a stop or INDEX_BATCH records: never by time."""
    monkeypatch.setattr(sqlite_journal, "INDEX_DELAY", 3600.0)


@pytest.fixture
def journal(tmp_path, held_index):
    journal = SQLiteJournal(tmp_path / "journal", reactor)
    journal.start()
    yield journal
    journal.close_now()


def indexed_uids(data_dir) -> list[str]:
    conn = sqlite3.connect(data_dir / "journal.sqlite")
    try:
        return [uid for (uid,) in conn.execute("SELECT uid FROM messages ORDER BY id")]
    finally:
        conn.close()


async def append(journal, count: int, prefix: str = "U") -> list:
    return [
        await journal.append_inbound(_record(f"{prefix}-{i}", f"C-{i}", KEY.format(f"{prefix}{i}")))
        for i in range(count)
    ]


async def resend_is_answered_as_duplicate(journal, resend, original) -> None:
    again = await journal.append_inbound(resend)
    assert (again.state, again.duplicate_of, again.ack) == (DUPLICATE, original.uid, original.ack)


@pytest_twisted.ensureDeferred
async def test_an_acknowledged_record_is_in_the_log_before_the_index(journal):
    stored = await append(journal, 3)
    assert [r.state for r in stored] == [RECEIVED] * 3
    assert indexed_uids(journal.data_dir) == []  # answered, not indexed yet
    logged = [meta["uid"] for _, _, meta, _ in journal.payloads.scan_from(1, 0) if meta]  # then the zeros
    assert logged == ["U-0", "U-1", "U-2"]
    await journal.indexed()
    assert indexed_uids(journal.data_dir) == ["U-0", "U-1", "U-2"]


@pytest_twisted.ensureDeferred
async def test_a_duplicate_of_an_unindexed_record_gets_the_original_ack(journal):
    [original] = await append(journal, 1)
    await resend_is_answered_as_duplicate(journal, _record("U-again", "C-0", KEY.format("U0")), original)
    await journal.indexed()
    events = JournalReader(journal.data_dir).events_after(0)
    assert [(e.message_uid, e.state) for e in events] == [("U-0", "received"), ("U-again", "duplicate")]


@pytest_twisted.ensureDeferred
async def test_an_operation_sees_every_acknowledged_record(journal):
    await append(journal, 4)
    count = await journal.submit(lambda conn, store: conn.execute("SELECT count(*) FROM messages").fetchone()[0])
    assert count == 4


@pytest_twisted.ensureDeferred
async def test_a_crash_between_the_log_sync_and_the_index_loses_nothing_and_doubles_nothing(journal, tmp_path):
    await append(journal, 2)
    await journal.indexed()
    stored = await append(journal, 5, prefix="T")  # acknowledged, still in the tail
    # What a SIGKILL now leaves on disk: the synced log, an index without the tail (the writer is
    # idle, so the copy is a consistent crash image of the SQLite WAL files).
    crashed = tmp_path / "crashed"
    shutil.copytree(journal.data_dir, crashed)
    assert len(indexed_uids(crashed)) == 2
    restarted = SQLiteJournal(crashed, reactor)
    restarted.start()
    try:
        assert indexed_uids(crashed) == ["U-0", "U-1", "T-0", "T-1", "T-2", "T-3", "T-4"]
        events = JournalReader(crashed).events_after(0)
        assert [e.message_uid for e in events if e.state == RECEIVED] == indexed_uids(crashed)
        assert all("recovered from the segment log" in e.detail for e in events if e.message_uid.startswith("T"))
        # Duplicates of the recovered records are still recognised, with the original ACK.
        await resend_is_answered_as_duplicate(restarted, _record("T-again", "C-3", KEY.format("T3")), stored[3])
    finally:
        restarted.close_now()


@pytest_twisted.ensureDeferred
async def test_a_clean_stop_indexes_the_tail(tmp_path, held_index):
    journal = SQLiteJournal(tmp_path / "journal", reactor)
    journal.start()
    await append(journal, 3)
    journal.close_now()
    assert indexed_uids(tmp_path / "journal") == ["U-0", "U-1", "U-2"]


@pytest_twisted.ensureDeferred
async def test_the_tail_is_indexed_once_index_batch_records_wait(journal, monkeypatch):
    monkeypatch.setattr(sqlite_journal, "INDEX_BATCH", 4)
    await append(journal, 3)
    assert indexed_uids(journal.data_dir) == []
    await append(journal, 1, prefix="V")  # the writer indexes right after answering this one
    await until(lambda: len(indexed_uids(journal.data_dir)) == 4, what="the tail indexed")


@pytest_twisted.ensureDeferred
async def test_a_failing_index_commit_keeps_the_tail_and_is_retried_later(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_journal, "INDEX_DELAY", 0.0)
    monkeypatch.setattr(sqlite_journal, "INDEX_RETRY", 0.3)
    journal = SQLiteJournal(tmp_path / "journal", reactor)
    real_insert, attempts = SQLiteJournal._insert_tail, []

    def failing_once(self, conn, chunk):
        attempts.append(chunk.count)
        if len(attempts) == 1:
            raise sqlite3.OperationalError("database or disk is full")
        real_insert(self, conn, chunk)

    monkeypatch.setattr(SQLiteJournal, "_insert_tail", failing_once)
    journal.start()
    try:
        [stored] = await append(journal, 1)  # answered: the log has it; its index commit fails
        assert stored.state == RECEIVED
        await until(lambda: len(attempts) >= 1, what="the first index attempt")
        await sleep(0.1)
        assert attempts == [1] and indexed_uids(journal.data_dir) == []  # no retry loop meanwhile
        await until(lambda: indexed_uids(journal.data_dir) == ["U-0"], what="the retry after INDEX_RETRY")
        assert attempts == [1, 1]
    finally:
        journal.close_now()


@pytest_twisted.ensureDeferred
async def test_the_tail_keeps_no_record_and_so_no_raw_bytes(journal):
    # A report with its PDF can weigh megabytes: once answered, its bytes must not wait in memory
    # for the index (the tail keeps the index rows and the uid, never the record).
    record = _record("U-big", "C-big", KEY.format("big"))
    await journal.append_inbound(record)
    assert len(journal._tail) == 1
    held_by_tail = [o for o in gc.get_referrers(record) if any(o is v for v in vars(journal._tail).values())]
    assert held_by_tail == []
