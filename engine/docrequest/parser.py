"""Build a DocumentRequest from an ORU^R01 / MDM^T02|T10|T04 message (CI-SIS volets).

Accepted profiles: `2.1^CISIS_CDA_HL7_V2` (creator → PFI) and `1.1^CISIS_CDA_HL7_LPS` (PFI → LPS).
Superseded profiles (2.0, 1.2, LPS 1.0) are refused with ERR 203 on MSH-21: their layouts differ
(no ORC/OBR, ORC-1 SC, renamed metadata rows) and Ségur vague 2 requires 2.1.
The first blocking problem raises RequestError; tolerated defects become `request.warnings`.
"""

from __future__ import annotations

from engine.docrequest.errors import HL7Error, RequestError, app_error
from engine.docrequest.identity import INS_OIDS, LEGACY_INSC_OIDS, nir_key_valid
from engine.docrequest.model import (
    BODY_CODES,
    FLAG_CODES,
    META_CODES,
    PROFILE_LPS,
    PROFILE_TRANSMISSION,
    Action,
    CodedType,
    Document,
    DocumentRequest,
    Email,
    Flags,
    Header,
    Identifier,
    Ins,
    InsKind,
    Note,
    Organisation,
    Participant,
    Patient,
    Person,
    Volet,
)
from engine.docrequest.payload import Base64Error, decode_base64
from engine.hl7.message import Message, Segment, split_text

SUPERSEDED_PROFILES = {"2.0^CISIS_CDA_HL7_V2", "1.2^CISIS_CDA_HL7_V1", "1.0^CISIS_CDA_HL7_LPS"}
TRIGGERS = {
    ("ORU", "R01"): None,
    ("MDM", "T02"): Action.INITIAL,
    ("MDM", "T10"): Action.REPLACE,
    ("MDM", "T04"): Action.DELETE,
}
ORC_ACTIONS = {"NW": Action.INITIAL, "RO": Action.REPLACE, "CA": Action.DELETE}
OBX11_ACTIONS = {"F": Action.INITIAL, "C": Action.REPLACE, "D": Action.DELETE}
REQUIRED_FLAGS = {
    Volet.TRANSMISSION: FLAG_CODES[:8],
    Volet.LPS: ("MASQUE_PS", "INVISIBLE_PATIENT", "INVISIBLE_REP_LEGAUX", "MODIF_CONF_CODE"),
}
YES_NO = {"Y": True, "N": False}


def parse_document_request(msg: Message) -> DocumentRequest:
    """Return the typed request carried by `msg`, or raise RequestError (coded for the NACK)."""
    try:
        return _Reader(msg).build()
    except RequestError:
        raise
    except (ValueError, IndexError, KeyError, TypeError, UnicodeError) as exc:
        # Safety net: a defect of this reader must still produce a coded NACK, not a traceback.
        raise RequestError.of(199, f"message could not be interpreted ({type(exc).__name__})") from exc


