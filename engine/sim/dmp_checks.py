"""What the DMP simulator checks in a submission: SOAP/WS-Addressing, VIHF, ebRIM metadata.

Each check returns RegistryError values (answered in a RegistryResponse) or raises SoapFault
(answered as a SOAP 1.2 fault), the way an XDS registry/repository behind a WS-Security gateway
answers.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re

from cryptography import x509

from lxml import etree

from engine.dmp import ebrim, soap, xades
from engine.dmp.ebrim import DE, RIM, SS, RegistryError, q
from engine.dmp.gates import INS_OIDS
from engine.sim.dmp_valuesets import REFERENCE_ID_TYPES, ValueSets
from engine.dmp.config import certificate_structure
from engine.dmp.vihf import (
    A_MODE,
    A_RESOURCE,
    A_RESOURCE_URN,
    A_STRUCTURE,
    A_VERSION,
    SAML,
    VerifiedVihf,
    VihfError,
    verify_assertion,
)
from engine.errors import ValidationError
from engine.xmlsafe import parse_untrusted

META = "XDSRegistryMetadataError"
#: seconds an assertion's IssueInstant may differ from the simulator's clock
VIHF_MAX_SKEW = 300
DTM = re.compile(r"^\d{4}(\d{2}){0,5}$")
CX_INS = re.compile(r"^(?P<id>[^^]+)\^\^\^&(?P<oid>[0-9.]+)&ISO\^NH$")
CODED_SLOTS = {
    "classCode": True,
    "confidentialityCode": True,
    "formatCode": True,
    "healthcareFacilityTypeCode": True,
    "practiceSettingCode": True,
    "typeCode": True,
    "eventCodeList": False,
}
SIGNATURE_CODES = {"classCode": xades.CLASS_CODE, "typeCode": xades.TYPE_CODE, "formatCode": xades.FORMAT_CODE}
ENTRY_SLOTS = ("creationTime", "languageCode", "serviceStartTime", "sourcePatientId")


class SoapFault(Exception):
    """Answer with a SOAP fault instead of a RegistryResponse."""

    def __init__(self, subcode: str, reason: str, code: str = "Sender"):
        self.code, self.subcode, self.reason = code, subcode, reason
        super().__init__(f"{subcode}: {reason}")


# -- envelope -----------------------------------------------------------------------------


def parse_envelope(data: bytes) -> etree._Element:
    """Parse the SOAP part; SOAP 1.1 or not-XML → fault."""
    try:
        env = parse_untrusted(data).getroot()
    except ValidationError as exc:
        raise SoapFault("soap:Sender", f"SOAP part is not well-formed XML: {exc}") from exc
    if env.tag == "{http://schemas.xmlsoap.org/soap/envelope/}Envelope":
        raise SoapFault("soap:VersionMismatch", "SOAP 1.1 envelope; SOAP 1.2 is required", code="VersionMismatch")
    if env.tag != f"{{{soap.SOAP}}}Envelope":
        raise SoapFault("soap:Sender", "root element is not a SOAP 1.2 Envelope")
    return env


def check_addressing(env: etree._Element, allowed_actions: set[str]) -> tuple[str, str]:
    """WS-Addressing: Action (mustUnderstand, allowed here), MessageID, To. → (action, id)."""
    header = env.find(f"{{{soap.SOAP}}}Header")
    if header is None:
        raise SoapFault("wsa:MessageAddressingHeaderRequired", "SOAP Header missing")
    action_node = header.find(f"{{{soap.WSA}}}Action")
    if action_node is None or not (action_node.text or "").strip():
        raise SoapFault("wsa:MessageAddressingHeaderRequired", "wsa:Action missing")
    if action_node.get(f"{{{soap.SOAP}}}mustUnderstand") not in ("true", "1"):
        raise SoapFault("wsa:InvalidAddressingHeader", 'wsa:Action without mustUnderstand="true"')
    action = action_node.text.strip()
    if action not in allowed_actions:
        raise SoapFault("wsa:ActionNotSupported", f"action {action} not served on this endpoint")
    message_id = (header.findtext(f"{{{soap.WSA}}}MessageID") or "").strip()
    if not message_id:
        raise SoapFault("wsa:MessageAddressingHeaderRequired", "wsa:MessageID missing")
    if not (header.findtext(f"{{{soap.WSA}}}To") or "").strip():
        raise SoapFault("wsa:MessageAddressingHeaderRequired", "wsa:To missing")
    return action, message_id


def check_vihf(env: etree._Element, peer_cert_pem: bytes, now: float | None = None) -> VerifiedVihf:
    """VIHF present in wsse:Security, signed by the TLS client certificate, complete."""
    security = env.find(f"{{{soap.SOAP}}}Header/{{{soap.WSSE}}}Security")
    if security is None:
        raise SoapFault("wsse:InvalidSecurity", "wsse:Security header missing")
    assertion = security.find(f"{{{SAML}}}Assertion")
    if assertion is None:
        raise SoapFault("wsse:InvalidSecurity", "no VIHF (saml2:Assertion) in wsse:Security")
    try:
        vihf = verify_assertion(assertion, peer_cert_pem)
    except VihfError as exc:
        raise SoapFault(exc.subcode, exc.reason) from exc
    _check_vihf_values(vihf)
    _check_issuer_and_time(assertion, peer_cert_pem, now)
    _check_structure(vihf, peer_cert_pem)
    return vihf


def _check_structure(vihf: VerifiedVihf, peer_cert_pem: bytes) -> None:
    """Like the DMP since the 31/03/2026 committee: the VIHF structure is the certificate's."""
    carried = certificate_structure(x509.load_pem_x509_certificate(peer_cert_pem))
    if carried is None:
        raise SoapFault(
            "wsse:FailedAuthentication", "the client certificate carries no structure identifier (subject OU)"
        )
    if vihf.attributes[A_STRUCTURE][0] != carried:
        raise SoapFault(
            "wsse:FailedAuthentication", "VIHF Identifiant_Structure is not the structure of the client certificate"
        )


