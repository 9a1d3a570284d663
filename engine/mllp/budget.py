"""One memory budget for the bytes of unfinished frames held by every inbound connection.

`max_message_bytes` bounds one connection; this bounds the engine: many peers each holding a
large unterminated frame could otherwise exhaust memory. Beyond the budget, a connection whose
buffer is growing stops being read (TCP back-pressure reaches the peer) until some frame
completes or some connection goes away. The connection holding the oldest unfinished frame is
never paused, so the engine always makes progress and a full budget cannot deadlock it.
"""

from __future__ import annotations

from typing import Protocol


class Reader(Protocol):
    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class BufferBudget:
    def __init__(self, limit: int):
        self.limit = limit
        self._held: dict[Reader, int] = {}  # insertion order = age of the oldest unfinished frame
        self._paused: set[Reader] = set()
        self.used = 0
        self.reported: tuple[int, int] | None = None  # (used, paused) last set on the gauges

    @property
    def paused(self) -> int:
        return len(self._paused)

    def update(self, reader: Reader, held: int) -> None:
        """`reader` now holds `held` bytes of unfinished frames; pause or resume readers."""
        before = self._held.get(reader, 0)
        self.used += held - before
        if held:
            self._held[reader] = held
        else:
            self._held.pop(reader, None)
        if held > before and self.used > self.limit and not self._is_oldest(reader):
            self._pause(reader)
        elif held < before:
            self._resume_some()

    def holds(self, reader: Reader) -> bool:
        """`reader` has unfinished bytes counted here."""
        return reader in self._held

    def release(self, reader: Reader) -> None:
        """The connection is gone: its bytes are freed."""
        self.used -= self._held.pop(reader, 0)
        self._paused.discard(reader)
        self._resume_some()

    def _is_oldest(self, reader: Reader) -> bool:
        return next(iter(self._held), None) is reader

    def _pause(self, reader: Reader) -> None:
        if reader not in self._paused:
            self._paused.add(reader)
            reader.pause_reading()

    def _resume_some(self) -> None:
        if self.used > self.limit:
            oldest = next(iter(self._held), None)
            if oldest in self._paused:  # the oldest must always be able to finish its frame
                self._paused.discard(oldest)
                oldest.resume_reading()
            return
        for reader in list(self._paused):
            self._paused.discard(reader)
            reader.resume_reading()
