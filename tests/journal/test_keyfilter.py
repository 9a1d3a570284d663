"""The duplicate-key filter: never a false negative (a duplicate is never missed), few false
positives, and a journal whose filter fills up rebuilds it from the index and its tail."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor

from engine.journal import keyfilter
from engine.journal import sqlite as sqlite_journal
from engine.journal.base import DUPLICATE
from engine.journal.keyfilter import KeyFilter
from engine.journal.sqlite import SQLiteJournal
from tests.core.test_journal_batch import _record


def test_every_added_key_is_found_and_few_others_are():
    keys = KeyFilter(20_000)
    added = [f"in\x1fRIS\x1fCHU\x1fCTRL-{i}" for i in range(20_000)]
    keys.add_all(added)
    assert all(k in keys for k in added)
    others = [f"in\x1fRIS\x1fCHU\x1fOTHER-{i}" for i in range(20_000)]
    false_positives = sum(k in keys for k in others)
    assert false_positives < 0.03 * len(others)  # ~1 % at capacity
    assert not keys.full
    keys.add("one more")
    assert keys.full


@pytest_twisted.ensureDeferred
async def test_a_full_filter_is_rebuilt_from_the_index_and_the_tail(tmp_path, monkeypatch):
    monkeypatch.setattr(keyfilter, "MIN_CAPACITY", 4)
    monkeypatch.setattr(sqlite_journal, "INDEX_DELAY", 3600.0)  # keep records in the tail
    journal = SQLiteJournal(tmp_path / "journal", reactor)
    journal.start()
    try:
        originals = []
        for i in range(12):  # beyond twice the capacity: rebuilt more than once
            if i == 6:
                await journal.indexed()  # the first half indexed, the second half in the tail
            originals.append(await journal.append_inbound(_record(f"U-{i}", f"C-{i}", f"key-{i}")))
        assert journal._keys.capacity > 4
        for i in (0, 5, 6, 11):
            again = await journal.append_inbound(_record(f"D-{i}", f"C-{i}", f"key-{i}"))
            assert (again.state, again.duplicate_of, again.ack) == (DUPLICATE, f"U-{i}", originals[i].ack)
    finally:
        journal.close_now()


@pytest_twisted.ensureDeferred
async def test_keys_indexed_before_a_restart_are_in_the_new_filter(tmp_path):
    first = SQLiteJournal(tmp_path / "journal", reactor)
    first.start()
    original = await first.append_inbound(_record("U-1", "C-1", "key-1"))
    first.close_now()
    journal = SQLiteJournal(tmp_path / "journal", reactor)
    journal.start()
    try:
        assert "key-1" in journal._keys
        again = await journal.append_inbound(_record("U-2", "C-1", "key-1"))
        assert (again.state, again.duplicate_of, again.ack) == (DUPLICATE, "U-1", original.ack)
    finally:
        journal.close_now()


@pytest.mark.parametrize("capacity", [1, 1000])
def test_a_filter_of_keys_holds_them_all(capacity, monkeypatch):
    monkeypatch.setattr(keyfilter, "MIN_CAPACITY", capacity)
    built = keyfilter.filter_of([f"k{i}" for i in range(500)])
    assert built.capacity >= 1000 and all(f"k{i}" in built for i in range(500))


def test_the_native_filter_sets_and_tests_the_python_bits():
    """engine/_hotpath.c's bloom_add / bloom_contains are the filter's methods when built: the
    same bits as the Python functions for any key and size, the same answers."""
    import random

    assert keyfilter._set_bits is not keyfilter.set_bits_python, "engine/_hotpath.c is not built: `make install`"
    rng = random.Random(11)
    for bits in (1, 7, 64, 1000, 12_345, 10 * keyfilter.MIN_CAPACITY):
        native, python = bytearray(bits // 8 + 1), bytearray(bits // 8 + 1)
        keys = [f"in\x1f{rng.random()}\x1f{'é' * rng.randrange(3)}{i}" for i in range(2_000)]
        for key in keys[:1_000]:
            keyfilter._set_bits(native, bits, key)
            keyfilter.set_bits_python(python, bits, key)
        assert native == python
        for key in keys:
            assert keyfilter._bits_set(native, bits, key) == keyfilter.bits_set_python(python, bits, key)


def test_the_native_filter_refuses_an_array_smaller_than_its_bits():
    with pytest.raises(ValueError):
        keyfilter._set_bits(bytearray(1), 9, "key")
    with pytest.raises(ValueError):
        keyfilter._bits_set(bytearray(1), 0, "key")
    with pytest.raises(BufferError):
        keyfilter._set_bits(b"read-only", 8, "key")