def _check_issuer_and_time(assertion, peer_cert_pem: bytes, now: float | None) -> None:
    """Issuer = DN of the certificate that signed; IssueInstant within the allowed skew."""
    subject = x509.load_pem_x509_certificate(peer_cert_pem).subject.rfc4514_string()
    if (assertion.findtext(f"{{{SAML}}}Issuer") or "").strip() != subject:
        raise SoapFault("wsse:InvalidSecurityToken", "VIHF Issuer is not the subject DN of the signing certificate")
    if now is None:
        return
    try:
        issued = dt.datetime.strptime(assertion.get("IssueInstant", ""), "%Y-%m-%dT%H:%M:%SZ")
    except ValueError as exc:
        raise SoapFault("wsse:InvalidSecurityToken", "VIHF IssueInstant invalid") from exc
    skew = abs(issued.replace(tzinfo=dt.timezone.utc).timestamp() - now)
    if skew > VIHF_MAX_SKEW:
        raise SoapFault("wsse:MessageExpired", f"VIHF IssueInstant {skew:.0f} s away from now")


def _check_vihf_values(vihf: VerifiedVihf) -> None:
    attrs = vihf.attributes
    if attrs[A_VERSION][0] not in ("3.0", "4.0"):
        raise SoapFault("wsse:InvalidSecurityToken", f"VIHF_Version {attrs[A_VERSION][0]} unknown")
    if attrs[A_MODE][0] not in ("INDIRECTE", "INDIRECTE_RENFORCEE", "DIRECTE"):
        raise SoapFault("wsse:InvalidSecurityToken", "Authentification_Mode invalid")
    if attrs[A_RESOURCE_URN][0] != "urn:dmp":
        raise SoapFault("wsse:InvalidSecurityToken", "Ressource_URN must be urn:dmp")
    if not vihf.roles:
        raise SoapFault("wsse:InvalidSecurityToken", "VIHF role has no coded value")


def vihf_patient(vihf: VerifiedVihf) -> str:
    """The VIHF resource-id (the patient's INS as a CX)."""
    return vihf.attributes[A_RESOURCE][0]


# -- metadata ------------------------------------------------------------------------------


def patient_errors(patient_id: str | None, where: str, known_patients: set[str] | None) -> list[RegistryError]:
    """patientId must be an INS CX with an INS OID (and a known patient if a list is kept)."""
    if not patient_id:
        return [RegistryError(META, f"{where}: patientId missing")]
    match = CX_INS.match(patient_id)
    if not match or match.group("oid") not in INS_OIDS:
        return [RegistryError(META, f"{where}: patientId is not an INS (id^^^&INS-OID&ISO^NH with an INS OID)")]
    if known_patients is not None and match.group("id") not in known_patients:
        return [RegistryError("XDSUnknownPatientId", f"{where}: patient unknown to the DMP")]
    return []


def is_signature_entry(obj: etree._Element) -> bool:
    """True for the submission-set signature document (formatCode xmldsig)."""
    return any(
        c.get("nodeRepresentation") == xades.FORMAT_CODE.code for c in ebrim.classifications(obj, DE["formatCode"])
    )


