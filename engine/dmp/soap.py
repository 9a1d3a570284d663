"""SOAP 1.2 envelopes with WS-Addressing and WS-Security, MTOM/XOP packaging, SOAP faults."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from lxml import etree

from engine.errors import ValidationError

SOAP = "http://www.w3.org/2003/05/soap-envelope"
WSA = "http://www.w3.org/2005/08/addressing"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
NSMAP = {"soap": SOAP, "wsa": WSA}

ACTION_ITI41 = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"
ACTION_ITI41_RESPONSE = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-bResponse"
ACTION_ITI18 = "urn:ihe:iti:2007:RegistryStoredQuery"
ACTION_ITI18_RESPONSE = "urn:ihe:iti:2007:RegistryStoredQueryResponse"
ACTION_ITI57 = "urn:ihe:iti:2010:UpdateDocumentSet"
ACTION_ITI57_RESPONSE = "urn:ihe:iti:2010:UpdateDocumentSetResponse"
RESPONSE_ACTIONS = {
    ACTION_ITI41: ACTION_ITI41_RESPONSE,
    ACTION_ITI18: ACTION_ITI18_RESPONSE,
    ACTION_ITI57: ACTION_ITI57_RESPONSE,
}


def envelope(
    action: str, to: str, body: etree._Element, security: etree._Element | None = None, relates_to: str | None = None
) -> etree._Element:
    """A SOAP 1.2 envelope: WS-Addressing header (+ wsse:Security) and one body element."""
    env = etree.Element(f"{{{SOAP}}}Envelope", nsmap=NSMAP)
    header = etree.SubElement(env, f"{{{SOAP}}}Header")
    action_node = etree.SubElement(header, f"{{{WSA}}}Action")
    action_node.set(f"{{{SOAP}}}mustUnderstand", "true")
    action_node.text = action
    etree.SubElement(header, f"{{{WSA}}}MessageID").text = f"urn:uuid:{uuid.uuid4()}"
    if relates_to:
        etree.SubElement(header, f"{{{WSA}}}RelatesTo").text = relates_to
    if to:
        etree.SubElement(header, f"{{{WSA}}}To").text = to
    if security is not None:
        wsse = etree.SubElement(header, f"{{{WSSE}}}Security", nsmap={"wsse": WSSE})
        wsse.set(f"{{{SOAP}}}mustUnderstand", "true")
        wsse.append(security)
    etree.SubElement(env, f"{{{SOAP}}}Body").append(body)
    return env


def fault(code: str, subcode: str | None, reason: str) -> etree._Element:
    """A SOAP 1.2 Fault (code `Sender`/`Receiver`, subcode a QName text such as wsse:FailedCheck)."""
    env = etree.Element(f"{{{SOAP}}}Envelope", nsmap={**NSMAP, "wsse": WSSE})
    body = etree.SubElement(env, f"{{{SOAP}}}Body")
    node = etree.SubElement(body, f"{{{SOAP}}}Fault")
    code_node = etree.SubElement(node, f"{{{SOAP}}}Code")
    etree.SubElement(code_node, f"{{{SOAP}}}Value").text = f"soap:{code}"
    if subcode:
        sub = etree.SubElement(code_node, f"{{{SOAP}}}Subcode")
        etree.SubElement(sub, f"{{{SOAP}}}Value").text = subcode
    reason_node = etree.SubElement(node, f"{{{SOAP}}}Reason")
    text = etree.SubElement(reason_node, f"{{{SOAP}}}Text")
    text.set("{http://www.w3.org/XML/1998/namespace}lang", "en")
    text.text = reason
    return env


@dataclass
class Fault:
    """A parsed SOAP fault."""

    code: str
    subcode: str | None
    reason: str

    @property
    def sender_side(self) -> bool:
        """True when the fault blames the request (retrying the same request cannot help)."""
        return self.code.endswith("Sender")


def parse_fault(env: etree._Element) -> Fault | None:
    """The Fault in `env`, or None."""
    node = env.find(f"{{{SOAP}}}Body/{{{SOAP}}}Fault")
    if node is None:
        return None
    values = [v.text or "" for v in node.iter(f"{{{SOAP}}}Value")]
    reason = " ".join(t.text or "" for t in node.iter(f"{{{SOAP}}}Text"))
    return Fault(values[0] if values else "", values[1] if len(values) > 1 else None, reason)


def body_child(env: etree._Element) -> etree._Element | None:
    """The first element in the SOAP Body."""
    body = env.find(f"{{{SOAP}}}Body")
    if body is None:
        return None
    return next(iter(body.iterchildren(tag=etree.Element)), None)


# -- MTOM / XOP -------------------------------------------------------------------------------


@dataclass
class MtomMessage:
    """A multipart/related XOP package: the root SOAP part and attachments by Content-ID."""

    root: bytes
    parts: dict[str, bytes]
    content_type: str


def mtom_pack(soap: bytes, attachments: dict[str, bytes], action: str) -> tuple[str, bytes]:
    """Serialise an MTOM message; returns (HTTP Content-Type, body)."""
    boundary = f"MIMEBoundary_{uuid.uuid4().hex}"
    root_cid = f"root.{uuid.uuid4().hex}@pfi"
    chunks = [
        _part(root_cid, 'application/xop+xml; charset=UTF-8; type="application/soap+xml"', soap, boundary, "8bit")
    ]
    for cid, data in attachments.items():
        chunks.append(_part(cid, "application/octet-stream", data, boundary, "binary"))
    body = b"".join(chunks) + f"--{boundary}--\r\n".encode()
    content_type = (
        f'multipart/related; boundary="{boundary}"; type="application/xop+xml"; '
        f'start="<{root_cid}>"; start-info="application/soap+xml"; '
        f'action="{action}"'
    )
    return content_type, body


def _part(cid: str, content_type: str, data: bytes, boundary: str, encoding: str) -> bytes:
    head = (
        f"--{boundary}\r\nContent-Type: {content_type}\r\n"
        f"Content-Transfer-Encoding: {encoding}\r\nContent-ID: <{cid}>\r\n\r\n"
    )
    return head.encode() + data + b"\r\n"


def content_type_params(value: str) -> tuple[str, dict[str, str]]:
    """Split a Content-Type header into its media type and lower-cased parameters."""
    media, _, rest = value.partition(";")
    params = {}
    for match in re.finditer(r'\s*([\w.-]+)\s*=\s*("([^"]*)"|[^;]*)\s*;?', rest):
        params[match.group(1).lower()] = match.group(3) if match.group(3) is not None else match.group(2).strip()
    return media.strip().lower(), params


def mtom_unpack(content_type: str, body: bytes) -> MtomMessage:
    """Parse a multipart/related XOP body; raise ValidationError with a precise reason."""
    media, params = content_type_params(content_type)
    if media != "multipart/related":
        raise ValidationError(f"expected multipart/related, got {media or 'no Content-Type'}")
    if params.get("type") != "application/xop+xml":
        raise ValidationError('multipart/related without type="application/xop+xml"')
    boundary = params.get("boundary")
    if not boundary:
        raise ValidationError("multipart/related without boundary")
    parts = _split_parts(body, boundary.encode())
    start = params.get("start", "").strip("<>")
    root_cid = start or next(iter(parts), "")
    if root_cid not in parts:
        raise ValidationError(f"MTOM root part <{root_cid}> not found")
    headers, root = parts.pop(root_cid)
    if not headers.get("content-type", "").lower().startswith("application/xop+xml"):
        raise ValidationError("MTOM root part is not application/xop+xml")
    return MtomMessage(root, {cid: data for cid, (_, data) in parts.items()}, content_type)


def _split_parts(body: bytes, boundary: bytes) -> dict[str, tuple[dict[str, str], bytes]]:
    delimiter = b"--" + boundary
    pieces = body.split(delimiter)
    if len(pieces) < 3 or not pieces[-1].startswith(b"--"):
        raise ValidationError("multipart body is truncated or has no closing boundary")
    parts = {}
    for index, piece in enumerate(pieces[1:-1]):
        head, sep, data = piece.partition(b"\r\n\r\n")
        if not sep:
            raise ValidationError(f"multipart part {index} has no header/body separator")
        headers = _headers(head)
        cid = headers.get("content-id", f"part{index}").strip().strip("<>")
        parts[cid] = (headers, data[:-2] if data.endswith(b"\r\n") else data)
    return parts


def _headers(block: bytes) -> dict[str, str]:
    headers = {}
    for line in block.decode("latin-1").strip().split("\r\n"):
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    return headers
