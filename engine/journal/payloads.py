"""Append-only payload segments: raw message bytes live here, the SQLite index points at them.

Why not BLOBs in SQLite: 40 KB payloads would be written twice (WAL, then checkpoint) and the
checkpoints cause latency spikes. Appending to a segment file and fdatasync'ing it once per group
commit writes each payload once. Old segments can be deleted whole (retention).
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

SEGMENT_BYTES = 256 * 1024 * 1024


class PayloadStore:
    def __init__(self, directory: Path, segment_bytes: int = SEGMENT_BYTES):
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self._fd: int | None = None
        self._segment = 0
        self._size = 0
        self._dirty = False
        self._readers: dict[int, int] = {}

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        numbers = [int(p.stem.split("-")[1]) for p in self.directory.glob("seg-*.dat")]
        self._open_segment(max(numbers, default=1))

    def _path(self, segment: int) -> Path:
        return self.directory / f"seg-{segment:08d}.dat"

    def _open_segment(self, segment: int) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(self._path(segment), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self._segment = segment
        self._size = os.fstat(self._fd).st_size
        _fsync_dir(self.directory)

    def append(self, data: bytes) -> tuple[int, int, int]:
        """Write `data` (not yet durable: call sync()); returns (segment, offset, crc32)."""
        if self._size + len(data) > self.segment_bytes and self._size > 0:
            self.sync()
            self._open_segment(self._segment + 1)
        offset = self._size
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._size += len(data)
        self._dirty = True
        return self._segment, offset, zlib.crc32(data)

    def rollback_to(self, segment: int, offset: int) -> None:
        """Forget bytes written after a failed batch so that offsets stay consistent."""
        if segment == self._segment and offset < self._size:
            os.ftruncate(self._fd, offset)
            self._size = offset

    def sync(self) -> None:
        if self._dirty:
            os.fdatasync(self._fd)
            self._dirty = False

    def position(self) -> tuple[int, int]:
        return self._segment, self._size

    def read(self, segment: int, offset: int, length: int, crc: int | None = None) -> bytes:
        fd = self._readers.get(segment)
        if fd is None:
            fd = self._readers[segment] = os.open(self._path(segment), os.O_RDONLY)
        data = os.pread(fd, length, offset)
        if len(data) != length or (crc is not None and zlib.crc32(data) != crc):
            raise OSError(f"payload corrupt or missing in segment {segment} at {offset}")
        return data

    def close(self) -> None:
        for fd in [self._fd, *self._readers.values()]:
            if fd is not None:
                os.close(fd)
        self._fd = None
        self._readers.clear()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
