"""A replacement turned back into a first version: when a replace reached the DMP as the initial
(its original was withdrawn during the deferral and never left), destinations after the DMP (the
DRIMbox) must get the same: a new document, not a replace of a report they never had."""

from __future__ import annotations


def as_initial(message: bytes) -> bytes:
    """MDM^T10 -> MDM^T02, ORC-1 RO -> NW, the document OBX-11 C -> F, TXA-13 emptied."""
    if len(message) < 8 or not message.startswith(b"MSH"):
        return message
    fs = message[3:4]
    segments = message.split(b"\r")
    for i, segment in enumerate(segments):
        fields = segment.split(fs)
        name = fields[0]
        if name == b"MSH" and len(fields) > 8:
            fields[8] = fields[8].replace(b"MDM" + message[4:5] + b"T10", b"MDM" + message[4:5] + b"T02")
        elif name == b"ORC" and len(fields) > 1 and fields[1] == b"RO":
            fields[1] = b"NW"
        elif name == b"TXA" and len(fields) > 13:
            fields[13] = b""
        elif name == b"OBX" and len(fields) > 11 and fields[2] == b"ED" and fields[11] == b"C":
            fields[11] = b"F"
        segments[i] = fs.join(fields)
    return b"\r".join(segments)
