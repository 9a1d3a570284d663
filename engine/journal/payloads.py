"""The segment log: append-only files holding every inbound message with its index fields.

This log is what makes intake durable: a group of records is appended and fdatasync'ed once,
then the SQLite index is updated without its own fsync (synchronous=NORMAL). After a crash the
index is completed from the log (`recover`). Writing each payload once, sequentially, avoids the
WAL double write and checkpoint stalls that 40 KB BLOBs cause. Old segments are deleted whole.

Record layout: MAGIC | meta length (u32) | raw length (u32) | crc32 of meta+raw (u32) | meta | raw.
MAGIC `PFI2`: meta is the `marshal` of a tuple of the index fields in META_FIELDS order (the ack as
bytes), ~10x cheaper to encode than JSON on the writer thread. MAGIC `PFI1` (logs written before):
meta is the JSON object of the same fields (the ack as a latin-1 string); both are read, only
`PFI2` is written. Readers get the same dict from both.

The bytes just past the log's end are kept written with zeros and synced, by a thread of their
own (docs/journal.md, "The pre-zeroed log"): records are written over them, so the fdatasync
before the ACK flushes data blocks only, where one that grows the file also commits the file
system's own journal (its size and extents). The end of the log is where its records end; zeros
after them are its clean end (recovery cuts them silently), anything else a torn tail.
"""

from __future__ import annotations

import json
import marshal
import os
import struct
import threading
import zlib
from pathlib import Path
from typing import Callable, Iterator

import structlog

from engine.osthread import NamedThread

log = structlog.get_logger("engine.journal")

SEGMENT_BYTES = 256 * 1024 * 1024
MAGIC = b"PFI2"  # compact (marshal) meta; written
MAGIC_JSON = b"PFI1"  # JSON meta; read only (logs written before PFI2)
_MAGIC_PREFIX = b"PFI"  # what both magics start with (resynchronising after damaged bytes)
#: the order of the values of a PFI2 meta tuple
META_FIELDS = (
    "uid",
    "received_at",
    "channel",
    "state",
    "sender",
    "facility",
    "receiver",
    "receiver_facility",
    "control_id",
    "msg_type",
    "version",
    "profile",
    "patient_ids",
    "charset",
    "ack_code",
    "ack",
    "reason",
    "dup_key",
    "duplicate_of",
)
_ACK = META_FIELDS.index("ack")
_MARSHAL_VERSION = 4  # fixed, so that a newer Python writes what an older one reads
_HEADER = struct.Struct(">4sIII")
META_ALLOWANCE = 1024  # bytes read past a record's raw size for its meta (an ADT's is ~300)
_IOV_MAX = 1020  # below the usual IOV_MAX of 1024
#: How far past the log's end the zeros reach (never past the segment's size). Measured on this
#: machine's virtual disk, one write + fdatasync: 120 µs (44 µs CPU) over synced zeros, 225 µs
#: (90 µs CPU) growing the file. A refill starts once half of it is used.
ZERO_AHEAD = 4 << 20
_ZEROS = bytes(1 << 20)  # zeros are written and synced this much at a time
ZERO_RETRY = 1.0  # seconds before zeroing again after a failure (a full disk, an I/O error)


class CorruptRecord(OSError):
    pass


