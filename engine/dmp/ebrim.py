"""ebRIM 3.0 / XDS.b bodies: ITI-41 submission, ITI-18 stored queries, ITI-57 updates, and the
parsing of RegistryResponse / AdhocQueryResponse. Shared by the client and the simulator.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from lxml import etree

from engine.dmp.metadata import Code, DocumentMetadata

RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
LCM = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
RS = "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0"
QUERY = "urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0"
XDSB = "urn:ihe:iti:xds-b:2007"
XOP = "http://www.w3.org/2004/08/xop/include"
NSMAP = {"rim": RIM, "lcm": LCM, "rs": RS, "query": QUERY, "xdsb": XDSB, "xop": XOP}

STABLE_DE = "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"
SS_NODE = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
CLASSIFICATION = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:Classification"
ASSOCIATION = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:Association"
EXTERNAL_ID = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:ExternalIdentifier"
REGISTRY_PACKAGE = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:RegistryPackage"

DE = {  # DocumentEntry classification schemes and external identifiers
    "author": "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d",
    "classCode": "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a",
    "confidentialityCode": "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f",
    "eventCodeList": "urn:uuid:2c6b8cb7-8b2a-4051-b291-b1ae6a575ef4",
    "formatCode": "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d",
    "healthcareFacilityTypeCode": "urn:uuid:f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1",
    "practiceSettingCode": "urn:uuid:cccf5598-8b07-4b77-a05e-ae952c785ead",
    "typeCode": "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983",
    "patientId": "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427",
    "uniqueId": "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab",
}
SS = {  # SubmissionSet
    "author": "urn:uuid:a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d",
    "contentTypeCode": "urn:uuid:aa543740-bdda-424e-8c96-df4873be8500",
    "patientId": "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446",
    "sourceId": "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832",
    "uniqueId": "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8",
}
HAS_MEMBER = "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
RPLC = "urn:ihe:iti:2007:AssociationType:RPLC"
SIGNS = "urn:ihe:iti:2007:AssociationType:signs"
UPDATE_STATUS = "urn:ihe:iti:2010:AssociationType:UpdateAvailabilityStatus"
APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"
DEPRECATED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated"
DMP_DELETED = "urn:asip:ci-sis:2010:StatusType:Deleted"
DMP_ARCHIVED = "urn:asip:ci-sis:2010:StatusType:Archived"
GET_DOCUMENTS = "urn:uuid:5c4f972b-d56b-40ac-a5fc-c8ca9b40b9d4"
FIND_DOCUMENTS = "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d"
SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
FAILURE = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure"
PARTIAL = "urn:ihe:iti:2007:ResponseStatusType:PartialSuccess"
SEVERITY_ERROR = "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error"
SEVERITY_WARNING = "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Warning"


def q(ns: str, tag: str) -> str:
    """Clark notation."""
    return f"{{{ns}}}{tag}"


def new_uuid() -> str:
    """A fresh `urn:uuid:` id."""
    return f"urn:uuid:{uuid.uuid4()}"


def oid_from_uuid() -> str:
    """A unique OID in the 2.25 arc (submission-set uniqueId)."""
    return f"2.25.{uuid.uuid4().int}"


# -- building blocks -------------------------------------------------------------------------


def slot(parent, name: str, values) -> etree._Element:
    """Append `<rim:Slot name><rim:ValueList><rim:Value>…`."""
    node = etree.SubElement(parent, q(RIM, "Slot"), name=name)
    value_list = etree.SubElement(node, q(RIM, "ValueList"))
    for value in values:
        etree.SubElement(value_list, q(RIM, "Value")).text = value
    return node


def localized(parent, tag: str, text: str) -> None:
    """Append `<rim:Name|Description><rim:LocalizedString value/>`."""
    holder = etree.SubElement(parent, q(RIM, tag))
    etree.SubElement(holder, q(RIM, "LocalizedString"), value=text)


def classification(
    parent, scheme: str, object_id: str, code: Code | None = None, slots: dict[str, list[str]] | None = None
) -> etree._Element:
    """Append a Classification (coded value, or author with its slots)."""
    node = etree.SubElement(
        parent,
        q(RIM, "Classification"),
        id=new_uuid(),
        objectType=CLASSIFICATION,
        classificationScheme=scheme,
        classifiedObject=object_id,
        nodeRepresentation=code.code if code else "",
    )
    if code:
        slot(node, "codingScheme", [code.scheme])
        localized(node, "Name", code.display or code.code)
    for name, values in (slots or {}).items():
        if values:
            slot(node, name, values)
    return node


def external_id(parent, scheme: str, object_id: str, value: str, name: str) -> None:
    """Append an ExternalIdentifier (patientId, uniqueId, sourceId)."""
    node = etree.SubElement(
        parent,
        q(RIM, "ExternalIdentifier"),
        id=new_uuid(),
        objectType=EXTERNAL_ID,
        identificationScheme=scheme,
        registryObject=object_id,
        value=value,
    )
    localized(node, "Name", name)


def association(
    parent, kind: str, source: str, target: str, slots: dict[str, list[str]] | None = None
) -> etree._Element:
    """Append an Association between two objects."""
    node = etree.SubElement(
        parent,
        q(RIM, "Association"),
        id=new_uuid(),
        objectType=ASSOCIATION,
        associationType=kind,
        sourceObject=source,
        targetObject=target,
    )
    for name, values in (slots or {}).items():
        slot(node, name, values)
    return node


# -- submission set and document entry -----------------------------------------------------


@dataclass
class SubmissionSetInfo:
    """What the submission set needs beyond the document entry."""

    patient_id: str
    source_oid: str
    content_type: Code
    submission_time: str
    author_person: str | None = None
    author_institution: str | None = None
    author_roles: list[str] = field(default_factory=list)
    unique_id: str = field(default_factory=oid_from_uuid)
    entry_id: str = "SubmissionSet01"


def submission_set(parent, info: SubmissionSetInfo) -> etree._Element:
    """Append the RegistryPackage flagged as a submission set."""
    pkg = etree.SubElement(parent, q(RIM, "RegistryPackage"), id=info.entry_id, objectType=REGISTRY_PACKAGE)
    slot(pkg, "submissionTime", [info.submission_time])
    if info.author_person or info.author_institution:
        classification(
            pkg,
            SS["author"],
            info.entry_id,
            slots={
                "authorPerson": [info.author_person] if info.author_person else [],
                "authorInstitution": [info.author_institution] if info.author_institution else [],
                "authorRole": info.author_roles,
            },
        )
    classification(pkg, SS["contentTypeCode"], info.entry_id, info.content_type)
    external_id(pkg, SS["uniqueId"], info.entry_id, info.unique_id, "XDSSubmissionSet.uniqueId")
    external_id(pkg, SS["sourceId"], info.entry_id, info.source_oid, "XDSSubmissionSet.sourceId")
    external_id(pkg, SS["patientId"], info.entry_id, info.patient_id, "XDSSubmissionSet.patientId")
    etree.SubElement(
        parent,
        q(RIM, "Classification"),
        id=new_uuid(),
        objectType=CLASSIFICATION,
        classifiedObject=info.entry_id,
        classificationNode=SS_NODE,
    )
    return pkg


def document_entry(
    parent, meta: DocumentMetadata, entry_id: str, logical_id: str | None = None, version: str | None = None
) -> etree._Element:
    """Append the ExtrinsicObject of one CDA document."""
    attrs = {"id": entry_id, "mimeType": meta.mime_type, "objectType": STABLE_DE}
    if logical_id:
        attrs["lid"] = logical_id
    obj = etree.SubElement(parent, q(RIM, "ExtrinsicObject"), attrs)
    if version:
        etree.SubElement(obj, q(RIM, "VersionInfo"), versionName=version)
    _entry_slots(obj, meta)
    localized(obj, "Name", meta.title)
    _entry_classifications(obj, meta, entry_id)
    external_id(obj, DE["patientId"], entry_id, meta.patient_id, "XDSDocumentEntry.patientId")
    external_id(obj, DE["uniqueId"], entry_id, meta.unique_id, "XDSDocumentEntry.uniqueId")
    return obj


def _entry_slots(obj, meta: DocumentMetadata) -> None:
    slot(obj, "creationTime", [meta.creation_time])
    slot(obj, "hash", [meta.hash])
    slot(obj, "languageCode", [meta.language_code])
    if meta.legal_authenticator:
        slot(obj, "legalAuthenticator", [meta.legal_authenticator])
    if meta.reference_ids:
        slot(obj, "urn:ihe:iti:xds:2013:referenceIdList", meta.reference_ids)
    slot(obj, "serviceStartTime", [meta.service_start_time])
    if meta.service_stop_time:
        slot(obj, "serviceStopTime", [meta.service_stop_time])
    slot(obj, "size", [str(meta.size)])
    slot(obj, "sourcePatientId", [meta.source_patient_id])
    slot(obj, "sourcePatientInfo", meta.source_patient_info)


def _entry_classifications(obj, meta: DocumentMetadata, entry_id: str) -> None:
    for author in meta.authors:
        classification(
            obj,
            DE["author"],
            entry_id,
            slots={
                "authorPerson": [author.person] if author.person else [],
                "authorInstitution": author.institutions,
                "authorRole": author.roles,
                "authorSpecialty": author.specialties,
            },
        )
    classification(obj, DE["classCode"], entry_id, meta.class_code)
    for code in meta.confidentiality_codes:
        classification(obj, DE["confidentialityCode"], entry_id, code)
    for code in meta.event_codes:
        classification(obj, DE["eventCodeList"], entry_id, code)
    classification(obj, DE["formatCode"], entry_id, meta.format_code)
    classification(obj, DE["healthcareFacilityTypeCode"], entry_id, meta.healthcare_facility_type_code)
    classification(obj, DE["practiceSettingCode"], entry_id, meta.practice_setting_code)
    classification(obj, DE["typeCode"], entry_id, meta.type_code)


# -- transactions ------------------------------------------------------------------------------


def provide_and_register(
    meta: DocumentMetadata, ss: SubmissionSetInfo, document_cid: str, replaces_entry_uuid: str | None = None
) -> etree._Element:
    """ITI-41 body: submission set + document entry + HasMember (+ RPLC) + xop:Include."""
    root = etree.Element(q(XDSB, "ProvideAndRegisterDocumentSetRequest"), nsmap=NSMAP)
    request = etree.SubElement(root, q(LCM, "SubmitObjectsRequest"))
    objects = etree.SubElement(request, q(RIM, "RegistryObjectList"))
    entry_id = "Document01"
    document_entry(objects, meta, entry_id)
    submission_set(objects, ss)
    association(objects, HAS_MEMBER, ss.entry_id, entry_id, {"SubmissionSetStatus": ["Original"]})
    if replaces_entry_uuid:
        association(objects, RPLC, entry_id, replaces_entry_uuid)
    add_document(root, entry_id, document_cid)
    return root


def add_document(root: etree._Element, entry_id: str, cid: str) -> None:
    """Append `<xdsb:Document id><xop:Include href="cid:…"/>` to an ITI-41 request."""
    document = etree.SubElement(root, q(XDSB, "Document"), id=entry_id)
    etree.SubElement(document, q(XOP, "Include"), href=f"cid:{cid}")


def add_signature_entry(
    root: etree._Element, meta: DocumentMetadata, ss: "SubmissionSetInfo", cid: str, entry_id: str = "Signature01"
) -> None:
    """Register the submission-set signature document: entry, HasMember, `signs` association."""
    objects = root.find(f"{q(LCM, 'SubmitObjectsRequest')}/{q(RIM, 'RegistryObjectList')}")
    document_entry(objects, meta, entry_id)
    association(objects, HAS_MEMBER, ss.entry_id, entry_id, {"SubmissionSetStatus": ["Original"]})
    association(objects, SIGNS, entry_id, ss.entry_id)
    add_document(root, entry_id, cid)


def update_availability(ss: SubmissionSetInfo, entry_uuid: str, original: str, new: str) -> etree._Element:
    """ITI-57 body changing one entry's availabilityStatus (delete = DMP Deleted status)."""
    request = etree.Element(q(LCM, "SubmitObjectsRequest"), nsmap=NSMAP)
    objects = etree.SubElement(request, q(RIM, "RegistryObjectList"))
    submission_set(objects, ss)
    association(objects, UPDATE_STATUS, ss.entry_id, entry_uuid, {"OriginalStatus": [original], "NewStatus": [new]})
    return request


