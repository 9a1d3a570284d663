"""The LPS MDM (profile 1.1^CISIS_CDA_HL7_LPS): a CDA received by MSSanté, for the RIS/DPI.

Built from three sources only, because that is all the PFI has: the CDA header (PID, TXA,
OBR), the XDM metadata (sender as submission-set author, confidentiality flags, action) and
the mail itself (addresses, Message-ID, subject, body, date). See docs/mssante.md for the
fields of the ANS example that cannot come from a mail.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from dataclasses import dataclass, field

from engine.errors import ParseError
from engine.hl7.encode import Raw, checked_gender, checked_identifier, checked_root, checked_ts, message, msh, segment
from engine.mss.settings import LpsSettings
from engine.mss.xdm import XdmDocument, XdmPackage
from engine.xmlsafe import parse_untrusted

V3 = {"v3": "urn:hl7-org:v3"}
INS_AUTHORITIES = {
    "1.2.250.1.213.1.4.8": "ASIP-SANTE-INS-NIR",
    "1.2.250.1.213.1.4.9": "ASIP-SANTE-INS-NIA",
    "1.2.250.1.213.1.4.10": "ASIP-SANTE-INS-NIR",
    "1.2.250.1.213.1.4.11": "ASIP-SANTE-INS-NIR",
}
PS_OID = "1.2.250.1.71.4.2.1"
TRIGGERS = {"initial": ("T02", "NW", "F"), "replace": ("T10", "RO", "C"), "delete": ("T04", "CA", "D")}
FLAG_ROWS = (
    ("MASQUE_PS", "Masqué aux professionnels de Santé", ("MASQUE_PS",)),
    ("INVISIBLE_PATIENT", "Document Non Visible par le patient", ("INVISIBLE_PATIENT",)),
    (
        "INVISIBLE_REP_LEGAUX",
        "Non visible par les représentants Légaux du patient",
        ("INVISIBLE_REPRESENTANTS_LEGAUX", "INVISIBLE_REP_LEGAUX"),
    ),
)


@dataclass
class ReceivedMail:
    """What the LPS MDM takes from the mail itself."""

    message_id: str
    subject: str
    sender: str
    recipients: list[str]
    reply_to: list[str] = field(default_factory=list)
    body: str = ""
    date: dt.datetime | None = None


def _hl7_structured(value: str) -> tuple:
    """An XCN/XON written by the XDM metadata (outside data already in HL7 form): split on its
    standard delimiters and re-encoded piece by piece, so a CR or a `|` in it stays a value."""
    return tuple(tuple(comp.split("&")) if "&" in comp else comp for comp in value.split("^"))


# --------------------------------------------------------------------------- CDA header


def _first(root, path: str):
    found = root.find(path, V3)
    return found


def _attr(root, path: str, name: str) -> str:
    element = _first(root, path)
    return (element.get(name) or "") if element is not None else ""


def _text(root, path: str) -> str:
    element = _first(root, path)
    return (element.text or "").strip() if element is not None else ""


def _pid3(patient_role) -> list:
    ids = []
    for ident in patient_role.findall("v3:id", V3):
        root, ext = ident.get("root", ""), ident.get("extension", "")
        if not ext:
            continue
        checked_identifier(ext, "PID-3 (recordTarget id extension)")
        checked_root(root, "PID-3 (recordTarget id root)")
        if root in INS_AUTHORITIES:
            ids.append((ext, "", "", (INS_AUTHORITIES[root], root, "ISO"), "INS"))
        else:
            ids.append((ext, "", "", ("", root, "ISO"), "PI"))
    return ids


def _pid5(patient) -> tuple:
    names = patient.find("v3:name", V3)
    if names is None:
        return ()
    # The birth name (qualifier BR) is the INS trait; fall back to the first family element.
    family = _text(names, "v3:family[@qualifier='BR']") or _text(names, "v3:family")
    given = [(g.text or "").strip() for g in names.findall("v3:given", V3)]
    first = given[0] if given else ""
    others = " ".join(given[1:])
    return (family, first, others, "", "", "", "L")


def _address_parts(addr) -> tuple[str, str, str, str]:
    lines = [(s.text or "").strip() for s in addr.findall("v3:streetAddressLine", V3)]
    city, zip_code = _text(addr, "v3:city"), _text(addr, "v3:postalCode")
    country = _text(addr, "v3:country")
    street = lines[0] if lines else ""
    for line in lines[1:]:  # unstructured address lines, as in the ANS examples
        if re.fullmatch(r"\d{5}", line) and not zip_code:
            zip_code = line
        elif line.upper() in ("FRANCE", "FRA", "FR") and not country:
            country = line
        elif not city:
            city = line
    if country.upper() in ("FRANCE", "FR"):
        country = "FRA"
    return street, city, zip_code, country


def _pid11(patient_role, patient) -> list:
    reps = []
    addr = patient_role.find("v3:addr", V3)
    if addr is not None and addr.get("nullFlavor") is None:
        street, city, zip_code, country = _address_parts(addr)
        reps.append((street, "", city, "", zip_code, country, "H"))
    county = _text(patient, "v3:birthplace/v3:place/v3:addr/v3:county")
    if county:
        reps.append(("", "", "", "", "", "", "BDL", "", county))
    return reps


def pid_segment(cda_root) -> str:
    """PID built from recordTarget; PID-32 = VALI when an INS is present (CDA INS ⇒ qualified).
    Values that cannot be valid for their field (birth time, sex, identifiers) are refused."""
    role = _first(cda_root, "v3:recordTarget/v3:patientRole")
    if role is None:
        raise ParseError("CDA without recordTarget/patientRole")
    patient = role.find("v3:patient", V3)
    pid3 = _pid3(role)
    fields: list = [""] * 32
    fields[2] = pid3
    if patient is not None:
        fields[4] = _pid5(patient)
        fields[6] = checked_ts(_attr(patient, "v3:birthTime", "value"), "PID-7 (birthTime)")
        fields[7] = checked_gender(
            _attr(patient, "v3:administrativeGenderCode", "code"), "PID-8 (administrativeGenderCode)"
        )
        fields[10] = _pid11(role, patient)
    fields[30] = "N"  # PID-31 identity unknown indicator
    fields[31] = "VALI" if any(i[-1] == "INS" for i in pid3) else ""
    return segment("PID", *fields)


def _document_id(element, where: str) -> tuple | str:
    if element is None:
        return ""
    root, ext = element.get("root", ""), element.get("extension", "")
    checked_root(root, f"{where} (root)")
    checked_identifier(ext, f"{where} (extension)")
    return (ext, "", root, "ISO") if ext else root


def _type_code(cda_root) -> tuple:
    code = _first(cda_root, "v3:code")
    if code is None:
        return ()
    system = "LN" if code.get("codeSystem") == "2.16.840.1.113883.6.1" else "TRE_A05"
    return (checked_identifier(code.get("code", ""), "document code"), code.get("displayName", ""), system)


# --------------------------------------------------------------------------- segments


def _ts(moment: dt.datetime, minutes: bool = False) -> str:
    return moment.strftime("%Y%m%d%H%M" if minutes else "%Y%m%d%H%M%S")


def _prt(role: str, person: tuple | str = "", organisation: tuple | str = "", address: str = "") -> str:
    fields: list = [""] * 15
    fields[1], fields[3] = "UC", (role, "", "participation")
    fields[4], fields[7] = person, organisation
    fields[14] = ("", "", "X.400", address) if address else ""
    return segment("PRT", *fields)


def _sender_person(xcn: str | None) -> tuple | str:
    """Submission-set authorPerson as PRT-5; names the PS assigning authority when missing."""
    if not xcn:
        return ""
    components = list(_hl7_structured(xcn))
    if len(components) > 8:
        authority = components[8]
        parts = authority if isinstance(authority, tuple) else (authority,)
        if parts[0] == "" and len(parts) > 1 and parts[1] == PS_OID:
            components[8] = ("ASIP-SANTE-PS", *parts[1:])
    return tuple(components)


def prt_segments(mail: ReceivedMail, package: XdmPackage, settings: LpsSettings) -> list[str]:
    """SB (mail sender), RCT (each original recipient), REPLY (Reply-To)."""
    person = _sender_person(package.author_person)
    organisation = "" if person else _hl7_structured(package.author_institution or "")
    rows = [_prt("SB", person, organisation, mail.sender)]
    for address in mail.recipients:
        org = settings.mailbox_organisations.get(address.lower(), "")
        rows.append(_prt("RCT", organisation=Raw(org), address=address))
    rows += [_prt("REPLY", address=a) for a in mail.reply_to]
    return rows


def _flag_rows(document: XdmDocument, start: int) -> list[str]:
    codes = {c.upper() for c in document.confidentiality_codes}
    rows = []
    for offset, (code, label, sources) in enumerate(FLAG_ROWS):
        value = "Y" if codes & set(sources) else "N"
        rows.append(_obx_flag(start + offset, code, label, value))
    modif = "Y" if document.action == "replace" else "N"
    rows.append(_obx_flag(start + len(FLAG_ROWS), "MODIF_CONF_CODE", "Modification Confidentiality Code", modif))
    return rows


def _obx_flag(seq: int, code: str, label: str, value: str) -> str:
    return segment(
        "OBX",
        str(seq),
        "CWE",
        (code, label, "MetaDMPMSS"),
        "",
        (value, "", "expandedYes-NoIndicator"),
        "",
        "",
        "",
        "",
        "",
        "F",
    )


def build_lps_mdm(
    mail: ReceivedMail,
    package: XdmPackage,
    document: XdmDocument,
    settings: LpsSettings,
    control_id: str,
    now: dt.datetime,
) -> bytes:
    """One MDM^T02/T10/T04 per document, segments separated by CR, UTF-8. Every value from the
    CDA, the XDM metadata or the mail goes through engine.hl7.encode (no forged segment); a
    value that cannot be valid for its field raises InvalidValue (the mail is refused)."""
    cda = parse_untrusted(document.content).getroot()
    trigger, order_control, status = TRIGGERS[document.action]
    type_code = _type_code(cda)
    parent = _first(cda, "v3:relatedDocument/v3:parentDocument/v3:id")
    activity = mail.date or now
    txa: list = [""] * 22
    txa[0], txa[1], txa[2], txa[3] = "1", type_code[0] if type_code else "", "TEXT", _ts(activity, minutes=True)
    txa[11] = _document_id(_first(cda, "v3:id"), "TXA-12 (document id)")
    txa[12] = _document_id(parent, "TXA-13 (parent document id)") if document.action == "replace" else ""
    txa[16] = "AU"
    txa[21] = checked_identifier(
        _attr(cda, "v3:legalAuthenticator/v3:assignedEntity/v3:id", "extension"), "TXA-22 (legalAuthenticator id)"
    )
    segments = [
        msh(
            settings.sending_application,
            settings.sending_facility,
            settings.receiving_application,
            settings.receiving_facility,
            _ts(now),
            "",
            ("MDM", trigger, "MDM_T02"),
            control_id,
            settings.processing_id,
            "2.6",
            "",
            "",
            "",
            "",
            "FRA",
            "UNICODE UTF-8",
            "",
            "",
            ("1.1", "CISIS_CDA_HL7_LPS"),
        ),
        segment("EVN", "", _ts(now), "", "", Raw(settings.evn_operator), _ts(now)),
        pid_segment(cda),
        "PV1|1|N",
        segment("ORC", order_control),
        segment("OBR", "1", "", "", type_code),
        segment("TXA", *txa),
        segment(
            "OBX",
            "1",
            "ED",
            type_code,
            "",
            ("", "text", "XML", "Base64", base64.b64encode(document.content).decode()),
            "",
            "",
            "",
            "",
            "",
            status,
        ),
        *prt_segments(mail, package, settings),
        segment(
            "OBX",
            "2",
            "ED",
            (mail.message_id, mail.subject),
            "",
            ("", "text", "", "Base64", base64.b64encode(mail.body.encode("utf-8")).decode()),
            "",
            "",
            "",
            "",
            "",
            "F",
        ),
        *_flag_rows(document, 3),
    ]
    return message(segments)


# --------------------------------------------------------------------------- ACK


@dataclass
class AckResult:
    """MSA-1 and the error codes of an ACK from the RIS."""

    code: str
    error_code: str | None = None
    error_label: str | None = None
    hl7_error: str | None = None


def parse_ack(ack: bytes) -> AckResult:
    """Read MSA-1, ERR-3.1 and ERR-5 (application error 900–906) of a consumer ACK."""
    text = ack.decode("utf-8", "replace").strip("\x0b\x1c\r\n")
    segments = [s for s in re.split(r"\r\n|\r|\n", text) if s]
    if not segments or not segments[0].startswith("MSH") or len(segments[0]) < 8:
        raise ParseError("ACK without MSH")
    field_sep, component_sep = segments[0][3], segments[0][4]
    msa = next((s.split(field_sep) for s in segments if s.startswith("MSA")), None)
    if msa is None or len(msa) < 2:
        raise ParseError("ACK without MSA-1")
    result = AckResult(code=msa[1].strip())
    err = next((s.split(field_sep) for s in segments if s.startswith("ERR")), None)
    if err is not None:
        result.hl7_error = err[3].split(component_sep)[0].strip() if len(err) > 3 else None
        if len(err) > 5 and err[5].strip():
            parts = err[5].split(component_sep)
            result.error_code = parts[0].strip()
            result.error_label = parts[1].strip() if len(parts) > 1 else ""
    return result
