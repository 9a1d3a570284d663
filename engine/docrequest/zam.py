"""Business acknowledgements ZAM^Z01 / Z02 / Z03 (PFI → creator), CI-SIS transmission volet 2.1.

Layout (HL7 2.6, structure ZAM_Z01): MSH, EVN, status OBX (OBX-4 = MSH-10 of the request),
information OBX (Z02/Z03 only: the recipient / reader address as XTN), ERR when the status is N
(207 + the external error code in ERR-5). Sender and receiver are the request's, swapped.
Field by field, the output equals the official examples of ansforge/hl7V2-exemples
(Volets/TRANS_DOC_CDA_HL7V2/V2.1/ORU/Transmission initiale ORU/Message metier *), except that
MSH-7 carries seconds.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum

from engine.docrequest.model import PROFILE_TRANSMISSION, DocumentRequest, Header
from engine.hl7.encode import escape


class ZamKind(str, Enum):
    """Z01 DMP receipt, Z02 MSSanté receipt (DSN), Z03 MSSanté read/processing receipt (MDN)."""

    Z01 = "Z01"
    Z02 = "Z02"
    Z03 = "Z03"


# kind → (status row code^label, info row code^label, ERR-5 coding system)
_ROWS = {
    ZamKind.Z01: ("ACK_RECEPTION_DMP^Accusé de réception DMP", None, "DMPERRORCODE"),
    ZamKind.Z02: (
        "ACK_RECEPTION_MSS^Accusé de réception MSSanté",
        "DESTINATAIRE_MSS^Destinataire MSSanté",
        "SMTPERRORCODE",
    ),
    ZamKind.Z03: (
        "ACK_LECTURE_MSS^Accusé de lecture",
        "LECTEUR_MSS^Lecteur du courriel MSSanté",
        "applicationErrorCondition",
    ),
}
HL7_TS = "%Y%m%d%H%M%S"
#: ERR-5 coding system of a refusal by the PFI's own checks (HL7 "99zzz" local table): the
#: creator must not read it as an answer of the DMP or of a mail server (docs/dmp.md).
PFI_CODING_SYSTEM = "99PFI"


def wants_zam(request: DocumentRequest, kind: ZamKind | str) -> bool:
    """Did the creator ask for this ZAM? ACK_RECEPTION → Z01/Z02, ACK_LECTURE_MSS → Z03."""
    kind = ZamKind(kind)
    if kind is ZamKind.Z03:
        return bool(request.flags.ack_lecture_mss)
    return bool(request.flags.ack_reception)


def build_zam(
    kind: ZamKind | str,
    request_header: Header,
    success: bool,
    *,
    control_id: str,
    now: datetime,
    event_time: datetime | None = None,
    error_code: str | None = None,
    error_label: str | None = None,
    address: str | None = None,
    address_owner_id: str | None = None,
    severity: str = "E",
    local_error: bool = False,
) -> bytes:
    """ER7 bytes (UTF-8, CR-terminated segments) of one ZAM.

    `event_time` is the time of the acknowledged event (DMP answer, DSN, MDN; default `now`).
    `address` (required for Z02/Z03) is the recipient / reader MSSanté address, and
    `address_owner_id` its identifier (OBX-4 of the info row, optional). On failure
    `error_code`/`error_label` are the DMP, SMTP or MDN application error, or with
    `local_error` the PFI's own refusal (ERR-5 coding system 99PFI).
    """
    kind = ZamKind(kind)
    status_row, info_row, error_system = _ROWS[kind]
    if info_row and not address:
        raise ValueError(f"ZAM^{kind.value} needs the recipient address (information OBX)")
    if not success and not error_code:
        raise ValueError(f"a failed ZAM^{kind.value} needs error_code for ERR-5")
    segments = [
        _msh(kind, request_header, control_id, now),
        f"EVN||{(event_time or now).strftime(HL7_TS)}",
        _obx(1, "CWE", status_row, request_header.control_id, f"{'Y' if success else 'N'}^^expandedYes-NoIndicator"),
    ]
    if info_row:
        segments.append(_obx(2, "XTN", info_row, address_owner_id or "", f"^^X.400^{escape(address)}"))
    if not success:
        system = PFI_CODING_SYSTEM if local_error else error_system
        segments.append(_err(error_code, error_label or "", system, severity))
    return "".join(s + "\r" for s in segments).encode("utf-8")


def _msh(kind: ZamKind, req: Header, control_id: str, now: datetime) -> str:
    fields = [
        "MSH",
        "^~\\&",
        escape(req.receiving_application),
        escape(req.receiving_facility),
        escape(req.sending_application),
        escape(req.sending_facility),
        now.strftime(HL7_TS),
        "",
        f"ZAM^{kind.value}^ZAM_Z01",
        escape(control_id),
        req.processing_id or "P",
        "2.6",
        "",
        "",
        "",
        "",
        "FRA",
        "UNICODE UTF-8",
        "",
        "",
        PROFILE_TRANSMISSION,
    ]
    return "|".join(fields)


def _obx(set_id: int, value_type: str, code_label: str, sub_id: str, value: str) -> str:
    return "|".join(
        [
            "OBX",
            str(set_id),
            value_type,
            f"{code_label}^AckMetierZAM",
            escape(sub_id),
            value,
            "",
            "",
            "",
            "",
            "",
            "F",
            "",
        ]
    )


def _err(code: str, label: str, system: str, severity: str) -> str:
    return "|".join(
        [
            "ERR",
            "",
            "",
            "207^Application internal error^messageErrorCondition",
            severity,
            f"{escape(code)}^{escape(label)}^{system}",
        ]
    )
