"""Message ids: sortable by time, unique without coordination (ULID layout, Crockford base32)."""

from __future__ import annotations

import os
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Two base32 characters per 10 bits, for the 48 bits of time.
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]
# A random byte to a Crockford character by its low 5 bits (256 = 8 x 32: each equally likely).
_TO_CROCKFORD = bytes.maketrans(bytes(range(256)), _ALPHABET.encode() * 8)
_RANDOM_CHUNK = 16 * 1024
_RANDOM_CHARS = 16  # 80 bits


class _RandomPool:
    """Random Crockford characters made 16 KB at a time (one os.urandom and one C-level translate
    per 1024 ids): an id's 80 random bits are one slice, not eight table look-ups on intake."""

    def __init__(self):
        self._lock = threading.Lock()
        self._pool = ""
        self._position = 0

    def take(self) -> str:
        with self._lock:
            start = self._position
            if start + _RANDOM_CHARS > len(self._pool):
                self._pool, start = os.urandom(_RANDOM_CHUNK).translate(_TO_CROCKFORD).decode(), 0
            self._position = start + _RANDOM_CHARS
            return self._pool[start : start + _RANDOM_CHARS]


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
    return text + _random.take()
