"""Coded errors of document requests, ready to become an ERR segment of a NACK (or a warning).

MSA code policy (see docs/document-requests.md): every problem found in the message itself is
`AE` — re-sending the same message can never succeed, and the ANS examples answer even an
unsupported version with AE. `AR` is reserved for circumstantial refusals (engine side) and is
never produced here. ERR-3 uses HL7 table 0357; application rules use 207 with a local code in
ERR-5 (coding system `99PFI`, HL7's convention for local tables).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from engine.errors import ValidationError
from engine.hl7.encode import escape

# HL7 table 0357 (subset listed by the ANS volets).
HL7_ERROR_LABELS: dict[int, str] = {
    0: "Message accepted",
    100: "Segment sequence error",
    101: "Required field missing",
    102: "Data type error",
    103: "Table value not found",
    198: "Non-conformant cardinality",
    199: "Other error",
    200: "Unsupported message type",
    201: "Unsupported event code",
    202: "Unsupported processing id",
    203: "Unsupported version id",
    207: "Application internal error",
}
ERR3_SYSTEM = "messageErrorCondition"
LOCAL_SYSTEM = "99PFI"

# Local application error codes (ERR-5 with ERR-3 = 207).
APP_ERRORS: dict[str, str] = {
    "ACTION_INCONSISTENT": "Trigger, ORC-1 and OBX-11 disagree on the action",
    "INS_KEY_INVALID": "INS control key is wrong",
    "INS_MISMATCH": "INS in PID-3 differs from the CDA recordTarget",
    "INS_ABSENT_IN_CDA": "PID-3 carries an INS but the CDA recordTarget has none",
    "CDA_NOT_WELL_FORMED": "Embedded CDA is not well-formed XML",
    "CDA_ID_MISSING": "CDA id is missing",
    "CDA_SETID_MISSING": "CDA setId is missing",
    "CDA_VERSION_MISSING": "CDA versionNumber is missing",
    "DOC_ID_MISMATCH": "TXA-12 differs from the CDA id",
    "RPLC_MISSING": "Replacement without relatedDocument RPLC in the CDA",
    "RPLC_MISMATCH": "TXA-13 differs from the CDA parentDocument id",
    "DOCTYPE_MISMATCH": "Document type in the message differs from the CDA code",
    "DMP_NO_SENDER": "DMP sending requested without a PRT SB sender",
    "DMP_INS_NOT_QUALIFIED": "DMP sending requested without a qualified INS",
    "MSS_NO_RECIPIENT": "MSSanté sending requested without a recipient address",
    "MAILBODY_TRUNCATED": "Mail body base64 was truncated; the decodable part is kept",
    "FLAG_ROW_UNKNOWN": "Unknown MetaDMPMSS row ignored",
    "FLAG_ORDER": "MetaDMPMSS rows are not in the specified order",
}


class HL7Error(BaseModel):
    """One coded problem: ERR-2 location, ERR-3 code, ERR-4 severity, ERR-5 application code."""

    code: int
    message: str
    location: str | None = None
    severity: Literal["E", "W", "I", "F"] = "E"
    app_code: str | None = None
    app_label: str | None = None
    app_system: str = LOCAL_SYSTEM
    ack_code: Literal["AE", "AR"] = "AE"

    @property
    def code_label(self) -> str:
        """Label of the ERR-3 code in table 0357."""
        return HL7_ERROR_LABELS.get(self.code, "Other error")

    def err_segment(self, field_sep: str = "|") -> str:
        """The ERR segment (HL7 2.5/2.6 layout); the human message goes to ERR-8."""
        err3 = f"{self.code}^{self.code_label}^{ERR3_SYSTEM}"
        err5 = ""
        if self.app_code:
            err5 = f"{escape(self.app_code)}^{escape(self.app_label or '')}^{self.app_system}"
        fields = ["ERR", "", self.location or "", err3, self.severity, err5, "", "", escape(self.message)]
        return field_sep.join(fields)

    def __str__(self) -> str:
        where = f" at {self.location}" if self.location else ""
        app = f" [{self.app_code}]" if self.app_code else ""
        return f"{self.code} {self.code_label}{app}{where}: {self.message}"


def app_error(app_code: str, message: str, location: str | None = None, severity: Literal["E", "W"] = "E") -> HL7Error:
    """A 207 application error with a local ERR-5 code."""
    return HL7Error(
        code=207,
        message=message,
        location=location,
        severity=severity,
        app_code=app_code,
        app_label=APP_ERRORS[app_code],
    )


class RequestError(ValidationError):
    """A document request that cannot be accepted; `.error` is the HL7Error for the NACK."""

    def __init__(self, error: HL7Error):
        self.error = error
        super().__init__(str(error))

    @classmethod
    def of(cls, code: int, message: str, location: str | None = None) -> "RequestError":
        """Shortcut for a table-0357 error without an application code."""
        return cls(HL7Error(code=code, message=message, location=location))

    @classmethod
    def app(cls, app_code: str, message: str, location: str | None = None) -> "RequestError":
        """Shortcut for a 207 application error."""
        return cls(app_error(app_code, message, location))