def update_metadata(ss: SubmissionSetInfo, entry: etree._Element, previous_version: str) -> etree._Element:
    """ITI-57 body carrying a new version of an existing DocumentEntry (same lid)."""
    request = etree.Element(q(LCM, "SubmitObjectsRequest"), nsmap=NSMAP)
    objects = etree.SubElement(request, q(RIM, "RegistryObjectList"))
    submission_set(objects, ss)
    objects.append(entry)
    association(
        objects,
        HAS_MEMBER,
        ss.entry_id,
        entry.get("id"),
        {"SubmissionSetStatus": ["Original"], "PreviousVersion": [previous_version]},
    )
    return request


def stored_query(query_id: str, params: dict[str, list[str]], return_type: str = "LeafClass") -> etree._Element:
    """ITI-18 AdhocQueryRequest."""
    root = etree.Element(q(QUERY, "AdhocQueryRequest"), nsmap=NSMAP)
    etree.SubElement(root, q(QUERY, "ResponseOption"), returnComposedObjects="true", returnType=return_type)
    query = etree.SubElement(root, q(RIM, "AdhocQuery"), id=query_id)
    for name, values in params.items():
        slot(query, name, values)
    return root


def query_list(values: list[str]) -> str:
    """The stored-query multi-value syntax `('a','b')`."""
    return "(" + ",".join(f"'{v}'" for v in values) + ")"


