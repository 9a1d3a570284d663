"""What the programme statistics need to know of a message, decided once when it is routed.

A message's facts (kind, receipt month, site, document type, patient identity status and consent,
the MetaDMPMSS flags that matter) are computed in the routing thread from the parse routing made
anyway, and journaled with the routing result (engine/journal/stats.py). Outcome events of its
deliveries are then counted against these facts: the writer thread never parses a message.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from engine.stats import sites
from engine.stats.months import month_of

#: a transmission-volet document request from a creator (RIS): a report the PFI shares
REPORT = "report"
#: an LPS document handed to the RIS (a CDA received in the application mailbox)
LPS = "lps"

#: LOINC document type (OBR-4 / TXA-2) -> our document type column
DOC_TYPES = {"18748-4": "CR-IMG", "55115-0": "DEMANDE-IMG"}
OTHER_DOC = "AUTRE"

# flags (bit mask)
INVISIBLE_PATIENT, DEST_DMP, DEST_PS, DEST_PATIENT = 1, 2, 4, 8

# identity status categories (the national identity referential's four statuses)
QUALIFIED, VALIDATED, RECOVERED, PROVISIONAL, UNKNOWN = "qualified", "validated", "recovered", "provisional", "unknown"
IDENTITY_STATUSES = (PROVISIONAL, RECOVERED, VALIDATED, QUALIFIED, UNKNOWN)


@dataclass(frozen=True, slots=True)
class MessageFacts:
    uid: str
    kind: str  # REPORT | LPS
    month: str  # Paris month of receipt
    site: str  # engine/stats/sites.py; '' when unknown
    doc_type: str  # CR-IMG | DEMANDE-IMG | AUTRE
    identity: str = UNKNOWN  # one of IDENTITY_STATUSES
    patient_key: str = ""  # pseudonymous key of the identity ('' when the message names none)
    consultation: str = ""  # ZFA-11 from the PAM.fr registry: IC, INC, NA or ''
    feeding: str = ""  # ZFA-9 from the PAM.fr registry: INO, IO, NA or ''
    flags: int = 0  # INVISIBLE_PATIENT | DEST_DMP | DEST_PS | DEST_PATIENT

    def has(self, flag: int) -> bool:
        return bool(self.flags & flag)


def identity_category(status: str, has_ins: bool) -> str:
    """PID-32 (or the registry's copy of it) as one of the four statuses of the national identity
    referential. PAM.fr 2.11 sends VALI for a validated identity and may only send the INS with
    it: VALI with an INS whose key is valid is a qualified identity, VALI alone a validated one.
    RECUP and QUAL are the referential's own codes, accepted from GAMs that send them."""
    status = (status or "").strip().upper()
    if status == "QUAL" or (status == "VALI" and has_ins):
        return QUALIFIED
    return {"VALI": VALIDATED, "RECUP": RECOVERED, "PROV": PROVISIONAL}.get(status, UNKNOWN)


def doc_type_of(code: str) -> str:
    return DOC_TYPES.get((code or "").strip(), OTHER_DOC)


def facts_for(ctx, registry=None) -> MessageFacts | None:
    """The facts of a routed message (`ctx`: engine.routing.context.MessageContext, or anything
    with uid, received_at, header and document_request), or None when the statistics do not count
    it (not a CI-SIS document request, or a deletion). `registry`: the PAM.fr patient registry,
    the reference for identity and consent (`statistics_views`)."""
    return facts_for_all([ctx], registry)[0]


def facts_for_all(contexts: list, registry=None) -> list[MessageFacts | None]:
    """`facts_for` of a batch of messages, with one registry look-up for all their patients."""
    requests = [_request(ctx) for ctx in contexts]
    keys = {_lookup_key(r.patient) for r in requests if _is_report(r)}
    keys.discard(None)
    views = registry.statistics_views(keys) if registry is not None and keys else {}
    return [
        facts_of_request(
            ctx.uid,
            ctx.received_at,
            ctx.header,
            request,
            views.get(_lookup_key(request.patient)) if _is_report(request) else None,
        )
        if request is not None
        else None
        for ctx, request in zip(contexts, requests)
    ]


def _request(ctx):
    """The message's document request (None when it is not one, or cannot be read)."""
    try:
        return ctx.document_request
    except Exception:  # noqa: BLE001 - a message routing could not read counts for nothing
        return None


def _is_report(request) -> bool:
    return request is not None and request.volet.value != "lps" and request.action.value != "delete"


def _lookup_key(patient) -> tuple[str, str, str] | None:
    """(INS, IPP, IPP domain) as the DMP gate looks the patient up in the registry."""
    ipp, ins = patient.ipp, patient.ins
    key = (ins.value if ins else "", ipp.value if ipp else "", (ipp.oid or ipp.authority) if ipp else "")
    return key if key[0] or key[1] else None


def facts_of_request(uid: str, received_at: float, header, request, known=None) -> MessageFacts | None:
    """`known`: the registry's (status, holds INS, ZFA-11, ZFA-9) of the patient, None if unknown."""
    sep = header.encoding_chars[0] if header.encoding_chars else "^"
    doc_type = doc_type_of(request.document_type.code)
    if request.volet.value == "lps":
        return MessageFacts(
            uid,
            LPS,
            month_of(received_at),
            sites.receiver_site(request.recipients, header.receiving_facility, sep),
            doc_type,
        )
    if request.action.value == "delete":  # withdraws a report: not a report of its own
        return None
    organisation = request.sender.organisation if request.sender else None
    site = sites.sender_site(organisation, header.sending_facility, lambda: _cda_organisations(request), sep)
    identity, key, consultation, feeding = _identity(request.patient, known)
    return MessageFacts(
        uid, REPORT, month_of(received_at), site, doc_type, identity, key, consultation, feeding, _flags(request.flags)
    )


def _flags(flags) -> int:
    return (
        (INVISIBLE_PATIENT if flags.invisible_patient else 0)
        | (DEST_DMP if flags.destdmp else 0)
        | (DEST_PS if flags.destmssanteps else 0)
        | (DEST_PATIENT if flags.destmssantepat else 0)
    )


def _identity(patient, known) -> tuple[str, str, str, str]:
    """(status category, patient key, ZFA-11, ZFA-9): the registry's record when it knows the
    patient (by IPP, then INS, as the DMP gate looks), else the report's own PID-32."""
    ins = patient.ins
    key = _patient_key(patient.ipp, ins)
    if known is None:
        return identity_category(patient.identity_status, ins is not None and ins.key_valid), key, "", ""
    status, has_ins, consultation, feeding = known
    return identity_category(status, has_ins), key, consultation, feeding


def _patient_key(ipp, ins) -> str:
    """A pseudonymous key of the identity (identities are counted once per month, site and type):
    a hash of the IPP with its authority, else of the INS; never the identifier itself."""
    if ipp is not None and ipp.value:
        source = f"ipp|{ipp.oid or ipp.authority}|{ipp.value}"
    elif ins is not None and ins.value:
        source = f"ins|{ins.value}"
    else:
        return ""
    return hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]


