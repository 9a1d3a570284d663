"""Integration hook for the routing step: an inbound ADT message updates the patient registry."""

from __future__ import annotations

from engine.errors import ParseError
from engine.hl7.message import Message
from engine.patients.adt import AdtError, read_adt
from engine.patients.model import PatientRecord
from engine.patients.registry import PatientRegistry


async def update_from_message(registry: PatientRegistry, raw: bytes) -> PatientRecord:
    """Parse `raw` (ER7, any separators), apply it off the reactor thread, return the record.

    Raises AdtError (a ValidationError whose `.error` is the HL7Error for the NACK's ERR segment)
    for unparsable input, an unsupported event or a bad field; never anything else for bad input.
    """
    try:
        msg = Message.parse(raw)
    except ParseError as exc:
        raise AdtError.of(100, f"not an HL7 v2 message: {exc}", "MSH") from exc
    update = read_adt(msg)
    return await registry.apply_in_thread(update)
