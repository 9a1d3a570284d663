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
"""

from __future__ import annotations

import json
import marshal
import os
import struct
import zlib
from pathlib import Path
from typing import Iterator

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
        # The file's size is known to be `_size` (just opened or checked); False after a failed
        # write or rollback, so the next append checks it (one fstat) instead of every append.
        self._end_known = False
        self._readers: dict[int, int] = {}

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._open_segment(max(self.segments(), default=1))

    def segments(self) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in self.directory.glob("seg-*.dat"))

    def _path(self, segment: int) -> Path:
        return self.directory / f"seg-{segment:08d}.dat"

    def _open_segment(self, segment: int) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(self._path(segment), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self._segment = segment
        self._size = os.fstat(self._fd).st_size
        self._end_known = True
        _fsync_dir(self.directory)

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
            written = os.writev(self._fd, group) if group else 0
            if written < total:  # a short write: finish it by hand
                rest = memoryview(b"".join(group))[written:]
                while rest:
                    rest = rest[os.write(self._fd, rest) :]
            self._size += total
            self._dirty = self._dirty or total > 0
            self._end_known = True

    def rollback_to(self, segment: int, offset: int) -> None:
        """Leave the log exactly as it was before a failed batch (a full disk, an I/O error): the
        segments the batch opened are removed, the batch's segment is truncated back to `offset`
        and its size checked. The size the store keeps must be the file's: the file is in append
        mode, so any stray byte left would shift every later record away from its indexed offset.
        Raises OSError if the log could not be restored; the next append tries again first."""
        self._size = offset  # what the file must be, whatever happens below
        self._end_known = False
        for newer in [s for s in self.segments() if s > segment]:
            self._forget_reader(newer)
            self._path(newer).unlink(missing_ok=True)  # only the failed batch wrote there
        if segment != self._segment:
            self._open_segment(segment)
            self._size = offset
        self._check_end()

    def _check_end(self) -> None:
        """The file ends where the store thinks it does, or is made to (stray bytes of a failed
        write are cut); raises OSError when that is impossible, so nothing is appended at an
        offset the index would not know."""
        actual = os.fstat(self._fd).st_size
        if actual != self._size:
            os.ftruncate(self._fd, self._size)
            actual = os.fstat(self._fd).st_size
            if actual != self._size:
                raise OSError(f"segment {self._segment} is {actual} bytes, {self._size} expected")
            self._dirty = True
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
        caller may cut). Good records after damaged bytes are never given up."""
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
        os.truncate(self._path(segment), offset)
        if segment == self._segment:
            self._size = offset

    def remove(self, segment: int) -> None:
        """Delete a whole segment (retention); never the one being written."""
        if segment == self._segment:
            raise ValueError("the segment being written cannot be removed")
        self._forget_reader(segment)
        self._path(segment).unlink(missing_ok=True)
        _fsync_dir(self.directory)

    def close(self) -> None:
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


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
