"""Typed document requests (CI-SIS "Transmission de document(s) CDA en HL7v2" 2.1 and LPS 1.1).

msg = Message.parse(raw)
request = parse_document_request(msg)      # RequestError (coded) if it cannot be accepted
problems = check_consistency(request)      # message ↔ CDA, list of HL7Error (E and W)
"""

from engine.docrequest.consistency import CdaHeader, check_consistency, read_cda_header
from engine.docrequest.errors import HL7Error, RequestError
from engine.docrequest.model import (
    Action,
    Document,
    DocumentRequest,
    Flags,
    Header,
    Participant,
    Patient,
    Volet,
)
from engine.docrequest.parser import parse_document_request

__all__ = [
    "Action",
    "CdaHeader",
    "Document",
    "DocumentRequest",
    "Flags",
    "HL7Error",
    "Header",
    "Participant",
    "Patient",
    "RequestError",
    "Volet",
    "check_consistency",
    "parse_document_request",
    "read_cda_header",
]