# -- responses ---------------------------------------------------------------------------------


@dataclass
class RegistryError:
    """One rs:RegistryError."""

    code: str
    context: str = ""
    severity: str = SEVERITY_ERROR
    location: str = ""


@dataclass
class RegistryOutcome:
    """A parsed RegistryResponse / AdhocQueryResponse."""

    status: str
    errors: list[RegistryError] = field(default_factory=list)
    objects: list[etree._Element] = field(default_factory=list)
    slots: dict[str, list[str]] = field(default_factory=dict)


def registry_response(
    status: str,
    errors: list[RegistryError] = (),
    slots: dict[str, list[str]] | None = None,
    tag: str = "RegistryResponse",
    ns: str = RS,
) -> etree._Element:
    """Build a RegistryResponse (or AdhocQueryResponse with tag/ns)."""
    root = etree.Element(q(ns, tag), nsmap=NSMAP, status=status)
    if slots:
        holder = etree.SubElement(root, q(RS, "ResponseSlotList"))
        for name, values in slots.items():
            slot(holder, name, values)
    if errors:
        error_list = etree.SubElement(root, q(RS, "RegistryErrorList"))
        for err in errors:
            etree.SubElement(
                error_list,
                q(RS, "RegistryError"),
                errorCode=err.code,
                codeContext=err.context,
                severity=err.severity,
                location=err.location,
            )
    return root