class _Reader:
    """One pass over a message; keeps segment occurrence numbers for ERR-2 locations."""

    def __init__(self, msg: Message):
        self.msg = msg
        self.segs = msg.all_segments
        self.occurrence: dict[int, int] = {}
        counts: dict[str, int] = {}
        for seg in self.segs:
            counts[seg.name] = counts.get(seg.name, 0) + 1
            self.occurrence[id(seg)] = counts[seg.name]
        self.warnings: list[HL7Error] = []

    # -- small helpers --------------------------------------------------------------------
    def loc(self, seg: Segment, field: int | None = None) -> str:
        where = f"{seg.name}^{self.occurrence[id(seg)]}"
        return f"{where}^{field}" if field else where

    def value(self, seg: Segment, field: int, comp: int = 1, sub: int | None = None, rep: int = 1) -> str:
        reps = seg.repetitions(field)
        if rep > len(reps):
            return ""
        return self.leaf(reps[rep - 1], comp, sub)

    def leaf(self, text: str, comp: int = 1, sub: int | None = None) -> str:
        enc = self.msg.encoding
        parts = text.split(enc.component)
        value = parts[comp - 1] if comp <= len(parts) else ""
        if sub is not None:
            subs = value.split(enc.subcomponent) if enc.subcomponent else [value]
            value = subs[sub - 1] if sub <= len(subs) else ""
        return self.msg.unescape(value).strip()

    def one(self, name: str, required: bool = True) -> Segment | None:
        found = self.msg.segments(name)
        if not found and required:
            raise RequestError.of(100, f"required segment {name} is missing", name)
        return found[0] if found else None

    def warn(self, error: HL7Error) -> None:
        self.warnings.append(error.model_copy(update={"severity": "W"}))

    # -- build ---------------------------------------------------------------------------
    def build(self) -> DocumentRequest:
        header = self.header()
        if header.message_code not in ("ORU", "MDM"):
            raise RequestError.of(
                200,
                f"message type {header.message_code or '(empty)'} is not a document request (ORU or MDM)",
                "MSH^1^9",
            )
        volet = self.volet(header)
        trigger_action = self.trigger_action(header, volet)
        patient = self.patient()
        documents = self.documents(header)
        order_control = self.order_control()
        action = self.action(trigger_action, order_control, documents)
        doc_type = self.document_type(documents[0])
        txa = self.msg.segments("TXA")
        request = DocumentRequest(
            volet=volet,
            header=header,
            action=action,
            order_control=order_control,
            patient=patient,
            document_type=doc_type,
            documents=documents,
            patient_class=self.opt("PV1-2.1"),
            visit_number=self.opt("PV1-19.1"),
            document_id=self.txa_id(txa, 12),
            replaced_document_id=self.txa_id(txa, 13),
            email=self.email(volet, documents),
            flags=self.flags(volet),
        )
        self.participants(request)
        self.check_txa(request, txa)
        self.check_routes(request)
        request.warnings = self.warnings
        return request

    def opt(self, path: str) -> str:
        return (self.msg.get(path) or "").strip()

    def header(self) -> Header:
        msh = self.segs[0]
        code, trigger, structure = (self.value(msh, 9, i) for i in (1, 2, 3))
        return Header(
            sending_application=self.value(msh, 3),
            sending_facility=self.value(msh, 4),
            receiving_application=self.value(msh, 5),
            receiving_facility=self.value(msh, 6),
            timestamp=self.value(msh, 7),
            message_code=code,
            trigger=trigger,
            structure=structure,
            control_id=self.value(msh, 10),
            processing_id=self.value(msh, 11),
            version=self.value(msh, 12),
            profile=self.msg.profile,
        )

    def volet(self, header: Header) -> Volet:
        profile = header.profile
        if profile == PROFILE_TRANSMISSION:
            return Volet.TRANSMISSION
        if profile == PROFILE_LPS:
            return Volet.LPS
        if not profile:
            raise RequestError.of(
                101, f"MSH-21 message profile is required ({PROFILE_TRANSMISSION} or {PROFILE_LPS})", "MSH^1^21"
            )
        reason = "is superseded" if profile in SUPERSEDED_PROFILES else "is not supported"
        raise RequestError.of(
            203, f"profile {profile} {reason}; accepted: {PROFILE_TRANSMISSION}, {PROFILE_LPS}", "MSH^1^21"
        )

    def trigger_action(self, header: Header, volet: Volet) -> Action | None:
        if volet is Volet.LPS and header.message_code != "MDM":
            raise RequestError.of(200, "the LPS volet only carries MDM messages", "MSH^1^9")
        key = (header.message_code, header.trigger)
        if key not in TRIGGERS:
            raise RequestError.of(
                201,
                f"event {header.message_code}^{header.trigger} is not supported (ORU^R01, MDM^T02/T10/T04)",
                "MSH^1^9",
            )
        expected = "2.5" if header.message_code == "ORU" else "2.6"
        if not header.version.startswith(expected):
            self.warn(
                HL7Error(
                    code=203,
                    location="MSH^1^12",
                    message=f"{header.message_code} should be HL7 {expected}, got {header.version or '(empty)'}",
                )
            )
        return TRIGGERS[key]

    # -- patient ---------------------------------------------------------------------------
    def patient(self) -> Patient:
        pid = self.one("PID")
        reps = [r for r in pid.repetitions(3) if r.strip()]
        if not reps:
            raise RequestError.of(101, "PID-3 patient identifier list is required", "PID^1^3")
        if not self.value(pid, 5):
            raise RequestError.of(101, "PID-5 patient name is required", "PID^1^5")
        identifiers = [self.identifier(r) for r in reps]
        statuses = [self.leaf(r) for r in pid.repetitions(32) if self.leaf(r)]
        patient = Patient(
            identifiers=identifiers,
            ipp=next((i for i in identifiers if i.id_type == "PI"), None),
            identity_status=statuses[0] if statuses else "",
            identity_attributes=statuses[1:],
            family_name=self.value(pid, 5, 1),
            given_names=self.value(pid, 5, 2),
            birth_date=self.value(pid, 7),
            sex=self.value(pid, 8),
            account_number=self.value(pid, 18),
        )
        patient.ins = self.ins(identifiers, patient.identity_status)
        return patient

    def identifier(self, rep: str) -> Identifier:
        return Identifier(
            value=self.leaf(rep, 1), authority=self.leaf(rep, 4, 1), oid=self.leaf(rep, 4, 2), id_type=self.leaf(rep, 5)
        )

    def ins(self, identifiers: list[Identifier], status: str) -> Ins | None:
        candidates = []
        for ident in identifiers:
            if ident.oid in INS_OIDS:
                candidates.append(ident)
            elif ident.id_type == "INS" or ident.oid in LEGACY_INSC_OIDS:
                self.warn(
                    HL7Error(
                        code=103,
                        location="PID^1^3",
                        message="INS-typed identifier with an OID that is not an INS register: ignored",
                    )
                )
        if not candidates:
            return None
        # PAM.fr: during an NIA → NIR transition both may be present; the NIR wins.
        chosen = min(candidates, key=lambda i: INS_OIDS[i.oid] is InsKind.NIA)
        ins = Ins(value=chosen.value, oid=chosen.oid, kind=INS_OIDS[chosen.oid], key_valid=nir_key_valid(chosen.value))
        if not ins.key_valid and status == "VALI":
            raise RequestError.app(
                "INS_KEY_INVALID", "the INS matricule in PID-3 has a wrong control key or format", "PID^1^3"
            )
        if status != "VALI":
            self.warn(
                HL7Error(
                    code=207,
                    location="PID^1^32",
                    message=f"identity status {status or '(empty)'} is not VALI: the INS will not be used",
                )
            )
        return ins

    # -- documents and action ---------------------------------------------------------
    def order_control(self) -> str:
        orc = self.one("ORC")
        value = self.value(orc, 1)
        if value not in ORC_ACTIONS:
            raise RequestError.of(103, f"ORC-1 {value or '(empty)'} is not NW, RO or CA", "ORC^1^1")
        return value

    def document_obx(self) -> list[Segment]:
        return [s for s in self.msg.segments("OBX") if self.value(s, 2) == "ED" and self.value(s, 3, 3) != "MetaDMPMSS"]

    def documents(self, header: Header) -> list[Document]:
        candidates = self.document_obx()
        if not candidates:
            raise RequestError.of(100, "no document OBX (OBX-2 = ED) in the message", "OBX")
        if header.profile == PROFILE_LPS:
            candidates = candidates[:1]  # the second ED OBX is the e-mail itself
        elif header.message_code == "MDM" and len(candidates) > 1:
            raise RequestError.of(198, "an MDM carries exactly one document", self.loc(candidates[1]))
        return [self.document(obx) for obx in candidates]

    def document(self, obx: Segment) -> Document:
        status = self.value(obx, 11)
        if status not in OBX11_ACTIONS:
            raise RequestError.of(
                103, f"OBX-11 {status or '(empty)'} of the document is not F, C or D", self.loc(obx, 11)
            )
        encoding, payload = self.value(obx, 5, 4), self.ed_data(obx)
        if not payload.strip():
            raise RequestError.of(101, "the document OBX-5.5 carries no data", self.loc(obx, 5))
        return Document(
            set_id=self.value(obx, 1),
            location=self.loc(obx),
            type=CodedType(code=self.value(obx, 3, 1), label=self.value(obx, 3, 2), system=self.value(obx, 3, 3)),
            result_status=status,
            content_type=self.value(obx, 5, 2),
            subtype=self.value(obx, 5, 3),
            encoding=encoding,
            content=self.payload(payload, encoding, obx),
        )

    def payload(self, raw: str, encoding: str, obx: Segment) -> bytes:
        if encoding.upper() != "BASE64":
            return self.msg.unescape(raw).encode("utf-8")
        try:
            return decode_base64(raw)[0]
        except Base64Error as exc:
            raise RequestError.of(102, f"document base64 cannot be decoded: {exc}", self.loc(obx, 5)) from exc

    def action(self, by_trigger: Action | None, orc1: str, documents: list[Document]) -> Action:
        by_orc = ORC_ACTIONS[orc1]
        for doc in documents:
            by_obx = OBX11_ACTIONS[doc.result_status]
            if by_obx is not by_orc:
                raise RequestError.app(
                    "ACTION_INCONSISTENT",
                    f"ORC-1 {orc1} means {by_orc.value} but document OBX-11 {doc.result_status} means {by_obx.value}",
                    f"{doc.location}^11",
                )
        if by_trigger is not None and by_trigger is not by_orc:
            header = self.segs[0]
            raise RequestError.app(
                "ACTION_INCONSISTENT",
                f"event {self.value(header, 9, 2)} means {by_trigger.value} but ORC-1 {orc1} means {by_orc.value}",
                "ORC^1^1",
            )
        return by_orc

    def document_type(self, document: Document) -> CodedType:
        doc_type = document.type
        sources = [("OBR-4", self.opt("OBR-4.1"), "OBR^1^4"), ("TXA-2", self.opt("TXA-2.1"), "TXA^1^2")]
        for name, code, where in sources:
            if code and doc_type.code and code != doc_type.code:
                raise RequestError.app(
                    "DOCTYPE_MISMATCH", f"{name} {code} differs from the document OBX-3 {doc_type.code}", where
                )
        if not doc_type.code:
            raise RequestError.of(101, "document type OBX-3.1 is required", f"{document.location}^3")
        return doc_type

    # -- TXA ----------------------------------------------------------------------------
    def txa_id(self, txa: list[Segment], field: int) -> str:
        if not txa:
            return ""
        return self.msg.unescape(txa[0].repetitions(field)[0]).strip()

    def check_txa(self, request: DocumentRequest, txa: list[Segment]) -> None:
        if request.header.message_code != "MDM":
            return
        if not txa:
            raise RequestError.of(100, "required segment TXA is missing", "TXA")
        if not request.document_id:
            raise RequestError.of(101, "TXA-12 unique document number is required", "TXA^1^12")
        if request.action is Action.REPLACE and not request.replaced_document_id:
            raise RequestError.of(101, "TXA-13 parent document number is required for a replacement", "TXA^1^13")

    # -- PRT ----------------------------------------------------------------------------
    def participants(self, request: DocumentRequest) -> None:
        for prt in self.msg.segments("PRT"):
            part = self.participant(prt)
            if part.role == "SB" and request.sender is None:
                request.sender = part
            elif part.role == "RCT":
                request.recipients.append(part)
            elif part.role == "REPLY":
                request.reply_to.append(part)
            else:
                self.warn(
                    HL7Error(
                        code=103,
                        location=self.loc(prt, 4),
                        message=f"PRT-4 role {part.role or '(empty)'} ignored (SB, RCT, REPLY expected once for SB)",
                    )
                )

    def participant(self, prt: Segment) -> Participant:
        person = Person(
            id=self.value(prt, 5, 1),
            family_name=self.value(prt, 5, 2),
            given_name=self.value(prt, 5, 3),
            id_type=self.value(prt, 5, 13),
            authority_oid=self.value(prt, 5, 9, 2) or self.oid_like(self.value(prt, 5, 9, 1)),
        )
        org = Organisation(
            name=self.value(prt, 8, 1),
            authority_oid=self.value(prt, 8, 6, 2),
            id_type=self.value(prt, 8, 7),
            id=self.value(prt, 8, 10),
        )
        return Participant(
            role=self.value(prt, 4, 1),
            location=self.loc(prt),
            person=person if any(person.model_dump().values()) else None,
            organisation=org if any(org.model_dump().values()) else None,
            device_id=self.value(prt, 10, 1),
            address_type=self.value(prt, 15, 3),
            address=self.value(prt, 15, 4),
        )

    @staticmethod
    def oid_like(text: str) -> str:
        parts = text.split(".")
        return text if len(parts) > 1 and all(p.isdigit() for p in parts) else ""

    def check_routes(self, request: DocumentRequest) -> None:
        """Preconditions of the requested routes that the message alone can break."""
        if request.volet is not Volet.TRANSMISSION:
            return
        flags = request.flags
        if flags.destdmp and request.sender is None:
            raise RequestError.app(
                "DMP_NO_SENDER", "DESTDMP=Y needs the PRT SB sender (VIHF and submission-set author)", "PRT"
            )
        if flags.destdmp and not request.patient.ins_qualified:
            # Not a reason to refuse the report (the RIS still needs it): the DMP gate blocks the
            # publication later, records why, and answers a ZAM^Z01 failure when asked.
            self.warn(
                HL7Error(
                    code=207,
                    location="PID^1^3",
                    severity="W",
                    app_code="DMP_INS_NOT_QUALIFIED",
                    message="DESTDMP=Y needs a qualified INS (PID-3 INS with a valid key "
                    "and PID-32 = VALI): the DMP publication will be blocked",
                )
            )
        if flags.destmssanteps and not any(r.address and not r.is_patient for r in request.recipients):
            raise RequestError.app(
                "MSS_NO_RECIPIENT",
                "DESTMSSANTEPS=Y but no PRT RCT carries a professional MSSanté address (PRT-15.4)",
                "PRT",
            )
        if flags.destmssantepat and not any(r.address and r.is_patient for r in request.recipients):
            raise RequestError.app(
                "MSS_NO_RECIPIENT",
                "DESTMSSANTEPAT=Y but no PRT RCT carries the patient MSSanté address (PRT-15.4)",
                "PRT",
            )

    # -- MetaDMPMSS -----------------------------------------------------------------------
    def flags(self, volet: Volet) -> Flags:
        flags = Flags()
        seen: list[str] = []
        for obx, notes in self.meta_rows():
            code = self.value(obx, 3, 1)
            if code not in META_CODES:
                self.warn(app_error("FLAG_ROW_UNKNOWN", f"MetaDMPMSS row {code} ignored", self.loc(obx, 3)))
                continue
            if code in seen:
                raise RequestError.of(198, f"MetaDMPMSS row {code} appears twice", self.loc(obx, 3))
            seen.append(code)
            self.set_flag(flags, code, obx)
            if notes:
                flags.notes[code] = notes
        self.check_flag_rows(volet, seen)
        return flags

    def meta_rows(self) -> list[tuple[Segment, list[Note]]]:
        rows: list[tuple[Segment, list[Note]]] = []
        current: list[Note] | None = None
        for seg in self.segs:
            if seg.name == "OBX":
                is_meta = self.value(seg, 3, 3) == "MetaDMPMSS"
                current = [] if is_meta else None
                if is_meta:
                    rows.append((seg, current))
            elif seg.name == "NTE" and current is not None:
                current.append(Note(comment=self.value(seg, 3), comment_type=self.value(seg, 4)))
        return rows

    def set_flag(self, flags: Flags, code: str, obx: Segment) -> None:
        if code in BODY_CODES:
            setattr(flags, code.lower(), self.mail_body(obx))
            return
        value = self.value(obx, 5, 1).upper()
        if value not in YES_NO:
            raise RequestError.of(
                103, f"MetaDMPMSS row {code}: OBX-5 {value or '(empty)'} is not Y or N", self.loc(obx, 5)
            )
        setattr(flags, code.lower(), YES_NO[value])

    def ed_data(self, obx: Segment) -> str:
        """OBX-5.5 of an ED value, still escaped (base64 never contains delimiters)."""
        parts = split_text(obx.repetitions(5)[0], self.msg.encoding.component)
        return parts[4] if len(parts) >= 5 else ""

    def mail_body(self, obx: Segment) -> str:
        data = self.ed_data(obx)
        if self.value(obx, 5, 4).upper() != "BASE64":
            return self.msg.unescape(data)
        try:
            body, truncated = decode_base64(data, allow_truncated=True)
        except Base64Error as exc:
            raise RequestError.of(102, f"mail body base64 cannot be decoded: {exc}", self.loc(obx, 5)) from exc
        if truncated:
            self.warn(
                app_error(
                    "MAILBODY_TRUNCATED", "mail body base64 truncated; the decodable part is kept", self.loc(obx, 5)
                )
            )
        return body.decode("utf-8", errors="replace")

    def check_flag_rows(self, volet: Volet, seen: list[str]) -> None:
        for code in REQUIRED_FLAGS[volet]:
            if code not in seen:
                raise RequestError.of(101, f"required MetaDMPMSS row {code} is missing", "OBX")
        ordered = [c for c in META_CODES if c in seen]
        if seen != ordered:
            self.warn(app_error("FLAG_ORDER", "MetaDMPMSS rows are not in the specified order"))

    # -- LPS e-mail ---------------------------------------------------------------------
    def email(self, volet: Volet, documents: list[Document]) -> Email | None:
        if volet is not Volet.LPS:
            return None
        candidates = self.document_obx()[1:2]
        if not candidates:
            return None
        obx = candidates[0]
        return Email(message_id=self.value(obx, 3, 1), subject=self.value(obx, 3, 2), body=self.mail_body(obx))
