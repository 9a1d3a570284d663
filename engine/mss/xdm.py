"""IHE XDM packaging (ITI-32 on e-mail) of CDA documents: build `IHE_XDM.zip` and read it back.

Layout written: INDEX.HTM, README.TXT, IHE_XDM/SUBSET01/METADATA.XML, IHE_XDM/SUBSET01/DOC0001.XML.
The CDA bytes go into the zip untouched (hash/size in METADATA.XML are computed on them).
Reading is defensive: every bound of `InboundLimits` is checked before and while inflating.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import uuid
import zipfile
import zlib
from dataclasses import dataclass, field

from lxml import etree

from engine.errors import ValidationError
from engine.mss.settings import InboundLimits
from engine.xmlsafe import parse_untrusted

RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
NS = {"rim": RIM}
SUBSET = "IHE_XDM/SUBSET01"
CONFIDENTIALITY_SCHEME = "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f"
SUBMISSION_AUTHOR_SCHEME = "urn:uuid:a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d"
ACTION_CODES = {"C": "replace", "D": "delete"}
CDA_NS = "urn:hl7-org:v3"


class XdmError(ValidationError):
    """The XDM archive is hostile or unusable; `reason` is a short code for quarantine."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        super().__init__(f"{reason}: {detail}")


@dataclass
class XdmDocument:
    """One document of the archive with the entry metadata the LPS MDM needs."""

    path: str
    content: bytes
    mime_type: str
    confidentiality_codes: list[str] = field(default_factory=list)
    action: str = "initial"


@dataclass
class XdmPackage:
    """The parsed archive: documents plus the submission-set author (the mail's sender)."""

    documents: list[XdmDocument]
    author_person: str | None = None
    author_institution: str | None = None
    metadata_xml: bytes = b""


# --------------------------------------------------------------------------- building


def _slot(parent, name: str, values: list[str]) -> None:
    for old in parent.findall(f"{{{RIM}}}Slot[@name='{name}']"):
        parent.remove(old)
    slot = etree.Element(f"{{{RIM}}}Slot", name=name)
    value_list = etree.SubElement(slot, f"{{{RIM}}}ValueList")
    for value in values:
        etree.SubElement(value_list, f"{{{RIM}}}Value").text = value
    # Slots come first in an ebRIM RegistryObject: insert before Name/Description/Classification.
    parent.insert(0, slot)


DMP_CONFIDENTIALITY_SYSTEM = "1.2.250.1.213.1.1.4.13"


def _ensure_confidentiality(entry, codes: list[str]) -> None:
    """Add the DMP confidentiality codes (MASQUE_PS, …) the metadata provider did not set."""
    present = set(_confidentiality(entry))
    for code in codes:
        if code in present:
            continue
        classification = etree.Element(
            f"{{{RIM}}}Classification",
            id=f"urn:uuid:{uuid.uuid4()}",
            classificationScheme=CONFIDENTIALITY_SCHEME,
            classifiedObject=entry.get("id", ""),
            nodeRepresentation=code,
        )
        # ebRIM order: Slot*, Name, Description, Classification*, ExternalIdentifier*.
        first_identifier = entry.find("rim:ExternalIdentifier", NS)
        if first_identifier is not None:
            first_identifier.addprevious(classification)
        else:
            entry.append(classification)
        _slot(classification, "codingScheme", [DMP_CONFIDENTIALITY_SYSTEM])
        etree.SubElement(etree.SubElement(classification, f"{{{RIM}}}Name"), f"{{{RIM}}}LocalizedString", value=code)


