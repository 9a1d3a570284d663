"""The tail is indexed by a thread of its own (engine/journal/tail.py) while the writer goes on
logging and answering. These tests hold the indexer inside its transaction to look at what the
writer, the duplicate look-ups, operations, a stop and a crash see meanwhile."""

from __future__ import annotations

import shutil
import threading

import pytest
import pytest_twisted
from structlog.testing import capture_logs
from twisted.internet import reactor, threads

from engine.journal import sqlite as sqlite_journal
from engine.journal.base import DUPLICATE, RECEIVED
from engine.journal.reader import JournalReader
from engine.journal.sqlite import SQLiteJournal
from tests.core.test_index_follows import KEY, append, indexed_uids, resend_is_answered_as_duplicate
from tests.core.test_journal_batch import _record
from tests.support import sleep, until


class HeldIndexer:
    """Blocks the indexer thread inside its index transaction until `release`."""

    def __init__(self, monkeypatch):
        self.inside = threading.Event()
        self._go = threading.Event()
        real = SQLiteJournal._insert_tail

        def held(journal, conn, chunk):
            if threading.current_thread().name == "journal-indexer" and not self._go.is_set():
                self.inside.set()
                self._go.wait(30)
            real(journal, conn, chunk)

        monkeypatch.setattr(SQLiteJournal, "_insert_tail", held)

    def release(self) -> None:
        self._go.set()


@pytest.fixture
def held(monkeypatch):
    monkeypatch.setattr(sqlite_journal, "INDEX_DELAY", 0.0)  # the indexer takes each record at once
    held = HeldIndexer(monkeypatch)
    yield held
    held.release()


@pytest.fixture
def journal(tmp_path, held):
    journal = SQLiteJournal(tmp_path / "journal", reactor)
    journal.start()
    yield journal
    held.release()
    journal.close_now()


async def held_with(journal, held, count: int) -> list:
    """`count` records acknowledged, the indexer stopped inside the transaction indexing them."""
    stored = await append(journal, count)
    await threads.deferToThread(held.inside.wait, 10)
    assert held.inside.is_set()
    return stored


@pytest_twisted.ensureDeferred
async def test_the_writer_answers_while_an_index_transaction_is_in_progress(journal, held):
    await held_with(journal, held, 2)
    more = await append(journal, 20, prefix="M")  # would hang if logging waited for the index
    assert [r.state for r in more] == [RECEIVED] * 20
    assert indexed_uids(journal.data_dir) == []
    held.release()
    await until(lambda: len(indexed_uids(journal.data_dir)) == 22, what="the indexer catching up")
    assert indexed_uids(journal.data_dir)[:2] == ["U-0", "U-1"]  # in log order


@pytest_twisted.ensureDeferred
async def test_a_duplicate_of_a_record_being_indexed_gets_the_original_ack(journal, held):
    [original, _] = await held_with(journal, held, 2)
    await resend_is_answered_as_duplicate(journal, _record("U-again", "C-0", KEY.format("U0")), original)


@pytest_twisted.ensureDeferred
async def test_a_record_indexed_between_the_two_lookups_is_still_a_duplicate(tmp_path, monkeypatch):
    # The worst moment: the indexer commits a record and drops it from the tail right after the
    # writer queried the index for its key. The tail was looked at first, so it is found there.
    monkeypatch.setattr(sqlite_journal, "INDEX_DELAY", 3600.0)  # only this test's hook indexes
    journal = SQLiteJournal(tmp_path / "journal", reactor)
    journal.start()
    real_earlier, indexed_meanwhile = sqlite_journal._earlier, []

    def query_then_index(conn, keys):
        rows = real_earlier(conn, keys)
        if keys and not indexed_meanwhile:
            journal._indexer.index_now(journal._indexer.conn)  # what the indexer thread may do now
            indexed_meanwhile.append(len(journal._tail))
        return rows

    monkeypatch.setattr(sqlite_journal, "_earlier", query_then_index)
    try:
        [original] = await append(journal, 1)
        again = await journal.append_inbound(_record("U-again", "C-0", KEY.format("U0")))
        assert indexed_meanwhile == [0]  # the original left the tail between the look-ups
        assert (again.state, again.duplicate_of, again.ack) == (DUPLICATE, original.uid, original.ack)
    finally:
        journal.close_now()


@pytest_twisted.ensureDeferred
async def test_an_operation_waits_for_the_index_transaction_and_sees_every_record(journal, held):
    await held_with(journal, held, 3)
    await append(journal, 2, prefix="M")  # still in the tail, not in the held transaction
    with capture_logs() as logs:
        counted = journal.submit(lambda conn, store: conn.execute("SELECT count(*) FROM events").fetchone()[0])
        await sleep(0.2)
        assert not counted.called  # behind the indexer's transaction, never beside it
        held.release()
        assert await counted == 5
    assert [line for line in logs if line["log_level"] == "error"] == []  # no record indexed twice


@pytest_twisted.ensureDeferred
async def test_a_stop_lets_the_index_transaction_finish_and_indexes_the_rest(tmp_path, held):
    journal = SQLiteJournal(tmp_path / "journal", reactor)
    journal.start()
    await held_with(journal, held, 2)
    await append(journal, 3, prefix="M")
    stopped = journal.stop()
    await sleep(0.2)
    assert not stopped.called
    held.release()
    await stopped
    assert indexed_uids(tmp_path / "journal") == ["U-0", "U-1", "M-0", "M-1", "M-2"]
    events = JournalReader(tmp_path / "journal").events_after(0)
    assert [e.message_uid for e in events] == indexed_uids(tmp_path / "journal")


@pytest_twisted.ensureDeferred
async def test_a_crash_during_an_index_transaction_loses_nothing_and_doubles_nothing(journal, held, tmp_path):
    stored = await held_with(journal, held, 3)
    # What a SIGKILL now leaves: the synced log and an index whose transaction never committed.
    crashed = tmp_path / "crashed"
    shutil.copytree(journal.data_dir, crashed)
    held.release()  # (the restarted journal's indexer must not be held)
    restarted = SQLiteJournal(crashed, reactor)
    restarted.start()
    try:
        assert indexed_uids(crashed) == ["U-0", "U-1", "U-2"]
        events = JournalReader(crashed).events_after(0)
        assert [(e.message_uid, e.state) for e in events] == [(u, RECEIVED) for u in ("U-0", "U-1", "U-2")]
        await resend_is_answered_as_duplicate(restarted, _record("U-again", "C-1", KEY.format("U1")), stored[1])
    finally:
        restarted.close_now()


@pytest_twisted.ensureDeferred
async def test_the_indexer_counts_its_events_for_the_listeners(journal, held):
    seen: list = []
    journal.event_listeners.append(lambda rows: seen.extend((uid, state) for uid, _, state, *_ in rows))
    await held_with(journal, held, 2)
    assert seen == []  # not committed yet
    held.release()
    await until(lambda: len(seen) == 2, what="the listeners called after the index commit")
    assert seen == [("U-0", RECEIVED), ("U-1", RECEIVED)]
