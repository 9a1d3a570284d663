"""A CDA R2 document made readable for the console: header (title, dates, author, custodian,
patient masked unless revealed) and the narrative of each section, converted element by element
into a small set of HTML tags with every text escaped (nothing of the document is trusted: no
attribute, link or style crosses over)."""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

NS = {"h": "urn:hl7-org:v3"}
_H = "{urn:hl7-org:v3}"
# narrative element -> HTML tag (anything else keeps only its text)
_TAGS = {
    "paragraph": "p",
    "item": "li",
    "table": "table",
    "thead": "thead",
    "tbody": "tbody",
    "tfoot": "tfoot",
    "tr": "tr",
    "th": "th",
    "td": "td",
    "caption": "caption",
    "sub": "sub",
    "sup": "sup",
    "content": "span",
}


@dataclass
class CdaView:
    title: str = ""
    code: str = ""
    effective: str = ""
    document_id: str = ""
    set_id: str = ""
    version: str = ""
    authors: list[str] = field(default_factory=list)
    custodian: str = ""
    patient: list[tuple[str, str]] = field(default_factory=list)
    sections: list[tuple[int, str, str]] = field(default_factory=list)  # (depth, title, safe html)
    non_xml_body: str = ""
    error: str = ""


def embedded_documents(raw: bytes) -> list[tuple[str, bytes]]:
    """(location, bytes) of the documents an HL7 message carries in OBX-5 (type ED, base64)."""
    from engine.docrequest.payload import Base64Error, decode_base64
    from engine.errors import ParseError
    from engine.hl7.message import Message

    try:
        message = Message.parse(raw)
    except ParseError:
        return []
    found = []
    for index, obx in enumerate(message.segments("OBX"), 1):
        if obx.field(2) != "ED":
            continue
        parts = obx.field(5).split(message.encoding.component)
        if len(parts) >= 5 and parts[3].strip().lower() == "base64":
            try:
                found.append((f"OBX^{index}", decode_base64(parts[4])[0]))
            except Base64Error:
                continue
    return found


def cda_view(content: bytes, reveal: bool) -> CdaView:
    from engine.xmlsafe import parse_untrusted

    view = CdaView()
    try:
        root = parse_untrusted(content).getroot()
    except Exception as exc:  # not XML, or refused as unsafe: say so, show nothing of it
        view.error = f"not a readable XML document: {str(exc)[:200]}"
        return view
    if root.tag != _H + "ClinicalDocument":
        view.error = "not an HL7 CDA R2 ClinicalDocument"
        return view
    text = lambda xpath: " ".join(" ".join(root.xpath(xpath, namespaces=NS)).split())  # noqa: E731
    view.title = text("h:title//text()")
    view.code = " ".join(filter(None, [text("h:code/@code"), text("h:code/@displayName")]))
    view.effective = _ts(text("h:effectiveTime/@value"))
    view.document_id = ".".join(filter(None, [text("h:id/@root"), text("h:id/@extension")]))
    view.set_id = ".".join(filter(None, [text("h:setId/@root"), text("h:setId/@extension")]))
    view.version = text("h:versionNumber/@value")
    view.authors = [_person(a) for a in root.xpath("h:author/h:assignedAuthor", namespaces=NS)]
    view.custodian = text("h:custodian//h:representedCustodianOrganization/h:name//text()")
    view.patient = _patient(root, reveal)
    for section in root.xpath("h:component/h:structuredBody/h:component/h:section", namespaces=NS):
        _add_section(view, section, 0)
    media = root.xpath("h:component/h:nonXMLBody/h:text", namespaces=NS)
    if media:
        view.non_xml_body = (
            f"non-XML body ({media[0].get('mediaType', 'unknown type')}, {len(media[0].text or '')} characters)"
        )
    return view


def _person(assigned) -> str:
    name = " ".join(" ".join(assigned.xpath("h:assignedPerson/h:name//text()", namespaces=NS)).split())
    organization = " ".join(" ".join(assigned.xpath("h:representedOrganization/h:name//text()", namespaces=NS)).split())
    return ", ".join(filter(None, [name, organization])) or "-"


def _patient(root, reveal: bool) -> list[tuple[str, str]]:
    role = root.xpath("h:recordTarget/h:patientRole", namespaces=NS)
    if not role:
        return []
    role = role[0]
    if not reveal:
        return [("identity", "*** (masked: reveal it on this page, the journal records who asked)")]
    ids = [f"{i.get('extension', '')} ({i.get('root', '')})" for i in role.xpath("h:id", namespaces=NS)]
    names = [" ".join(" ".join(n.xpath(".//text()")).split()) for n in role.xpath("h:patient/h:name", namespaces=NS)]
    birth = role.xpath("h:patient/h:birthTime/@value", namespaces=NS)
    gender = role.xpath("h:patient/h:administrativeGenderCode/@code", namespaces=NS)
    return [
        ("identifiers", "; ".join(ids)),
        ("name", "; ".join(names)),
        ("birth", _ts(birth[0]) if birth else "-"),
        ("sex", gender[0] if gender else "-"),
    ]


def _add_section(view: CdaView, section, depth: int) -> None:
    title = " ".join(" ".join(section.xpath("h:title//text()", namespaces=NS)).split())
    narrative = section.find(_H + "text")
    view.sections.append((depth, title or "(untitled section)", _html(narrative) if narrative is not None else ""))
    for child in section.xpath("h:component/h:section", namespaces=NS):
        _add_section(view, child, depth + 1)


def _html(element) -> str:
    """Narrative block -> HTML made only of _TAGS, ul/ol and br, every text escaped."""
    out = [escape(element.text or "")]
    for child in element:
        if not isinstance(child.tag, str):  # comments, processing instructions
            out.append(escape(child.tail or ""))
            continue
        name = child.tag.removeprefix(_H)
        if name == "br":
            out.append("<br>")
        elif name == "list":
            tag = "ol" if child.get("listType") == "ordered" else "ul"
            out.append(f"<{tag}>{_html(child)}</{tag}>")
        elif name == "renderMultiMedia":
            out.append("[image]")
        elif name in _TAGS:
            out.append(f"<{_TAGS[name]}>{_html(child)}</{_TAGS[name]}>")
        else:
            out.append(_html(child))
        out.append(escape(child.tail or ""))
    return "".join(out)


def _ts(value: str) -> str:
    """HL7 TS (yyyymmddhhmmss+zzzz) as yyyy-mm-dd hh:mm."""
    digits = value[:12]
    if len(digits) >= 8:
        stamp = f"{digits[0:4]}-{digits[4:6]}-{digits[6:8]}"
        if len(digits) >= 12:
            stamp += f" {digits[8:10]}:{digits[10:12]}"
        return stamp + (f" ({value[14:]})" if len(value) > 14 and value[14] in "+-" else "")
    return value
