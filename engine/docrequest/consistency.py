"""Consistency between a document request and its embedded CDA header(s).

Only the CDA header is read (ids, code, recordTarget, relatedDocument), through
engine.xmlsafe.parse_untrusted. Each failure is an HL7Error (207 + local ERR-5 code, severity E,
MSA AE); a missing setId is only a warning (W): the ANS's own vague-2 MDM CDAs lack it and the
structuration-minimale Schematron already reports it.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from engine.docrequest.errors import HL7Error, app_error
from engine.docrequest.identity import INS_OIDS
from engine.docrequest.model import Action, Document, DocumentRequest
from engine.errors import ValidationError
from engine.xmlsafe import parse_untrusted

NS = {"h": "urn:hl7-org:v3"}


class InstanceId(BaseModel):
    """A CDA II (root, extension)."""

    root: str = ""
    extension: str = ""

    def __str__(self) -> str:
        return f"{self.root}^{self.extension}" if self.extension else self.root


class CdaHeader(BaseModel):
    """What the PFI reads from a CDA header."""

    id: InstanceId | None = None
    set_id: InstanceId | None = None
    version: str = ""
    code: str = ""
    code_system: str = ""
    record_target_ids: list[InstanceId] = Field(default_factory=list)
    replaced_ids: list[InstanceId] = Field(default_factory=list)  # relatedDocument RPLC

    @property
    def ins_ids(self) -> list[InstanceId]:
        """recordTarget ids whose root is an INS register OID."""
        return [i for i in self.record_target_ids if i.root in INS_OIDS]


def _ii(element) -> InstanceId | None:
    if element is None:
        return None
    return InstanceId(root=(element.get("root") or "").strip(), extension=(element.get("extension") or "").strip())


def read_cda_header(content: bytes) -> CdaHeader:
    """Parse a CDA safely and return its header; ValidationError if it is not a CDA."""
    root = parse_untrusted(content).getroot()
    if root.tag != "{urn:hl7-org:v3}ClinicalDocument":
        raise ValidationError(f"root element is {root.tag}, not hl7v3 ClinicalDocument")
    first = lambda xpath: next(iter(root.xpath(xpath, namespaces=NS)), None)  # noqa: E731
    code = first("h:code")
    version = first("h:versionNumber")
    return CdaHeader(
        id=_ii(first("h:id")),
        set_id=_ii(first("h:setId")),
        version=(version.get("value") or "").strip() if version is not None else "",
        code=(code.get("code") or "").strip() if code is not None else "",
        code_system=(code.get("codeSystem") or "").strip() if code is not None else "",
        record_target_ids=[_ii(e) for e in root.xpath("h:recordTarget/h:patientRole/h:id", namespaces=NS)],
        replaced_ids=[
            _ii(e) for e in root.xpath("h:relatedDocument[@typeCode='RPLC']/h:parentDocument/h:id", namespaces=NS)
        ],
    )


def entity_id(ei: str | None) -> str:
    """EI-1 of TXA-12/13, the document's identity: the ANS examples put a namespace name in EI-2
    (`<oid>^Organisation-Y`), which is not part of it (nor of the DMP uniqueId). The one place
    this is decided: cancelling by document, the DMP mapping and the supersede checks use it."""
    return (ei or "").split("^", 1)[0].strip()


def parse_ei(text: str) -> InstanceId:
    """TXA-12/13 EI → CDA II: `ext^ns^root^ISO` → (root, ext); otherwise the OID in EI-1."""
    parts = [p.strip() for p in text.split("^")]
    if len(parts) >= 4 and parts[3].upper() == "ISO" and parts[2]:
        return InstanceId(root=parts[2], extension=parts[0])
    return InstanceId(root=parts[0])


def check_consistency(request: DocumentRequest) -> list[HL7Error]:
    """Every problem between the message and its CDA(s); errors (E) first, then warnings (W)."""
    problems: list[HL7Error] = []
    for document in request.documents:
        problems.extend(_check_document(request, document))
    return sorted(problems, key=lambda p: p.severity != "E")


def _check_document(request: DocumentRequest, document: Document) -> list[HL7Error]:
    where = f"{document.location}^5"
    try:
        header = read_cda_header(document.content)
    except ValidationError as exc:
        return [app_error("CDA_NOT_WELL_FORMED", f"embedded document is not a CDA: {exc}", where)]
    checks = (_ids, _ins, _doc_id, _replacement, _doc_type)
    return [p for check in checks for p in check(request, document, header)]


def _ids(request, document, header: CdaHeader) -> list[HL7Error]:
    where = f"{document.location}^5"
    problems = []
    if header.id is None or not header.id.root:
        problems.append(app_error("CDA_ID_MISSING", "ClinicalDocument/id is missing", where))
    if header.set_id is None or not header.set_id.root:
        problems.append(app_error("CDA_SETID_MISSING", "ClinicalDocument/setId is missing", where, severity="W"))
    if not header.version:
        problems.append(app_error("CDA_VERSION_MISSING", "ClinicalDocument/versionNumber is missing", where))
    return problems


def _ins(request: DocumentRequest, document, header: CdaHeader) -> list[HL7Error]:
    ins = request.patient.ins
    if ins is None:
        return []
    cda = header.ins_ids
    if not cda:
        return [
            app_error("INS_ABSENT_IN_CDA", "PID-3 carries an INS but the CDA recordTarget has no INS id", "PID^1^3")
        ]
    if not any(i.root == ins.oid and i.extension == ins.value for i in cda):
        return [
            app_error(
                "INS_MISMATCH",
                f"INS in PID-3 (register {ins.oid}) differs from the "
                f"INS of the CDA recordTarget of {document.location}",
                "PID^1^3",
            )
        ]
    return []


def _doc_id(request: DocumentRequest, document, header: CdaHeader) -> list[HL7Error]:
    if not request.document_id or header.id is None or len(request.documents) != 1:
        return []
    if parse_ei(request.document_id) != header.id:
        return [
            app_error(
                "DOC_ID_MISMATCH",
                f"TXA-12 {parse_ei(request.document_id)} differs from the CDA id {header.id}",
                "TXA^1^12",
            )
        ]
    return []


def _replacement(request: DocumentRequest, document, header: CdaHeader) -> list[HL7Error]:
    if request.action is not Action.REPLACE:
        return []
    if not header.replaced_ids:
        return [
            app_error(
                "RPLC_MISSING",
                "a replacement CDA must carry relatedDocument typeCode=RPLC/parentDocument/id",
                f"{document.location}^5",
            )
        ]
    if request.replaced_document_id:
        expected = parse_ei(request.replaced_document_id)
        if expected not in header.replaced_ids:
            return [
                app_error(
                    "RPLC_MISMATCH",
                    f"TXA-13 {expected} differs from the CDA parentDocument id {header.replaced_ids[0]}",
                    "TXA^1^13",
                )
            ]
    return []


def _doc_type(request: DocumentRequest, document: Document, header: CdaHeader) -> list[HL7Error]:
    if header.code and document.type.code and header.code != document.type.code:
        return [
            app_error(
                "DOCTYPE_MISMATCH",
                f"OBX-3 {document.type.code} differs from the CDA code {header.code}",
                f"{document.location}^3",
            )
        ]
    return []