class PayloadStore:
    def __init__(self, directory: Path, segment_bytes: int = SEGMENT_BYTES):
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self._fd: int = -1  # the open segment (-1: none yet)
        self._segment = 0
        self._size = 0
        self._dirty = False
        # The file's end is known (just opened or checked): `_size` bytes of records, then zeros
        # up to `_allocated`. False after a failed write or rollback, so the next append checks it
        # (one fstat) instead of every append.
        self._end_known = False
        self._allocated = 0
        # Held by the zero-fill thread while it writes past `_allocated`, and by the writer when
        # it writes there itself, changes segment or cuts the file: never both at the same bytes.
        self._fill_lock = threading.Lock()
        self._filler: _ZeroFiller | None = None
        self._readers: dict[int, int] = {}

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._open_segment(max(self.segments(), default=1))

    def segments(self) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in self.directory.glob("seg-*.dat"))

    def _path(self, segment: int) -> Path:
        return self.directory / f"seg-{segment:08d}.dat"

    def _open_segment(self, segment: int) -> None:
        with self._fill_lock:
            if self._fd >= 0:
                self._cut_zeros()
                os.close(self._fd)
            # Not O_APPEND: records are written at `_size`, over the zeros that follow it.
            self._fd = os.open(self._path(segment), os.O_WRONLY | os.O_CREAT, 0o640)
            self._segment = segment
            self._size = self._allocated = os.fstat(self._fd).st_size
            self._end_known = True
        _fsync_dir(self.directory)

    def _cut_zeros(self) -> None:
        """The segment ends with its last record (at a segment change and on close)."""
        if self._end_known and self._allocated > self._size:
            try:
                os.ftruncate(self._fd, self._size)
                self._allocated = self._size
            except OSError:  # zeros left after the records are the log's clean end all the same
                pass

    def append(self, meta: dict | tuple, raw: bytes) -> tuple[int, int, int]:
        """Write one record (not yet durable: call sync()); returns (segment, offset, crc)."""
        return self.append_many([(meta, raw)])[0]

    def append_many(self, items: list[tuple[dict | tuple, bytes]]) -> list[tuple[int, int, int]]:
        """Write records with one writev per segment (not yet durable: call sync()); returns
        (segment, offset, crc) per record. A batch costs one system call, not one per record.
        A meta is a tuple in META_FIELDS order (the writer's path) or a dict of those fields."""
        if not self._end_known:
            self._check_end()
        positions: list[tuple[int, int, int]] = []
        chunks: list[bytes] = []
        end = self._size
        for meta, raw in items:
            meta_bytes = encode_meta(meta)
            crc = zlib.crc32(raw, zlib.crc32(meta_bytes))
            length = _HEADER.size + len(meta_bytes) + len(raw)
            if end + length > self.segment_bytes and end > 0:
                self._write_all(chunks)
                chunks = []
                self.sync()
                self._open_segment(self._segment + 1)
                end = self._size
            positions.append((self._segment, end, crc))
            chunks += (_HEADER.pack(MAGIC, len(meta_bytes), len(raw), crc), meta_bytes, raw)
            end += length
        self._write_all(chunks)
        return positions

    def _write_all(self, chunks: list[bytes]) -> None:
        for start in range(0, len(chunks), _IOV_MAX):
            group = chunks[start : start + _IOV_MAX]
            total = sum(map(len, group))
            self._end_known = False  # until this write is whole
            if self._size + total <= self._allocated:
                self._write_at(group, total)  # over zeros: the fill thread only writes past them
            else:
                with self._fill_lock:  # past the zeros: the fill thread must not write there now
                    self._write_at(group, total)
                    self._allocated = max(self._allocated, self._size)
            self._dirty = self._dirty or total > 0
            self._end_known = True
        if self._allocated - self._size < ZERO_AHEAD // 2 and self._allocated < self.segment_bytes:
            self._want_zeros()

    def _write_at(self, group: list[bytes], total: int) -> None:
        """One pwritev at the log's end; a short write is finished by hand."""
        written = os.pwritev(self._fd, group, self._size) if group else 0
        if written < total:
            rest, position = memoryview(b"".join(group))[written:], self._size + written
            while rest:
                count = os.pwrite(self._fd, rest, position)
                rest, position = rest[count:], position + count
        self._size += total

    def _want_zeros(self) -> None:
        if self._filler is None:  # started by the first append: readers and tools never need it
            self._filler = _ZeroFiller(self._fill_zeros)
        self._filler.want()

    def _fill_zeros(self) -> None:
        """In the fill thread: zeros up to ZERO_AHEAD past the log's end, each MiB synced."""
        while True:
            with self._fill_lock:
                target = min(self._size + ZERO_AHEAD, self.segment_bytes)
                if self._fd < 0 or not self._end_known or self._allocated >= target:
                    return
                written = os.pwrite(self._fd, _ZEROS[: target - self._allocated], self._allocated)
                os.fdatasync(self._fd)
                self._allocated += written

    def rollback_to(self, segment: int, offset: int) -> None:
        """Leave the log exactly as it was before a failed batch (a full disk, an I/O error): the
        segments the batch opened are removed, the batch's segment is truncated back to `offset`
        (its zeros with it) and its size checked: no stray byte of the failed batch may be left
        past the end, where recovery would take it for a record. Raises OSError if the log could
        not be restored; the next append tries again first."""
        self._size = offset  # what the file must be, whatever happens below
        self._end_known = False  # the zeros go too: the fill thread waits for `_check_end`
        for newer in [s for s in self.segments() if s > segment]:
            self._forget_reader(newer)
            self._path(newer).unlink(missing_ok=True)  # only the failed batch wrote there
        if segment != self._segment:
            self._open_segment(segment)
            self._size = offset
        self._check_end()

    def _check_end(self) -> None:
        """The file ends where the store thinks it does, or is made to (stray bytes of a failed
        write are cut, and the zeros after them); raises OSError when that is impossible, so
        nothing is appended at an offset the index would not know."""
        with self._fill_lock:
            actual = os.fstat(self._fd).st_size
            if actual != self._size:
                os.ftruncate(self._fd, self._size)
                actual = os.fstat(self._fd).st_size
                if actual != self._size:
                    raise OSError(f"segment {self._segment} is {actual} bytes, {self._size} expected")
                self._dirty = True
            self._allocated = self._size
            self._end_known = True

    def _forget_reader(self, segment: int) -> None:
        fd = self._readers.pop(segment, None)
        if fd is not None:
            os.close(fd)

    def sync(self) -> None:
        if self._dirty:
            os.fdatasync(self._fd)
            self._dirty = False

    def position(self) -> tuple[int, int]:
        return self._segment, self._size

    def _reader(self, segment: int) -> int:
        fd = self._readers.get(segment)
        if fd is None:
            fd = self._readers[segment] = os.open(self._path(segment), os.O_RDONLY)
        return fd

    def read(self, segment: int, offset: int) -> tuple[dict, bytes]:
        """Read and check the record at `offset`; raises CorruptRecord if it is damaged."""
        meta, raw, _ = self._read_at(segment, offset)
        return meta, raw

    def message_raw(self, conn, uid: str) -> bytes:
        """The raw bytes of journaled message `uid`, located through the SQLite index `conn`."""
        return self.messages_raw(conn, [uid])[uid]

    def messages_raw(self, conn, uids: list[str]) -> dict[str, bytes]:
        """uid -> raw bytes: their places in one query per 400 uids, then one read each."""
        wanted, found = sorted(set(uids)), {}
        for start in range(0, len(wanted), 400):  # SQLite's bound-parameter limit
            chunk = wanted[start : start + 400]
            for uid, segment, offset, size in conn.execute(
                f"SELECT uid, segment, offset, size FROM messages WHERE uid IN ({','.join('?' * len(chunk))})", chunk
            ).fetchall():
                found[uid] = self.read_raw(segment, offset, size)
        missing = set(wanted) - set(found)
        if missing:
            raise KeyError(f"{len(missing)} message(s) not in the index")
        return found

    def read_raw(self, segment: int, offset: int, size: int = 0) -> bytes:
        """The raw bytes of the record at `offset`, checked (CRC) without decoding its meta. With
        the record's raw `size` (the index has it), one read covers header, meta and raw bytes
        in the common case: each system call in the writer thread also hands the GIL over."""
        _, meta_len, body = self._body_at(segment, offset, size)
        return body[meta_len:]

    def _read_at(self, segment: int, offset: int) -> tuple[dict, bytes, int]:
        magic, meta_len, body = self._body_at(segment, offset)
        return decode_meta(magic, body[:meta_len]), body[meta_len:], _HEADER.size + len(body)

    def _body_at(self, segment: int, offset: int, size: int = 0) -> tuple[bytes, int, bytes]:
        """(magic, meta length, meta + raw bytes) of the record at `offset`, its CRC checked: one
        read of header, `size` raw bytes and META_ALLOWANCE, a second only for what did not fit."""
        fd = self._reader(segment)
        chunk = os.pread(fd, _HEADER.size + size + META_ALLOWANCE, offset)
        if len(chunk) < _HEADER.size:
            raise CorruptRecord(f"truncated record header in segment {segment} at {offset}")
        magic, meta_len, raw_len, crc = _HEADER.unpack_from(chunk)
        end = _HEADER.size + meta_len + raw_len
        if magic not in (MAGIC, MAGIC_JSON) or (meta_len + raw_len > 1 << 24 and offset + end > os.fstat(fd).st_size):
            # Damaged lengths must not make us allocate gigabytes to find out.
            raise CorruptRecord(f"damaged record in segment {segment} at {offset}")
        if len(chunk) < end:  # a meta longer than the allowance, or a record larger than `size`
            chunk += os.pread(fd, end - len(chunk), offset + len(chunk))
        body = chunk[_HEADER.size : end]
        if len(body) != meta_len + raw_len or zlib.crc32(body) != crc:
            raise CorruptRecord(f"damaged record in segment {segment} at {offset}")
        return magic, meta_len, body

    def scan_from(self, segment: int, offset: int) -> Iterator[tuple[int, int, dict | None, object]]:
        """Records from (segment, offset) to the end of the log, as (segment, offset, meta, raw).

        Damaged bytes give (segment, offset, None, resume): `resume` is the offset of the next
        valid record of that segment, or None when nothing valid follows (a torn tail, which the
        caller may cut; or the zeros ahead of the log's end, `zeros_from` says). Good records
        after damaged bytes are never given up."""
        for number in [s for s in self.segments() if s >= segment]:
            position = offset if number == segment else 0
            size = os.path.getsize(self._path(number))
            while position < size:
                try:
                    meta, raw, length = self._read_at(number, position)
                except (CorruptRecord, ValueError):
                    resume = self.next_valid(number, position + 1, size)
                    yield number, position, None, resume
                    if resume is None:
                        break
                    position = resume
                    continue
                yield number, position, meta, raw
                position += length

    def next_valid(self, segment: int, start: int, end: int | None = None) -> int | None:
        """Offset of the first readable record at or after `start` in `segment` (None if none)."""
        fd = self._reader(segment)
        end = os.fstat(fd).st_size if end is None else end
        position = start
        while position < end:
            chunk = os.pread(fd, min(1 << 20, end - position) + len(MAGIC) - 1, position)
            found = chunk.find(_MAGIC_PREFIX)
            while found >= 0:
                try:
                    self._read_at(segment, position + found)
                    return position + found
                except (CorruptRecord, ValueError):
                    found = chunk.find(_MAGIC_PREFIX, found + 1)
            position += max(1, len(chunk) - len(MAGIC) + 1)
        return None

    def read_crc(self, segment: int, offset: int) -> int:
        return _HEADER.unpack(os.pread(self._reader(segment), _HEADER.size, offset))[3]

    def record_length(self, segment: int, offset: int) -> int:
        return self._read_at(segment, offset)[2]

    def truncate(self, segment: int, offset: int) -> None:
        with self._fill_lock:
            os.truncate(self._path(segment), offset)
            if segment == self._segment:
                self._size = self._allocated = offset

    def zeros_from(self, segment: int, offset: int) -> bool:
        """Only zeros from `offset` to the end of `segment`: the log's clean end, not a torn tail."""
        fd, position = self._reader(segment), offset
        while chunk := os.pread(fd, len(_ZEROS), position):
            if chunk.count(0) != len(chunk):
                return False
            position += len(chunk)
        return True

    def remove(self, segment: int) -> None:
        """Delete a whole segment (retention); never the one being written."""
        if segment == self._segment:
            raise ValueError("the segment being written cannot be removed")
        self._forget_reader(segment)
        self._path(segment).unlink(missing_ok=True)
        _fsync_dir(self.directory)

    def close(self) -> None:
        if self._filler is not None:
            self._filler.stop()
            self._filler = None
        if self._fd >= 0:
            self._cut_zeros()
        for fd in [self._fd, *self._readers.values()]:
            if fd >= 0:
                os.close(fd)
        self._fd = -1
        self._readers.clear()