def stamp_document_entry(
    metadata_xml: bytes, uri: str, content: bytes, action: str, confidentiality: list[str] | None = None
) -> bytes:
    """Set URI, hash, size (and the `action` extra-metadata) on the single DocumentEntry."""
    tree = parse_untrusted(metadata_xml)
    entries = tree.getroot().findall(".//rim:ExtrinsicObject", NS)
    if len(entries) != 1:
        raise ValidationError(f"XDS metadata must hold one DocumentEntry, found {len(entries)}")
    entry = entries[0]
    _ensure_confidentiality(entry, confidentiality or [])
    if action in ("replace", "delete"):
        _slot(entry, "action", ["C" if action == "replace" else "D"])
    _slot(entry, "URI", [uri])
    _slot(entry, "size", [str(len(content))])
    _slot(entry, "hash", [hashlib.sha1(content).hexdigest()])
    return etree.tostring(tree, xml_declaration=True, encoding="UTF-8")


def _index_htm(sender: str, title: str, file_name: str) -> str:
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>IHE XDM</title></head><body>'
        f"<h1>{_html(title)}</h1><p>Envoyé par : {_html(sender)}</p>"
        f'<ul><li><a href="{SUBSET}/METADATA.XML">METADATA.XML</a></li>'
        f'<li><a href="{SUBSET}/{file_name}">{file_name}</a></li></ul>'
        "<p>Contenu conforme au profil IHE XDM (ITI-32).</p></body></html>\r\n"
    )


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _readme(sender: str, application: str) -> str:
    return (
        f"Emetteur : {sender}\r\nApplication : {application}\r\n"
        "Ce fichier IHE_XDM.zip suit le profil IHE XDM (ITI-32) :\r\n"
        "  INDEX.HTM, README.TXT, IHE_XDM/SUBSET01/METADATA.XML et le document CDA.\r\n"
        "Le document s'ouvre avec un visualiseur CDA ; METADATA.XML porte ses métadonnées XDS.\r\n"
    )


def build_xdm(
    cda: bytes,
    metadata_xml: bytes,
    *,
    sender: str,
    title: str,
    action: str = "initial",
    file_name: str = "DOC0001.XML",
    application: str = "PFI engine",
    confidentiality: list[str] | None = None,
) -> bytes:
    """Return the bytes of IHE_XDM.zip for one CDA; `metadata_xml` is the XDS SubmitObjectsRequest.

    `confidentiality`: DMP codes (MASQUE_PS, INVISIBLE_PATIENT, INVISIBLE_REPRESENTANTS_LEGAUX)
    that must appear on the DocumentEntry; added when the metadata lacks them.
    """
    metadata = stamp_document_entry(metadata_xml, file_name, cda, action, confidentiality)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("INDEX.HTM", _index_htm(sender, title, file_name))
        archive.writestr("README.TXT", _readme(sender, application))
        archive.writestr(f"{SUBSET}/METADATA.XML", metadata)
        archive.writestr(f"{SUBSET}/{file_name}", cda)
    return buffer.getvalue()


# --------------------------------------------------------------------------- reading


def _safe_name(name: str) -> str:
    """Reject absolute paths, drive letters, backslashes and `..` components (zip slip)."""
    if "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise XdmError("zip-path-traversal", "absolute or Windows path in the archive")
    normal = posixpath.normpath(name)
    if normal.startswith("..") or "/../" in f"/{name}/":
        raise XdmError("zip-path-traversal", "'..' component in an archive entry")
    return normal


def _check_entries(infos: list[zipfile.ZipInfo], limits: InboundLimits) -> None:
    if len(infos) > limits.max_zip_entries:
        raise XdmError("zip-too-many-entries", f"{len(infos)} > {limits.max_zip_entries}")
    total = 0
    for info in infos:
        _safe_name(info.filename)
        total += info.file_size
        if info.file_size > limits.max_entry_bytes:
            raise XdmError("zip-entry-too-large", f"an entry declares {info.file_size} bytes")
        if info.file_size > limits.max_compression_ratio * max(info.compress_size, 1):
            raise XdmError("zip-bomb", "compression ratio above the limit")
    if total > limits.max_total_uncompressed_bytes:
        raise XdmError("zip-too-large", f"{total} bytes once inflated")


