"""Where a destination wants the patient's IPP in PID-3 (the reference DRIMbox reads the IPP from
repetition 2: engine/connectors MllpDestination, setting `ipp_repetition`)."""

from __future__ import annotations

import re

_SEGMENT = re.compile(rb"(?:^|\r)(PID.[^\r]*)")


def place_ipp(message: bytes, repetition: int) -> bytes:
    """`message` with the PID-3 identifier of type PI (CX-5) moved to `repetition` (1-based), the
    other identifiers keeping their order; unchanged when there is no PI or no PID."""
    if len(message) < 8 or not message.startswith(b"MSH"):
        return message
    fs, cs, rs = message[3:4], message[4:5], message[5:6]
    match = _SEGMENT.search(message)
    if match is None:
        return message
    fields = match.group(1).split(fs)
    if len(fields) < 4:
        return message
    ids = fields[3].split(rs)
    ipp = [i for i in ids if _type(i, cs) == b"PI"]
    if not ipp:
        return message
    others = [i for i in ids if i is not ipp[0]]
    others += [b""] * max(0, repetition - 1 - len(others))  # empty repetitions up to the wanted place
    position = repetition - 1
    fields[3] = rs.join(others[:position] + [ipp[0]] + others[position:]).rstrip(rs)
    start, end = match.span(1)
    return message[:start] + fs.join(fields) + message[end:]


def _type(identifier: bytes, cs: bytes) -> bytes:
    parts = identifier.split(cs)
    return parts[4] if len(parts) > 4 else b""