def entry_errors(obj: etree._Element, values: ValueSets, document: bytes | None) -> list[RegistryError]:
    """Every DocumentEntry rule; `document` (when provided) is checked against hash/size/id."""
    loc = obj.get("id", "?")
    signature = is_signature_entry(obj)
    errors = [
        RegistryError(META, f"{loc}: slot {name} missing", location=loc)
        for name in ENTRY_SLOTS
        if not ebrim.slot_values(obj, name)
    ]
    errors += _time_errors(obj, loc)
    if obj.get("mimeType") != "text/xml":
        errors.append(RegistryError(META, f"{loc}: mimeType must be text/xml", location=loc))
    if obj.find(f"{q(RIM, 'Name')}/{q(RIM, 'LocalizedString')}") is None:
        errors.append(RegistryError(META, f"{loc}: title (rim:Name) missing", location=loc))
    errors += _code_errors(obj, values, loc, SIGNATURE_CODES if signature else {})
    errors += _author_errors(obj, loc)
    errors += _reference_id_errors(obj, loc)
    for name in ("patientId", "uniqueId"):
        if not ebrim.external_value(obj, DE[name]):
            errors.append(RegistryError(META, f"{loc}: {name} missing", location=loc))
    if document is not None:
        errors += _document_errors(obj, document, loc, cda=not signature)
    return errors


def _time_errors(obj, loc: str) -> list[RegistryError]:
    return [
        RegistryError(META, f"{loc}: {name} {value!r} is not an UTC DTM", location=loc)
        for name in ("creationTime", "serviceStartTime", "serviceStopTime")
        for value in ebrim.slot_values(obj, name)
        if not DTM.match(value)
    ]


def _code_errors(obj, values: ValueSets, loc: str, fixed: dict[str, "xades.Code"]) -> list[RegistryError]:
    errors = []
    for slot_name, required in CODED_SLOTS.items():
        nodes = ebrim.classifications(obj, DE[slot_name])
        if required and not nodes:
            errors.append(RegistryError(META, f"{loc}: {slot_name} missing", location=loc))
        single = slot_name not in ("confidentialityCode", "eventCodeList")
        if single and len(nodes) > 1:
            errors.append(RegistryError(META, f"{loc}: {slot_name} repeated", location=loc))
        for node in nodes:
            code, scheme = node.get("nodeRepresentation", ""), ebrim.slot_values(node, "codingScheme")
            if not code or len(scheme) != 1:
                errors.append(RegistryError(META, f"{loc}: {slot_name} without code or codingScheme", location=loc))
            elif slot_name in fixed:
                if (code, scheme[0]) != (fixed[slot_name].code, fixed[slot_name].scheme):
                    errors.append(
                        RegistryError(
                            META,
                            f"{loc}: {slot_name} of a signature document must be {fixed[slot_name].code}",
                            location=loc,
                        )
                    )
            elif slot_name == "eventCodeList" and fixed:
                continue
            elif not values.allowed(slot_name, code, scheme[0]):
                errors.append(
                    RegistryError(
                        META, f"{loc}: {slot_name} {code} ({scheme[0]}) not in the DMP value set", location=loc
                    )
                )
    return errors


def _author_errors(obj, loc: str) -> list[RegistryError]:
    authors = ebrim.classifications(obj, DE["author"])
    if not authors:
        return [RegistryError(META, f"{loc}: author missing", location=loc)]
    if not any(ebrim.slot_values(a, "authorPerson") or ebrim.slot_values(a, "authorInstitution") for a in authors):
        return [RegistryError(META, f"{loc}: author without authorPerson nor authorInstitution", location=loc)]
    return []


def _reference_id_errors(obj, loc: str) -> list[RegistryError]:
    errors = []
    for value in ebrim.slot_values(obj, "urn:ihe:iti:xds:2013:referenceIdList"):
        kind = value.split("^")[-1] if value.count("^") >= 4 else ""
        if kind not in REFERENCE_ID_TYPES:
            errors.append(
                RegistryError(META, f"{loc}: referenceIdList value {value!r} has a type outside JDV_J231", location=loc)
            )
    return errors


def _document_errors(obj, document: bytes, loc: str, cda: bool = True) -> list[RegistryError]:
    errors = []
    size, digest = ebrim.slot_values(obj, "size"), ebrim.slot_values(obj, "hash")
    if size and size[0] != str(len(document)):
        errors.append(
            RegistryError(
                "XDSNonIdenticalSize", f"{loc}: size {size[0]} but the document has {len(document)} bytes", location=loc
            )
        )
    if digest and digest[0].lower() != hashlib.sha1(document).hexdigest():
        errors.append(RegistryError("XDSNonIdenticalHash", f"{loc}: hash does not match the document", location=loc))
    if cda:
        errors += _cda_id_errors(obj, document, loc)
    return errors


