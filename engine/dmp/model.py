"""The DMP connector's own input and output models.

The HL7 side (MDM/ORU parsing, docrequest) builds a `PublishRequest`; the connector answers with a
`DmpResult` that the route maps to the journal state and to the ZAM^Z01 business ack.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class DmpFlags(BaseModel):
    """The MetaDMPMSS OBX rows that matter for the DMP (hl7v2-volets §a.9), Y → True."""

    model_config = ConfigDict(frozen=True)

    masque_ps: bool = False
    invisible_patient: bool = False
    invisible_rep_legaux: bool = False
    connexion_secrete: bool = False
    modif_conf_code: bool = False


class Person(BaseModel):
    """A health professional (PRT-5 XCN): national id (IDNPS/RPPS), family and given names."""

    model_config = ConfigDict(frozen=True)

    id: str
    family: str = ""
    given: str = ""
    id_oid: str = "1.2.250.1.71.4.2.1"
    id_type: str = "IDNPS"
    #: profession / specialty codes for the VIHF Role attribute, e.g. ("10", "1.2.250.1.71.1.2.7")
    roles: tuple[tuple[str, str], ...] = ()

    @property
    def national_id(self) -> str:
        """The IDNPS (VIHF NameID, authorPerson): type digit + number for an RPPS (8 + 11 digits)
        or an ADELI (0 + 9 characters); an IDNPS, or an id already in that form, as given."""
        kind, ident = self.id_type.upper(), self.id.strip()
        prefix, length = NATIONAL_PREFIX.get(kind, ("", 0))
        return prefix + ident if prefix and len(ident) == length else ident


#: PRT-5.13 identifier type -> (IDNPS prefix, length of the bare number); ANS identifier types
NATIONAL_PREFIX = {"RPPS": ("8", 11), "ADELI": ("0", 9)}


class Organisation(BaseModel):
    """The sending organisation (PRT-8 XON): name and national structure id (PRT-8.10)."""

    model_config = ConfigDict(frozen=True)

    name: str
    id: str
    id_type: str = "IDNST"


class PublishRequest(BaseModel):
    """One DMP action for one CDA document, with what HL7 adds to the CDA header."""

    model_config = ConfigDict(frozen=True)

    action: Literal["initial", "replace", "delete"]
    cda: bytes
    ins: str
    ins_oid: str
    ins_qualified: bool
    #: the IPP (PID-3 PI) and its authority (CX-4.2, else CX-4.1): the gate asks the PAM.fr registry by it
    ipp: str = ""
    ipp_domain: str = ""
    flags: DmpFlags = Field(default_factory=DmpFlags)
    #: uniqueId of the version being replaced (TXA-13); if None the CDA relatedDocument RPLC is used
    replaced_document_id: str | None = None
    #: PRT SB: the person behind the request (VIHF subject, submission-set authorPerson)
    sender: Person | None = None
    #: PRT SB organisation (VIHF Identifiant_Structure, submission-set authorInstitution)
    sender_organisation: Organisation | None = None
    #: PV1-2 patient class, drives the submission-set contentTypeCode (I, O, R, N, E)
    patient_class: str | None = None
    message_control_id: str


class DmpResult(BaseModel):
    """What the DMP (or the gate in front of it) made of one request."""

    status: Literal["success", "partial", "error"]
    transient: bool = False
    error_code: str | None = None
    error_label: str | None = None
    entry_uuid: str | None = None
    detail: str = ""
    # True when the code is the DMP's own answer (registry error, SOAP fault); False for a refusal
    # by the PFI's checks or transport: the ZAM^Z01 must not dress those as DMP errors.
    from_dmp: bool = False

    @property
    def ok(self) -> bool:
        """True when the document is in the DMP (success or partial success)."""
        return self.status != "error"

    @property
    def certificate_refused(self) -> bool:
        """The DMP refused our organisation certificate (TLS alert, or a SOAP authentication
        fault): no message can pass until an operator acts, so the queue pauses."""
        return self.error_code in CERTIFICATE_REFUSED_CODES


#: codes of a refused organisation certificate: TLS alert (engine/dmp/transport.py) and the
#: WS-Security authentication fault (the simulator's answer to a certificate/VIHF structure mismatch)
CERTIFICATE_REFUSED_CODES = frozenset({"TLS_CLIENT_CERT_REFUSED", "wsse:FailedAuthentication"})


def success(entry_uuid: str | None, detail: str = "") -> DmpResult:
    """A successful outcome."""
    return DmpResult(status="success", entry_uuid=entry_uuid, detail=detail)


def permanent(code: str, label: str, detail: str = "") -> DmpResult:
    """A failure that retrying cannot fix (dead letter with the DMP's code)."""
    return DmpResult(status="error", transient=False, error_code=code, error_label=label, detail=detail)


def transient(code: str, label: str, detail: str = "") -> DmpResult:
    """A failure worth retrying with the destination's policy."""
    return DmpResult(status="error", transient=True, error_code=code, error_label=label, detail=detail)
