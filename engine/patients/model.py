"""Typed values of the patient registry: what an ADT message says, and what the registry keeps.

Patient data (IPP, INS, names) lives in these objects; never log them (log control ids instead).
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum

from pydantic import BaseModel, Field

from engine.docrequest.errors import HL7Error


class Feeding(str, Enum):
    """ZFA-9: information and opposition to DMP feeding."""

    INFORMED_NOT_OPPOSED = "INO"
    INFORMED_OPPOSED = "IO"
    NOT_COLLECTED = "NA"


class Consultation(str, Enum):
    """ZFA-11: information and consent to DMP consultation."""

    INFORMED_CONSENTS = "IC"
    INFORMED_REFUSES = "INC"
    NOT_COLLECTED = "NA"


class DmpStatus(str, Enum):
    """ZFA-1: state of the patient's DMP as last known by the GAM."""

    ACTIF = "ACTIF"
    FERME = "FERME"
    INEXISTANT = "INEXISTANT"


class PatientId(BaseModel):
    """An identifier with its assigning authority (CX-1, CX-4.1 namespace, CX-4.2 universal id)."""

    value: str
    authority: str = ""
    oid: str = ""

    @property
    def domain(self) -> str:
        """The key of the assigning authority: the universal id when given, else the namespace."""
        return self.oid or self.authority


class InsId(PatientId):
    """The INS (matricule with key) and its register OID."""

    kind: str = ""
    key_valid: bool = False


class ConsentValue(BaseModel):
    """One consent answer with the date it was collected.

    `date` is the ZFA date (ZFA-10 / ZFA-12); when the sender left it empty it falls back to the
    message date (MSH-7) and `date_from_message` says so.
    """

    code: str
    date: datetime | None = None
    date_from_message: bool = False


class AdtUpdate(BaseModel):
    """What one ADT message says about one patient (read by `engine.patients.adt.read_adt`)."""

    event: str  # MSH-9.2: A01, A04, A05, A08, A28, A31, A40
    control_id: str = ""  # MSH-10
    sending_application: str = ""
    sending_facility: str = ""
    message_time: datetime | None = None  # MSH-7
    ipp: PatientId
    ins: InsId | None = None
    withdraw_ins: bool = False  # A47 downgrade: the INS leaves the record
    withdrawn_ins: str | None = None  # A47: the INS of MRG-1 that PID-3 no longer carries
    identity_status: str = ""  # PID-32 first repetition: VALI, PROV, VIDE ...
    identity_attributes: list[str] = Field(default_factory=list)
    dmp_status: DmpStatus | None = None  # ZFA-1
    dmp_status_date: datetime | None = None  # ZFA-2
    feeding: ConsentValue | None = None  # ZFA-9 / ZFA-10
    consultation: ConsentValue | None = None  # ZFA-11 / ZFA-12
    merged_ipp: PatientId | None = None  # A40: MRG-1, the IPP that disappears
    warnings: list[HL7Error] = Field(default_factory=list)

    @property
    def ins_qualified(self) -> bool:
        """True when the INS may be used as an identity: valid key and PID-32 = VALI."""
        return self.ins is not None and self.ins.key_valid and self.identity_status == "VALI"


class MergeRecord(BaseModel):
    """An A40 merge: `old_ipp` now designates the surviving patient."""

    old_ipp: PatientId
    at: float
    control_id: str = ""


class HistoryEntry(BaseModel):
    """One change of a patient record: when, by which message, what changed."""

    at: float  # engine clock (epoch seconds) when applied
    control_id: str = ""  # MSH-10 of the source message
    event: str = ""
    changes: dict[str, str | None] = Field(default_factory=dict)


class PatientRecord(BaseModel):
    """The registry's view of one patient (the surviving record after merges)."""

    id: int
    ipp: PatientId
    ins: InsId | None = None
    identity_status: str = ""
    identity_attributes: list[str] = Field(default_factory=list)
    dmp_status: str = ""
    dmp_status_date: datetime | None = None
    feeding: ConsentValue | None = None
    consultation: ConsentValue | None = None
    merges: list[MergeRecord] = Field(default_factory=list)
    withdrawn_ins: str | None = None  # the INS an A47 downgrade took away (patient data)
    created_at: float
    updated_at: float

    @property
    def ins_qualified(self) -> bool:
        """True when the stored INS came with PID-32 = VALI and a valid key."""
        return self.ins is not None and self.ins.key_valid and self.identity_status == "VALI"

    @property
    def opposed_to_feeding(self) -> bool:
        """ZFA-9 = IO (informed and opposed): nothing may be sent to this patient's DMP."""
        return self.feeding is not None and self.feeding.code == Feeding.INFORMED_OPPOSED.value
