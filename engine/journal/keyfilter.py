"""A Bloom filter of the duplicate keys the journal holds, so that most duplicate checks need no
query: a key the filter has never seen is certainly not journaled. Nearly every inbound message
has a new key, and the check was one SQLite query per batch on the writer's path (~30 µs of CPU
per message at 8 connections, issue 15). A key it may have seen (a real duplicate, or ~1 % of
new keys) is looked up as before, so a duplicate is never missed.

The filter lives in the writer thread only. It must hold every key the index or the unindexed
tail can return: it is built from the index at start (after recovery) and every logged key is
added before its record is answered. It never forgets (purged keys only cost a useless query)
and is rebuilt, twice as large, from the index when it holds more keys than it was sized for.
"""

from __future__ import annotations

from typing import Iterable

BITS_PER_KEY = 10  # with HASHES = 5: ~1 % false positives at capacity
HASHES = 5
MIN_CAPACITY = 1 << 20  # 1.25 MB: a busy site's week of messages
_MASK64 = 0xFFFFFFFFFFFFFFFF
_ROUNDS = range(HASHES)
_MASKS = tuple(1 << i for i in range(8))


class KeyFilter:
    def __init__(self, capacity: int = MIN_CAPACITY):
        self.capacity = max(capacity, 1)
        self._bits = self.capacity * BITS_PER_KEY
        self._array = bytearray(self._bits // 8 + 1)
        self.count = 0

    def add(self, key: str) -> None:
        _set_bits(self._array, self._bits, key)
        self.count += 1

    def add_all(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.add(key)

    def __contains__(self, key: str) -> bool:
        return _bits_set(self._array, self._bits, key)

    @property
    def full(self) -> bool:
        return self.count > self.capacity


# Positions by double hashing from one 64-bit hash (stable within the process, which is all we
# need): first + i * step, i < HASHES. Written out rather than as a list of positions: checked on
# every inbound message, and a new key (nearly all) stops at its first clear bit.
def set_bits_python(array: bytearray, bits: int, key: str) -> None:
    h = hash(key) & _MASK64
    position, step = h & 0xFFFFFFFF, (h >> 32) | 1
    for _ in _ROUNDS:
        bit = position % bits
        array[bit >> 3] |= _MASKS[bit & 7]
        position += step


def bits_set_python(array: bytearray, bits: int, key: str) -> bool:
    h = hash(key) & _MASK64
    position, step = h & 0xFFFFFFFF, (h >> 32) | 1
    for _ in _ROUNDS:
        bit = position % bits
        if not array[bit >> 3] & _MASKS[bit & 7]:
            return False
        position += step
    return True


try:  # the same bits in C (engine/_hotpath.c, built by `make install`): ~1.6 -> ~0.3 µs a message
    from engine._hotpath import bloom_add as _set_bits, bloom_contains as _bits_set
except ImportError:  # pragma: no cover - tests/journal/test_keyfilter.py requires it
    _set_bits, _bits_set = set_bits_python, bits_set_python


def filter_of(keys: list[str]) -> KeyFilter:
    """A filter sized for twice `keys` (at least MIN_CAPACITY) holding them all."""
    built = KeyFilter(max(MIN_CAPACITY, 2 * len(keys)))
    built.add_all(keys)
    return built