def signature_errors(
    objects, pkg, entries, documents: dict[str, bytes], peer_pem: bytes, required: bool
) -> list[RegistryError]:
    """The submission-set signature: `signs` association, valid XAdES over every document."""
    signatures = [e for e in entries if is_signature_entry(e)]
    if not signatures:
        return [RegistryError(META, "submission-set signature document missing")] if required else []
    signed = {
        ebrim.external_value(e, DE["uniqueId"]): documents.get(e.get("id"), b"")
        for e in entries
        if not is_signature_entry(e)
    }
    ss_uid = ebrim.external_value(pkg, SS["uniqueId"]) if pkg is not None else None
    errors = []
    for entry in signatures:
        errors += _one_signature_errors(objects, pkg, entry, documents, signed, peer_pem, ss_uid)
    return errors


def _one_signature_errors(objects, pkg, entry, documents, signed, peer_pem, ss_uid) -> list[RegistryError]:
    loc = entry.get("id")
    links = [
        a
        for a in objects.findall(q(RIM, "Association"))
        if a.get("associationType") == ebrim.SIGNS and a.get("sourceObject") == loc
    ]
    errors = []
    if pkg is None or [a.get("targetObject") for a in links] != [pkg.get("id")]:
        errors.append(
            RegistryError(META, f"{loc}: one 'signs' association to the submission set expected", location=loc)
        )
    try:
        root = parse_untrusted(documents.get(loc, b"")).getroot()
    except ValidationError as exc:
        return errors + [RegistryError(META, f"{loc}: signature is not XML: {exc}", location=loc)]
    check = xades.verify(root, peer_pem, signed)
    errors += [RegistryError(META, f"{loc}: submission-set signature: {p}", location=loc) for p in check.problems]
    if check.record_id != f"urn:oid:{ss_uid}":
        errors.append(
            RegistryError(META, f"{loc}: signature recordID is not the submission set uniqueId", location=loc)
        )
    return errors


def _cda_id_errors(obj, document: bytes, loc: str) -> list[RegistryError]:
    try:
        root = parse_untrusted(document).getroot()
    except ValidationError as exc:
        return [RegistryError("XDSRepositoryMetadataError", f"{loc}: document is not XML: {exc}", location=loc)]
    node = root.find("{urn:hl7-org:v3}id")
    if root.tag != "{urn:hl7-org:v3}ClinicalDocument" or node is None:
        return [
            RegistryError(
                "XDSRepositoryMetadataError", f"{loc}: document is not a CDA R2 ClinicalDocument", location=loc
            )
        ]
    cda_id = node.get("root", "") + (f"^{node.get('extension')}" if node.get("extension") else "")
    if cda_id != ebrim.external_value(obj, DE["uniqueId"]):
        return [
            RegistryError(
                "XDSRepositoryMetadataError", f"{loc}: uniqueId differs from ClinicalDocument/id", location=loc
            )
        ]
    return []


def submission_set_errors(
    objects: etree._Element, values: ValueSets
) -> tuple[etree._Element | None, list[RegistryError]]:
    """Exactly one RegistryPackage classified as a submission set, with its required parts."""
    packages = objects.findall(q(RIM, "RegistryPackage"))
    flagged = {
        c.get("classifiedObject")
        for c in objects.findall(q(RIM, "Classification"))
        if c.get("classificationNode") == ebrim.SS_NODE
    }
    sets = [
        p
        for p in packages
        if p.get("id") in flagged
        or any(c.get("classificationNode") == ebrim.SS_NODE for c in p.findall(q(RIM, "Classification")))
    ]
    if len(sets) != 1:
        return None, [RegistryError(META, f"expected one submission set, found {len(sets)}")]
    pkg = sets[0]
    errors = []
    if not ebrim.slot_values(pkg, "submissionTime"):
        errors.append(RegistryError(META, "submission set: submissionTime missing"))
    for name in ("uniqueId", "sourceId", "patientId"):
        if not ebrim.external_value(pkg, SS[name]):
            errors.append(RegistryError(META, f"submission set: {name} missing"))
    content = ebrim.classifications(pkg, SS["contentTypeCode"])
    if not content:
        errors.append(RegistryError(META, "submission set: contentTypeCode missing"))
    for node in content:
        scheme = (ebrim.slot_values(node, "codingScheme") or [""])[0]
        if not values.allowed("contentTypeCode", node.get("nodeRepresentation", ""), scheme):
            errors.append(RegistryError(META, "submission set: contentTypeCode not in JDV_J59"))
    return pkg, errors