def _read_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limits: InboundLimits) -> bytes:
    """Inflate with a hard cap: declared sizes in a zip header can lie."""
    cap = min(limits.max_entry_bytes, int(limits.max_compression_ratio * max(info.compress_size, 1)))
    try:
        with archive.open(info) as handle:
            data = handle.read(cap + 1)
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, EOFError) as exc:
        # corrupt data, unsupported compression method, encrypted entry
        raise XdmError("zip-unreadable", f"{type(exc).__name__}: {exc}") from exc
    if len(data) > cap:
        raise XdmError("zip-bomb", "entry inflates beyond its declared bounds")
    return data


def _open(zip_bytes: bytes) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(io.BytesIO(zip_bytes))
    except (zipfile.BadZipFile, ValueError) as exc:
        raise XdmError("zip-unreadable", str(exc)) from exc


def _slot_values(element, name: str) -> list[str]:
    values = []
    for slot in element.findall("rim:Slot", NS):
        slot_name = slot.get("name", "")
        if slot_name == name or slot_name.endswith(":" + name):
            values += [v.text or "" for v in slot.findall("rim:ValueList/rim:Value", NS)]
    return values


def _confidentiality(entry) -> list[str]:
    return [
        c.get("nodeRepresentation", "")
        for c in entry.findall("rim:Classification", NS)
        if c.get("classificationScheme") == CONFIDENTIALITY_SCHEME
    ]


def _submission_author(root) -> tuple[str | None, str | None]:
    for classification in root.iter(f"{{{RIM}}}Classification"):
        if classification.get("classificationScheme") == SUBMISSION_AUTHOR_SCHEME:
            person = _slot_values(classification, "authorPerson")
            institution = _slot_values(classification, "authorInstitution")
            return (person[0] if person else None, institution[0] if institution else None)
    return None, None


def _is_cda(content: bytes) -> bool:
    try:
        root = parse_untrusted(content).getroot()
    except ValidationError:
        return False
    return root.tag == f"{{{CDA_NS}}}ClinicalDocument"


def _document(archive, by_name, subset: str, entry, limits) -> XdmDocument:
    uris = _slot_values(entry, "URI")
    if not uris:
        raise XdmError("xdm-metadata", "DocumentEntry without URI slot")
    path = _safe_name(posixpath.join(subset, uris[0]))
    info = by_name.get(path.upper())
    if info is None:
        raise XdmError("xdm-metadata", "DocumentEntry URI names a file absent from the archive")
    content = _read_entry(archive, info, limits)
    if not _is_cda(content):
        raise XdmError("not-cda", "an XDM document is not a CDA R2 ClinicalDocument")
    action_codes = _slot_values(entry, "action")
    action = ACTION_CODES.get(action_codes[0].strip().upper(), "initial") if action_codes else "initial"
    return XdmDocument(path, content, entry.get("mimeType", ""), _confidentiality(entry), action)


def read_xdm(zip_bytes: bytes, limits: InboundLimits | None = None) -> XdmPackage:
    """Parse IHE_XDM.zip; raise XdmError (with a reason code) on anything hostile or unusable."""
    limits = limits or InboundLimits()
    archive = _open(zip_bytes)
    infos = [i for i in archive.infolist() if not i.is_dir()]
    _check_entries(infos, limits)
    by_name = {_safe_name(i.filename).upper(): i for i in infos}
    metadata_names = [n for n in by_name if n.startswith("IHE_XDM/") and n.endswith("/METADATA.XML")]
    if not metadata_names:
        raise XdmError("xdm-no-metadata", "no IHE_XDM/<subset>/METADATA.XML in the archive")
    documents: list[XdmDocument] = []
    author = institution = None
    metadata = b""
    for name in sorted(metadata_names):
        metadata = _read_entry(archive, by_name[name], limits)
        root = parse_untrusted(metadata).getroot()
        author, institution = _submission_author(root)
        subset = posixpath.dirname(by_name[name].filename)
        for entry in root.iter(f"{{{RIM}}}ExtrinsicObject"):
            documents.append(_document(archive, by_name, subset, entry, limits))
    if not documents:
        raise XdmError("xdm-empty", "the archive holds no document")
    return XdmPackage(documents, author, institution, metadata)
