"""What a DRIMbox needs from a CR d'imagerie to build its KOS (shared/docs/specs, DRIMbox digest
section 7): the study (Study Instance UID), the accession number and the modality, read from the
CDA, and the IPP the reference DRIMbox checks against the PACS. Used by `validate: drimbox` in a
route and by an mllp-out channel with `content_check: drimbox` (a dead letter with the reason)."""

from __future__ import annotations

#: what a DRIMbox needs from the CDA, by XPath (HL7 v3 namespace as `h`)
CDA_NEEDS = {
    "Study Instance UID (documentationOf/serviceEvent/id/@root)": "h:documentationOf/h:serviceEvent/h:id/@root",
    "accession number (inFulfillmentOf/order/accessionNumber)": "h:inFulfillmentOf/h:order/*[local-name()='accessionNumber']/@extension",
    "modality (serviceEvent/code/translation, DCM)": "h:documentationOf/h:serviceEvent/h:code/h:translation[@codeSystem='1.2.840.10008.2.16.4']/@code",
}
IPP = "IPP (PID-3 identifier of type PI)"
NS = {"h": "urn:hl7-org:v3"}


def missing_for_drimbox(message, need_ipp: bool = False) -> list[str]:
    """What the report (a parsed Message) lacks for a DRIMbox, sorted; [] when it has it all.
    The names are fixed texts (never patient data): they go to logs and the journal as they are.
    Raises RequestError when the message is not a document request at all."""
    from engine.docrequest import parse_document_request
    from engine.xmlsafe import parse_untrusted

    request = parse_document_request(message)
    missing: set[str] = set()
    for document in request.documents:
        root = parse_untrusted(document.content).getroot()
        missing.update(what for what, path in CDA_NEEDS.items() if not root.xpath(path, namespaces=NS))
    if need_ipp and "PI" not in message.get_all("PID-3.5"):
        missing.add(IPP)
    return sorted(missing)
