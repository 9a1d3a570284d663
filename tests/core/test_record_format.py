"""Segment log record formats: PFI2 (marshal meta, written) and PFI1 (JSON meta, written before,
still read), through the store and through recovery after a crash."""

from __future__ import annotations

import json
import struct
import time
import zlib

import pytest

from engine.journal import payloads
from engine.journal.base import DUPLICATE, InboundRecord
from engine.journal.payloads import MAGIC, MAGIC_JSON, META_FIELDS, PayloadStore
from engine.journal.reader import JournalReader
from engine.journal.sqlite import SQLiteJournal, _meta, _meta_values


def _record(control: str, **fields) -> InboundRecord:
    raw = f"MSH|^~\\&|A|B|C|D|||ADT^A01|{control}|P|2.5\rPID|||123^^^X\r".encode()
    return InboundRecord(
        uid=f"UID-{control}",
        channel="in",
        received_at=time.time(),
        raw=raw,
        sender="A",
        facility="B",
        control_id=control,
        msg_type="ADT^A01",
        version="2.5",
        patient_ids="123^^^X",
        ack_code="AA",
        ack=b"MSH|ack\xe9\rMSA|AA\r",
        **fields,
    )


def _legacy_json_record(meta: dict, raw: bytes) -> bytes:
    """A record as the store wrote it before PFI2 (JSON meta)."""
    body = json.dumps(meta, separators=(",", ":")).encode()
    crc = zlib.crc32(raw, zlib.crc32(body))
    return struct.pack(">4sIII", MAGIC_JSON, len(body), len(raw), crc) + body + raw


def test_the_log_tuple_starts_with_the_index_columns():
    record = InboundRecord(uid="U1", channel="in", received_at=1.5, raw=b"MSH", control_id="C1", ack=b"A")
    values = _meta_values(record)
    assert dict(zip(META_FIELDS, values)) == {name: getattr(record, name) for name in META_FIELDS}
    assert META_FIELDS[: len(META_FIELDS) - 5] == (
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
    )


def test_compact_meta_reads_back_as_the_json_meta_did(tmp_path):
    store = PayloadStore(tmp_path)
    store.open()
    record = _record("C-1", dup_key="in\x1fA\x1fB\x1fC-1", state=DUPLICATE, duplicate_of="UID-C-0")
    segment, offset, _ = store.append(_meta_values(record), record.raw)
    store.sync()
    meta, raw = store.read(segment, offset)
    assert meta == _meta(record)
    assert raw == record.raw
    assert open(store._path(segment), "rb").read(4) == MAGIC
    store.close()


def test_a_log_with_both_formats_is_recovered_whole(tmp_path):
    journal_dir = tmp_path / "journal"
    first = SQLiteJournal(journal_dir)
    first.start()
    first.close_now()
    # An old record (PFI1), then a new one (PFI2), both synced but never indexed (a crash).
    old, new = _record("OLD"), _record("NEW")
    segment = max(PayloadStore(journal_dir / "payloads").segments(), default=1)
    with open(journal_dir / "payloads" / f"seg-{segment:08d}.dat", "ab") as f:
        f.write(_legacy_json_record(_meta(old), old.raw))
    store = PayloadStore(journal_dir / "payloads")
    store.open()
    store.append(_meta_values(new), new.raw)
    store.sync()
    store.close()

    second = SQLiteJournal(journal_dir)
    second.start()
    second.close_now()

    reader = JournalReader(journal_dir)
    assert [(e.control_id, e.state) for e in reader.events_after(0)] == [("OLD", "received"), ("NEW", "received")]
    assert reader.load_message("UID-OLD").raw == old.raw
    assert reader.load_message("UID-NEW").raw == new.raw


def test_damaged_bytes_before_a_compact_record_are_skipped_not_the_record(tmp_path):
    store = PayloadStore(tmp_path)
    store.open()
    good = _record("C-2")
    with open(store._path(1), "ab") as f:
        f.write(b"PFI2\x00\x00\x00\x05garbage")  # a damaged header
    store._size = store._path(1).stat().st_size
    segment, offset, _ = store.append(_meta_values(good), good.raw)
    store.sync()
    scanned = list(store.scan_from(1, 0))
    assert scanned[0][2] is None and scanned[0][3] == offset  # damaged, resumes at the good record
    assert scanned[1][2]["control_id"] == "C-2"
    store.close()


def test_a_meta_of_unknown_shape_is_a_damaged_record():
    bad = payloads.encode_meta(("only", "three", "values"))
    with pytest.raises(payloads.CorruptRecord):
        payloads.decode_meta(MAGIC, bad)


def test_meta_bytes_marshal_cannot_read_are_a_damaged_record():
    with pytest.raises(payloads.CorruptRecord):
        payloads.decode_meta(MAGIC, b"\xff\x00garbage")


def test_raw_bytes_read_in_one_go_are_checked_like_a_full_read(tmp_path, monkeypatch):
    """read_raw (routing's read: raw bytes only) gives what read() gives; one pread when the meta
    fits the allowance, a second one when it does not; a damaged record is refused alike."""
    import os

    store = PayloadStore(tmp_path)
    store.open()
    small = _record("R-1")
    long_meta = _record("R-2", reason="x" * (payloads.META_ALLOWANCE * 3))  # meta beyond the allowance
    (pos1, pos2) = store.append_many([(_meta_values(small), small.raw), (_meta_values(long_meta), long_meta.raw)])
    store.sync()
    reads = []
    real_pread = os.pread
    monkeypatch.setattr(payloads.os, "pread", lambda fd, n, at: reads.append(n) or real_pread(fd, n, at))
    assert store.read_raw(pos1[0], pos1[1], len(small.raw)) == small.raw == store.read(pos1[0], pos1[1])[1]
    assert len(reads) == 2  # one each: header, meta and raw bytes together
    reads.clear()
    assert store.read_raw(pos2[0], pos2[1], len(long_meta.raw)) == long_meta.raw  # the last record: a short read
    assert len(reads) == 2
    with open(store._path(pos1[0]), "r+b") as f:  # the last raw byte of the first record flipped
        f.seek(pos2[1] - 1)
        byte = f.read(1)
        f.seek(pos2[1] - 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(payloads.CorruptRecord):
        store.read_raw(pos1[0], pos1[1], len(small.raw))
    store.close()
