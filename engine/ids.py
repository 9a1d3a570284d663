"""Message ids: sortable by time, unique without coordination (ULID layout, Crockford base32)."""

from __future__ import annotations

import os
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Two base32 characters per 10 bits: the 80 random bits are 8 table lookups.
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]
_RANDOM_CHUNK = 10 * 1024


class _RandomPool:
    """os.urandom read 10 KB at a time: one system call per ~1000 ids on the intake path."""

    def __init__(self):
        self._lock = threading.Lock()
        self._pool = b""
        self._position = 0

    def take10(self) -> int:
        with self._lock:
            if self._position + 10 > len(self._pool):
                self._pool, self._position = os.urandom(_RANDOM_CHUNK), 0
            start = self._position
            self._position = start + 10
            return int.from_bytes(self._pool[start : start + 10], "big")


_random = _RandomPool()
os.register_at_fork(after_in_child=lambda: _random.__init__())  # never share randomness with a child


# (milliseconds, their 10 characters), replaced as one object so that threads never mix them.
_time_prefix: tuple[int, str] = (-1, "")


def new_id(now: float | None = None) -> str:
    """26-character id: 48 bits of milliseconds then 80 random bits."""
    global _time_prefix
    ms = int((time.time() if now is None else now) * 1000) & 0xFFFFFFFFFFFF
    cached_ms, text = _time_prefix
    if cached_ms != ms:  # 2 zero bits + 48 bits = 10 characters
        text = "".join([_PAIRS[(ms >> shift) & 1023] for shift in (40, 30, 20, 10, 0)])
        _time_prefix = (ms, text)
    r, p = _random.take10(), _PAIRS
    return (
        text
        + p[r >> 70]
        + p[(r >> 60) & 1023]
        + p[(r >> 50) & 1023]
        + p[(r >> 40) & 1023]
        + p[(r >> 30) & 1023]
        + p[(r >> 20) & 1023]
        + p[(r >> 10) & 1023]
        + p[r & 1023]
    )
