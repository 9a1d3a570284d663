"""CDA header → XDS DocumentEntry metadata, through mappings/cda-to-xds.xsl.

The XSLT does the CDA reading (what integrators adapt); this module adds what does not come from
the CDA (hash, size, request flags, UTC times) and checks that nothing required is missing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from pathlib import Path

from lxml import etree
from pydantic import BaseModel

from engine.dmp.model import DmpFlags
from engine.errors import ValidationError
from engine.xmlsafe import parse_untrusted

DEFAULT_XSLT = Path(__file__).resolve().parents[2] / "mappings" / "cda-to-xds.xsl"
M = "{urn:pfi:dmp:metadata}"
DMP_CONF_SCHEME = "1.2.250.1.213.1.1.4.13"
#: request flag → DMP confidentiality code (JDV_J08); the HL7 name INVISIBLE_REP_LEGAUX differs
FLAG_CODES = (
    ("masque_ps", "MASQUE_PS", "Document masqué aux professionnels de santé"),
    ("invisible_patient", "INVISIBLE_PATIENT", "Document non visible par le patient"),
    (
        "invisible_rep_legaux",
        "INVISIBLE_REPRESENTANTS_LEGAUX",
        "Document non visible par les représentants légaux du patient",
    ),
)


class MetadataError(ValidationError):
    """The CDA header lacks what the DMP metadata needs; `missing` names each element."""

    def __init__(self, missing: list[str]):
        self.missing = missing
        super().__init__("CDA header incomplete for DMP metadata: missing " + "; ".join(missing))


class Code(BaseModel):
    """An XDS coded value: code, codingScheme, display name."""

    code: str
    scheme: str
    display: str = ""


class Author(BaseModel):
    """One XDS author: XCN person, XON institutions, role and specialty (code^display^scheme)."""

    person: str | None = None
    institutions: list[str] = []
    roles: list[str] = []
    specialties: list[str] = []


class DocumentMetadata(BaseModel):
    """Everything the DocumentEntry needs, ready for ebRIM serialisation."""

    unique_id: str
    title: str
    language_code: str
    creation_time: str
    service_start_time: str
    service_stop_time: str | None = None
    type_code: Code
    class_code: Code
    format_code: Code
    level: str
    confidentiality_codes: list[Code]
    healthcare_facility_type_code: Code
    practice_setting_code: Code
    patient_ins: str
    patient_ins_oid: str
    source_patient_id: str
    source_patient_info: list[str]
    authors: list[Author]
    legal_authenticator: str | None = None
    #: profession/specialty code of the legal authenticator (e.g. G15_10/SM44), for the VIHF
    legal_authenticator_code: str | None = None
    event_codes: list[Code] = []
    reference_ids: list[str] = []
    replaced_document_id: str | None = None
    mime_type: str = "text/xml"
    hash: str
    size: int

    @property
    def patient_id(self) -> str:
        """The XDS patientId CX: `INS^^^&OID&ISO^NH`."""
        return f"{self.patient_ins}^^^&{self.patient_ins_oid}&ISO^NH"


class MetadataExtractor:
    """Compiles the XSLT once; `extract` is then thread-safe (one transform per thread)."""

    def __init__(self, xslt_path: Path | None = None, unique_id_with_extension: str = "reject"):
        self._xslt_doc = etree.parse(str(xslt_path or DEFAULT_XSLT))
        self._local = threading.local()
        self._caret = unique_id_with_extension == "caret"

    def _transform(self) -> etree.XSLT:
        if not hasattr(self._local, "xslt"):
            self._local.xslt = etree.XSLT(self._xslt_doc)
        return self._local.xslt

    def raw(self, cda: bytes) -> etree._Element:
        """The XSLT output for `cda` (the flat m:metadata element)."""
        return self._transform()(parse_untrusted(cda)).getroot()

    def extract(self, cda: bytes, flags: DmpFlags | None = None) -> DocumentMetadata:
        """Map `cda` to DocumentEntry metadata; raise MetadataError naming what is missing."""
        out = self.raw(cda)
        missing = [m.get("element") for m in out.iter(f"{M}missing")]
        unique_id = self._unique_id(out.find(f"{M}uniqueId"), missing)
        if missing:
            raise MetadataError(missing)
        return _build(out, unique_id, flags or DmpFlags(), cda)

    def _unique_id(self, node, missing: list[str]) -> str:
        if node is None:
            return ""
        root, ext = node.get("root", ""), node.get("extension", "")
        if ext and not self._caret:
            missing.append("ClinicalDocument/id without @extension (the DMP refuses root^extension document ids)")
        return f"{root}^{ext}" if ext else root


def _code(node) -> Code | None:
    if node is None:
        return None
    return Code(code=node.get("code", ""), scheme=node.get("scheme", ""), display=node.get("display", ""))


def _texts(out, tag: str) -> list[str]:
    return [(e.text or "").strip() for e in out.iter(f"{M}{tag}")]


def _build(out, unique_id: str, flags: DmpFlags, cda: bytes) -> DocumentMetadata:
    patient = out.find(f"{M}patientId")
    starts = [to_utc(t) for t in _texts(out, "serviceStartTime")]
    stops = [to_utc(t) for t in _texts(out, "serviceStopTime")]
    replaced = out.find(f"{M}replacedDocument")
    return DocumentMetadata(
        unique_id=unique_id,
        title=out.findtext(f"{M}title", ""),
        language_code=out.findtext(f"{M}languageCode", ""),
        creation_time=to_utc(out.findtext(f"{M}creationTime", "")),
        service_start_time=min(starts),
        service_stop_time=max(stops) if stops else None,
        type_code=_code(out.find(f"{M}typeCode")),
        class_code=_code(out.find(f"{M}classCode")),
        format_code=_code(out.find(f"{M}formatCode")),
        level=out.find(f"{M}formatCode").get("level"),
        confidentiality_codes=confidentiality(out, flags),
        healthcare_facility_type_code=_code(out.find(f"{M}healthcareFacilityTypeCode")),
        practice_setting_code=_code(out.find(f"{M}practiceSettingCode")),
        patient_ins=patient.get("extension"),
        patient_ins_oid=patient.get("root"),
        source_patient_id=out.findtext(f"{M}sourcePatientId", ""),
        source_patient_info=_texts(out, "sourcePatientInfo"),
        authors=[_author(a) for a in out.iter(f"{M}author")],
        legal_authenticator=out.findtext(f"{M}legalAuthenticator"),
        legal_authenticator_code=_attr(out.find(f"{M}legalAuthenticator"), "code"),
        event_codes=_unique_codes(out.iter(f"{M}eventCode")),
        reference_ids=list(dict.fromkeys(_texts(out, "referenceId"))),
        replaced_document_id=_replaced_id(replaced),
        hash=hashlib.sha1(cda).hexdigest(),
        size=len(cda),
    )


def _attr(node, name: str) -> str | None:
    return (node.get(name) or None) if node is not None else None


def _author(node) -> Author:
    return Author(
        person=node.findtext(f"{M}person"),
        institutions=_texts(node, "institution"),
        roles=_texts(node, "role"),
        specialties=_texts(node, "specialty"),
    )


def _unique_codes(nodes) -> list[Code]:
    seen: dict[tuple[str, str], Code] = {}
    for node in nodes:
        code = _code(node)
        seen.setdefault((code.code, code.scheme), code)
    return list(seen.values())


def _replaced_id(node) -> str | None:
    if node is None or not node.get("root"):
        return None
    ext = node.get("extension")
    return f"{node.get('root')}^{ext}" if ext else node.get("root")


def confidentiality(out, flags: DmpFlags) -> list[Code]:
    """The CDA confidentialityCode first, then one DMP code per flag set in the request."""
    codes = [_code(n) for n in out.iter(f"{M}confidentialityCode")]
    present = {c.code for c in codes}
    for attribute, code, display in FLAG_CODES:
        if getattr(flags, attribute) and code not in present:
            codes.append(Code(code=code, scheme=DMP_CONF_SCHEME, display=display))
    return codes


def to_utc(ts: str) -> str:
    """CDA TS (`YYYYMMDD[hhmm[ss[.fff]]][+-zzzz]`) → XDS DTM in UTC, keeping the precision.

    Without a zone the value is kept as is (XDS DTM is UTC; a zone-less local time cannot be
    converted faithfully and the DMP accepts date-only precision).
    """
    ts = ts.strip()
    if not ts:
        raise MetadataError(["a time value is empty"])
    zone_at = max(ts.find("+"), ts.find("-"))
    if zone_at < 0:
        return ts.split(".")[0]
    body, zone = ts[:zone_at].split(".")[0], ts[zone_at:]
    if len(body) < 12:  # date-only or hour precision: shifting by a zone is meaningless
        return body
    padded = body.ljust(14, "0")
    try:
        local = dt.datetime.strptime(padded + zone, "%Y%m%d%H%M%S%z")
    except ValueError as exc:
        raise MetadataError([f"time value {ts!r} is not a valid HL7 TS"]) from exc
    return local.astimezone(dt.timezone.utc).strftime("%Y%m%d%H%M%S")[: len(body)]