def encode_meta(meta: dict | tuple) -> bytes:
    """The PFI2 meta of a record: its index fields as a tuple in META_FIELDS order."""
    if isinstance(meta, dict):
        values = [meta.get(name) for name in META_FIELDS]
        ack = values[_ACK]
        if isinstance(ack, str):
            values[_ACK] = ack.encode("latin-1")
        meta = tuple(values)
    return marshal.dumps(meta, _MARSHAL_VERSION)


def decode_meta(magic: bytes, data: bytes) -> dict:
    """The index fields of a record as a dict (the ack as a latin-1 string), whatever its format.
    The bytes passed the record's crc32: marshal only reads what this store wrote."""
    if magic == MAGIC_JSON:
        return json.loads(data)
    try:
        values = marshal.loads(data)
    except (EOFError, ValueError, TypeError) as exc:  # callers expect a CorruptRecord (OSError)
        raise CorruptRecord(f"unreadable record meta: {exc}") from None
    if not isinstance(values, tuple) or len(values) != len(META_FIELDS):
        raise CorruptRecord("record meta of an unknown shape")
    meta = dict(zip(META_FIELDS, values))
    meta["ack"] = (meta["ack"] or b"").decode("latin-1")
    return meta


class _ZeroFiller:
    """The thread that writes the zeros ahead of the log when the writer asks (`want`)."""

    def __init__(self, fill: Callable[[], None]):
        self._fill = fill
        self._wanted = threading.Event()
        self._stopped = threading.Event()
        self._thread = NamedThread(target=self._run, name="journal-zero-fill", daemon=True)
        self._thread.start()

    def want(self) -> None:
        self._wanted.set()

    def stop(self) -> None:
        self._stopped.set()
        self._wanted.set()
        self._thread.join()

    def _run(self) -> None:
        failing = False
        while self._wanted.wait() and not self._stopped.is_set():
            self._wanted.clear()
            try:
                self._fill()
            except OSError as exc:
                # Records are then written past the zeros, as without them, and fail there when
                # they must (an AR for the batch). Said once per run of failures.
                if not failing:
                    log.warning("journal.zero_fill_failed", error=str(exc))
                failing = True
                if self._stopped.wait(ZERO_RETRY):
                    return
                self._wanted.set()
            else:
                failing = False


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
