"""Typed document request (pydantic v2): what a creator asks the PFI to do with its document(s)."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, Field

from engine.docrequest.errors import HL7Error

PROFILE_TRANSMISSION = "2.1^CISIS_CDA_HL7_V2"
PROFILE_LPS = "1.1^CISIS_CDA_HL7_LPS"

FLAG_CODES: tuple[str, ...] = (
    "MASQUE_PS",
    "INVISIBLE_PATIENT",
    "INVISIBLE_REP_LEGAUX",
    "CONNEXION_SECRETE",
    "MODIF_CONF_CODE",
    "DESTDMP",
    "DESTMSSANTEPS",
    "DESTMSSANTEPAT",
    "ACK_RECEPTION",
    "ACK_LECTURE_MSS",
)
BODY_CODES: tuple[str, ...] = ("CORPSMAIL_PS", "CORPSMAIL_PATIENT")
META_CODES: tuple[str, ...] = FLAG_CODES + BODY_CODES


class Action(str, Enum):
    """What is asked for the document."""

    INITIAL = "initial"
    REPLACE = "replace"
    DELETE = "delete"


class Volet(str, Enum):
    """Which CI-SIS volet the message follows."""

    TRANSMISSION = "transmission"  # creator → PFI, 2.1^CISIS_CDA_HL7_V2
    LPS = "lps"  # PFI → consumer, 1.1^CISIS_CDA_HL7_LPS


class Header(BaseModel):
    """The original MSH fields a reply (ACK, ZAM) needs."""

    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    control_id: str = ""
    message_code: str = ""
    trigger: str = ""
    structure: str = ""
    version: str = ""
    profile: str = ""
    processing_id: str = ""
    timestamp: str = ""


class InsKind(str, Enum):
    """Which INS register an OID designates."""

    NIR = "INS-NIR"
    NIA = "INS-NIA"
    NIR_TEST = "INS-NIR-TEST"
    NIR_DEMO = "INS-NIR-DEMO"


class Identifier(BaseModel):
    """One PID-3 repetition (CX)."""

    value: str
    authority: str = ""  # CX-4.1 namespace
    oid: str = ""  # CX-4.2 universal id
    id_type: str = ""  # CX-5 (INS, PI, NH, AN...)


class Ins(BaseModel):
    """The INS found in PID-3, with its register and key check."""

    value: str
    oid: str
    kind: InsKind
    key_valid: bool


class Patient(BaseModel):
    """Patient identity from PID (names are patient data: never log them)."""

    identifiers: list[Identifier] = Field(default_factory=list)
    ipp: Identifier | None = None
    ins: Ins | None = None
    identity_status: str = ""  # PID-32 first value: VIDE / PROV / VALI ...
    identity_attributes: list[str] = Field(default_factory=list)
    family_name: str = ""
    given_names: str = ""
    birth_date: str = ""
    sex: str = ""
    account_number: str = ""  # PID-18.1

    @property
    def ins_qualified(self) -> bool:
        """True when an INS with a valid key may be used: only PID-32 = VALI allows it."""
        return self.ins is not None and self.ins.key_valid and self.identity_status == "VALI"


class Person(BaseModel):
    """XCN (PRT-5)."""

    id: str = ""
    family_name: str = ""
    given_name: str = ""
    authority_oid: str = ""
    id_type: str = ""


class Organisation(BaseModel):
    """XON (PRT-8)."""

    name: str = ""
    authority_oid: str = ""
    id_type: str = ""
    id: str = ""


class Participant(BaseModel):
    """A PRT segment: sender (SB), recipient (RCT) or reply-to (REPLY)."""

    role: str
    person: Person | None = None
    organisation: Organisation | None = None
    device_id: str = ""
    address: str = ""  # PRT-15.4 (MSSanté address when PRT-15.3 = X.400)
    address_type: str = ""  # PRT-15.3
    location: str = ""  # ERR-2 style location of the PRT segment

    @property
    def is_patient(self) -> bool:
        """True for a patient recipient (PRT-5.13 = INS or a patient.mssante.fr address)."""
        return (self.person is not None and self.person.id_type == "INS") or self.address.lower().endswith(
            "@patient.mssante.fr"
        )

    @property
    def identifier(self) -> str:
        """The best id of the participant (person, organisation or device), '' if none."""
        if self.person and self.person.id:
            return self.person.id
        if self.organisation and self.organisation.id:
            return self.organisation.id
        return self.device_id


class Note(BaseModel):
    """NTE attached to a metadata row (NTE-3 comment, NTE-4 comment type)."""

    comment: str = ""
    comment_type: str = ""


class Flags(BaseModel):
    """The MetaDMPMSS Y/N rows (None = row absent) and the mail bodies."""

    masque_ps: bool | None = None
    invisible_patient: bool | None = None
    invisible_rep_legaux: bool | None = None
    connexion_secrete: bool | None = None
    modif_conf_code: bool | None = None
    destdmp: bool | None = None
    destmssanteps: bool | None = None
    destmssantepat: bool | None = None
    ack_reception: bool | None = None
    ack_lecture_mss: bool | None = None
    corpsmail_ps: str | None = None
    corpsmail_patient: str | None = None
    notes: dict[str, list[Note]] = Field(default_factory=dict)

    @property
    def patient_may_not_reply(self) -> bool:
        """NTE-4 = FIN under DESTMSSANTEPAT → header X-MSS-MES: FIN."""
        return any(n.comment_type.upper() == "FIN" for n in self.notes.get("DESTMSSANTEPAT", []))

    def value(self, code: str) -> bool | None:
        """Flag value by MetaDMPMSS code."""
        return getattr(self, code.lower())

    # The one mapping of these rows onto each connector's flags (an absent row is N).
    def to_dmp(self):
        from engine.dmp.model import DmpFlags

        return DmpFlags(
            masque_ps=bool(self.masque_ps),
            invisible_patient=bool(self.invisible_patient),
            invisible_rep_legaux=bool(self.invisible_rep_legaux),
            connexion_secrete=bool(self.connexion_secrete),
            modif_conf_code=bool(self.modif_conf_code),
        )

    def to_mss(self):
        from engine.mss.models import MssFlags

        return MssFlags(
            **self.to_dmp().model_dump(),
            dest_dmp=bool(self.destdmp),
            dest_mssante_ps=bool(self.destmssanteps),
            dest_mssante_pat=bool(self.destmssantepat),
            ack_reception=bool(self.ack_reception),
            ack_lecture=bool(self.ack_lecture_mss),
            patient_no_reply=self.patient_may_not_reply,
        )


class CodedType(BaseModel):
    """A CE/CWE document type (J07 code, label, coding system)."""

    code: str = ""
    label: str = ""
    system: str = ""


class Document(BaseModel):
    """One document OBX (ED) and its decoded payload."""

    set_id: str = ""  # OBX-1
    location: str = ""  # e.g. OBX^1
    type: CodedType = Field(default_factory=CodedType)
    result_status: str = ""  # OBX-11 F / C / D
    content_type: str = ""  # OBX-5.2 (TEXT / text)
    subtype: str = ""  # OBX-5.3 (XML)
    encoding: str = ""  # OBX-5.4 (Base64 or empty)
    content: bytes = b""

    @property
    def looks_like_xml(self) -> bool:
        """True when the payload starts like an XML document."""
        return self.content.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<")


class Email(BaseModel):
    """LPS volet: the MSSanté e-mail OBX (OBX-3.1 Message-ID, OBX-3.2 subject, body)."""

    message_id: str = ""
    subject: str = ""
    body: str = ""


class DocumentRequest(BaseModel):
    """Everything the PFI needs to act on one ORU/MDM document message."""

    volet: Volet
    header: Header
    action: Action
    order_control: str = ""  # ORC-1
    patient: Patient
    patient_class: str = ""  # PV1-2
    visit_number: str = ""  # PV1-19.1
    document_type: CodedType
    documents: list[Document]
    document_id: str = ""  # TXA-12 (raw EI, escapes decoded)
    replaced_document_id: str = ""  # TXA-13
    sender: Participant | None = None
    recipients: list[Participant] = Field(default_factory=list)
    reply_to: list[Participant] = Field(default_factory=list)
    flags: Flags = Field(default_factory=Flags)
    email: Email | None = None
    warnings: list[HL7Error] = Field(default_factory=list)

    @property
    def document(self) -> Document:
        """The (first) document."""
        return self.documents[0]

    @property
    def mssante_addresses(self) -> list[str]:
        """Recipient MSSanté addresses in PRT order."""
        return [r.address for r in self.recipients if r.address]