def parse_response(node: etree._Element) -> RegistryOutcome:
    """Read status, errors, returned objects and response slots."""
    errors = [
        RegistryError(
            e.get("errorCode", ""), e.get("codeContext", ""), e.get("severity", SEVERITY_ERROR), e.get("location", "")
        )
        for e in node.iter(q(RS, "RegistryError"))
    ]
    objects = [o for o in node.iter(q(RIM, "ExtrinsicObject"), q(RIM, "ObjectRef"))]
    slots = {
        s.get("name"): [v.text or "" for v in s.iter(q(RIM, "Value"))]
        for holder in node.iter(q(RS, "ResponseSlotList"))
        for s in holder
    }
    return RegistryOutcome(node.get("status", ""), errors, objects, slots)


def slot_values(obj: etree._Element, name: str) -> list[str]:
    """Values of the slot `name` directly under `obj`."""
    for node in obj.findall(q(RIM, "Slot")):
        if node.get("name") == name:
            return [v.text or "" for v in node.iter(q(RIM, "Value"))]
    return []


def external_value(obj: etree._Element, scheme: str) -> str | None:
    """Value of the ExternalIdentifier with `scheme` under `obj`."""
    for node in obj.findall(q(RIM, "ExternalIdentifier")):
        if node.get("identificationScheme") == scheme:
            return node.get("value")
    return None


def classifications(obj: etree._Element, scheme: str) -> list[etree._Element]:
    """Classifications of `obj` in `scheme`."""
    return [c for c in obj.findall(q(RIM, "Classification")) if c.get("classificationScheme") == scheme]
