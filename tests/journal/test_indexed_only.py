"""Routing's operations need only what is already indexed (`indexed_only`, groupcommit.py
`IndexedOnly`): the SQLite writer commits them without first indexing its tail, which the indexer
goes on indexing in its own batches (docs/journal.md, "Routing operations and the tail")."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import pytest
import pytest_twisted
from twisted.internet import reactor, threads

from engine.journal import sqlite as sqlite_journal
from engine.journal.base import RECEIVED
from engine.journal.sqlite import SQLiteJournal
from tests.core.test_index_follows import KEY, append, indexed_uids
from tests.core.test_journal_batch import _record
from tests.support import sleep, until


def count_indexed(conn, store) -> int:
    return conn.execute("SELECT count(*) FROM messages").fetchone()[0]


@contextmanager
def started_journal(tmp_path, monkeypatch, index_delay: float):
    monkeypatch.setattr(sqlite_journal, "INDEX_DELAY", index_delay)
    journal = SQLiteJournal(tmp_path / "journal", reactor)
    journal.start()
    try:
        yield journal
    finally:
        journal.close_now()


@pytest.fixture
def journal(tmp_path, monkeypatch):
    with started_journal(tmp_path, monkeypatch, 3600.0) as journal:  # the indexer leaves the tail alone
        yield journal


@pytest_twisted.ensureDeferred
async def test_an_indexed_only_operation_leaves_the_tail_to_the_indexer(journal):
    await append(journal, 3)
    assert await journal.submit(count_indexed, indexed_only=True) == 0
    assert len(journal._tail) == 3
    assert await journal.submit(count_indexed) == 3  # any other operation indexes it first


@pytest_twisted.ensureDeferred
async def test_records_and_indexed_only_operations_in_one_batch(journal, monkeypatch):
    mixed = []
    real = SQLiteJournal._commit_beside_tail
    monkeypatch.setattr(
        SQLiteJournal, "_commit_beside_tail", lambda j, batch: mixed.append(len(batch)) or real(j, batch)
    )
    inside, gate = threading.Event(), threading.Event()
    held = journal.submit(lambda conn, store: inside.set() or gate.wait(10))  # the writer waits in it
    await threads.deferToThread(inside.wait, 10)  # what follows is queued for the next batch
    records = [journal.append_inbound(_record(f"B-{i}", f"C-{i}", KEY.format(f"B{i}"))) for i in range(3)]
    counted = journal.submit(count_indexed, indexed_only=True)
    gate.set()
    await held
    stored = [await d for d in records]
    assert [r.state for r in stored] == [RECEIVED] * 3  # logged and answered
    assert await counted == 0  # committed beside the tail, not after indexing it
    assert mixed == [4]
    assert len(journal._tail) == 3
    await journal.indexed()
    assert indexed_uids(journal.data_dir) == ["B-0", "B-1", "B-2"]  # in log order, once


@pytest_twisted.ensureDeferred
async def test_indexed_only_operations_do_not_hold_the_tail_back(tmp_path, monkeypatch):
    # Each routing operation must not restart the wait of the records in the tail.
    with started_journal(tmp_path, monkeypatch, 0.3) as journal:
        await append(journal, 1)
        deadline = time.monotonic() + 3.0
        while not indexed_uids(journal.data_dir) and time.monotonic() < deadline:
            await journal.submit(count_indexed, indexed_only=True)
            await sleep(0.02)
        assert indexed_uids(journal.data_dir) == ["U-0"]


@pytest_twisted.ensureDeferred
async def test_a_message_still_in_the_tail_is_claimed_once_indexed(tmp_path, monkeypatch):
    with started_journal(tmp_path, monkeypatch, 0.2) as journal:
        [record] = await append(journal, 1)
        assert await journal.claim_received(10) == []  # not indexed yet: not claimed
        await until(lambda: indexed_uids(journal.data_dir) == [record.uid], what="the indexer")
        [(uid, _, _, raw)] = await journal.claim_received(10)
        assert (uid, raw) == (record.uid, record.raw)