def _cda_organisations(request) -> list[tuple[str, str]]:
    """(root, extension) of the CDA custodian organisation, then of the author organisations."""
    from engine.xmlsafe import parse_untrusted

    try:
        root = parse_untrusted(request.document.content).getroot()
    except Exception:  # noqa: BLE001 - an unreadable CDA simply names no organisation
        return []
    ns = {"h": "urn:hl7-org:v3"}
    found = root.xpath("h:custodian/h:assignedCustodian/h:representedCustodianOrganization/h:id", namespaces=ns)
    found += root.xpath("h:author/h:assignedAuthor/h:representedOrganization/h:id", namespaces=ns)
    return [(e.get("root") or "", e.get("extension") or "") for e in found]


def facts_of_raw(uid: str, raw: bytes, received_at: float) -> MessageFacts | None:
    """`facts_for` from the message bytes (a message that is journaled without being routed: the
    LPS messages the mailbox poller hands to the RIS itself). Blocking: call it off the reactor."""
    from engine.docrequest import parse_document_request
    from engine.hl7.message import Message
    from engine.hl7.scan import scan

    try:
        header = scan(raw)
        request = parse_document_request(Message.parse(raw))
    except Exception:  # noqa: BLE001 - not a document request the statistics can count
        return None
    return facts_of_request(uid, received_at, header, request)
