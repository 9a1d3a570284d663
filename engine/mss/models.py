"""Small input/output models of the MSSanté connector.

They are deliberately independent from engine/docrequest: the lead maps the typed document
request onto `MssDocumentRequest` when wiring the route.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Action = Literal["initial", "replace", "delete"]


class MssFlags(BaseModel):
    """The MetaDMPMSS rows (HL7 OBX) that matter for MSSanté."""

    model_config = ConfigDict(extra="forbid")

    masque_ps: bool = False
    invisible_patient: bool = False
    invisible_rep_legaux: bool = False
    connexion_secrete: bool = False
    modif_conf_code: bool = False
    dest_dmp: bool = False
    dest_mssante_ps: bool = False
    dest_mssante_pat: bool = False
    ack_reception: bool = False
    ack_lecture: bool = False
    patient_no_reply: bool = Field(False, description="NTE-4 = FIN under DESTMSSANTEPAT")


class Recipient(BaseModel):
    """One PRT RCT row: an MSSanté address and what kind of holder it belongs to."""

    model_config = ConfigDict(extra="forbid")

    address: str
    kind: Literal["professional", "organisation", "application", "patient"] = "professional"
    identifier: str | None = Field(None, description="RPPS/IDNPS, FINESS or INS (PRT-5.1/8.10)")


class PatientIdentity(BaseModel):
    """What the mail needs about the patient (subject line, patient mailbox)."""

    model_config = ConfigDict(extra="forbid")

    family: str
    given: str = ""
    birth_date: str = Field("", description="YYYYMMDD")
    ins: str | None = Field(None, description="INS matricule, 15 characters")
    ins_oid: str | None = None
    identity_qualified: bool = Field(False, description="PID-32 = VALI")


class MssDocumentRequest(BaseModel):
    """A document to send by MSSanté, as extracted from the creator's ORU/MDM."""

    model_config = ConfigDict(extra="forbid")

    control_id: str = Field(description="MSH-10 of the request, quoted back in ZAMs")
    action: Action = "initial"
    dmp_notice: str | None = Field(
        None, description="added to the professional mail once the DMP accepted the document invisibly to the patient"
    )
    document_title: str = Field(description="label used in the subject, e.g. CR d'imagerie")
    cda: bytes
    cda_file_name: str = "DOC0001.XML"
    patient: PatientIdentity
    flags: MssFlags
    recipients: list[Recipient] = Field(default_factory=list)
    reply_to: list[str] = Field(default_factory=list, description="PRT REPLY addresses")
    body_ps: str | None = None
    body_patient: str | None = None
    extra_attachments: list[tuple[str, str, bytes]] = Field(
        default_factory=list, description="(file name, MIME type, bytes), e.g. the rendered PDF"
    )


class RecipientResult(BaseModel):
    """Outcome of the SMTP submission for one recipient (basis of ZAM^Z02)."""

    address: str
    accepted: bool
    smtp_code: int | None = None
    reason: str = ""


class MailOutcome(BaseModel):
    """A DSN or an MDN matched to a sent mail; the lead turns it into ZAM^Z02 / ZAM^Z03."""

    kind: Literal["Z02", "Z03"]
    success: bool
    address: str
    error_code: str | None = None
    error_label: str | None = None
    original_message_id: str
    request_control_id: str | None = None
