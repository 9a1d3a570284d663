"""Search keys of a stored message: the identifiers an operator types into the message browser.

IPP and INS from PID-3 (and MRG-1, the identifiers a merge retired), the accession number (OBR-18,
IPC-1), the document id (TXA-12, else the id of the CDA a CI-SIS document request carries). Read
by the console's indexer off the engine's process; a message that cannot be parsed has only its
control id row (every indexed message has at least that one).
"""

from __future__ import annotations

INS_AUTHORITY = "1.2.250.1.213.1.4."  # INS-NIR, INS-NIA and test roots: 1.2.250.1.213.1.4.x
IPP_TYPES = ("PI", "PT", "")


def message_keys(uid: str, raw: bytes | None, control_id: str = "") -> list[tuple[str, str, str]]:
    """(uid, kind, value) rows: kind in ctrl, ipp, ins, accession, document."""
    from engine.errors import ParseError
    from engine.hl7.message import Message

    rows: set[tuple[str, str]] = set()
    if raw:
        try:
            message = Message.parse(raw)
            control_id = message.control_id or control_id
            rows |= _patient_keys(message) | _order_keys(message) | _document_keys(message)
        except (ParseError, ValueError, IndexError):
            pass
    rows.add(("ctrl", control_id))
    return [(uid, kind, value[:200]) for kind, value in sorted(rows)]


def _patient_keys(message) -> set[tuple[str, str]]:
    keys = set()
    for path in ("PID-3", "MRG-1"):
        for segment in message.segments(path[:3]):
            for repetition in segment.repetitions(int(path[4:])):
                kind = _identifier_kind(repetition, message.encoding)
                value = message.unescape(repetition.split(message.encoding.component)[0]).strip()
                if kind and value:
                    keys.add((kind, value))
    return keys


def _identifier_kind(cx: str, enc) -> str:
    parts = cx.split(enc.component)
    authority = parts[3] if len(parts) > 3 else ""
    id_type = parts[4].strip().upper() if len(parts) > 4 else ""
    oid = authority.split(enc.subcomponent)[1] if enc.subcomponent and enc.subcomponent in authority else ""
    if oid.startswith(INS_AUTHORITY) or id_type.startswith("INS") or "INS-N" in authority:
        return "ins"
    return "ipp" if id_type in IPP_TYPES else ""


def _order_keys(message) -> set[tuple[str, str]]:
    return {
        ("accession", value.strip())
        for path in ("OBR-18.1", "IPC-1.1")
        for value in message.get_all(path)
        if value.strip()
    }


def _document_keys(message) -> set[tuple[str, str]]:
    ids = {value.strip() for value in message.get_all("TXA-12.1") if value.strip()}
    code = message.message_type[0]
    if code in ("ORU", "MDM") and "CISIS_CDA" in message.profile.upper().replace("-", "_") and not ids:
        ids |= _cda_ids(message)
    return {("document", i) for i in ids}


def _cda_ids(message) -> set[str]:
    from engine.docrequest import RequestError, parse_document_request, read_cda_header

    try:
        request = parse_document_request(message)
    except (RequestError, ValueError):
        return set()
    found = set()
    for document in request.documents:
        try:
            header = read_cda_header(document.content)
        except Exception:  # an unreadable CDA simply has no id to find it by
            continue
        if header.id is not None:
            found.add(f"{header.id.root}.{header.id.extension}" if header.id.extension else header.id.root)
    return found
