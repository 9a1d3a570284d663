"""Submission-set signature (IHE DSG style, XAdES-BES) seen in the DRIMbox PoC and the captured
DMP sample: an XML-DSig signature whose ds:Manifest lists a SHA-1 digest of every document of the
submission (URI `urn:oid:<uniqueId>`), with the submission set's uniqueId as `recordID`.

Opt-in (`submission_signature: true`): the stored sources do not say whether the DMP requires it
from a PFI. Signed with the organisation key; SignedInfo uses exclusive c14n and RSA-SHA256.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import uuid
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from lxml import etree

from engine.dmp.metadata import Code

DS = "http://www.w3.org/2000/09/xmldsig#"
XADES = "http://uri.etsi.org/01903/v1.3.2#"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
SHA1 = "http://www.w3.org/2000/09/xmldsig#sha1"
PURPOSE_SOURCE = "1.2.840.10065.1.12.1.14"
#: DocumentEntry codes of a signature document (IHE DSG)
CLASS_CODE = Code(code="urn:oid:1.3.6.1.4.1.19376.1.2.1.1.1", scheme="URN", display="Digital Signature")
TYPE_CODE = Code(code="E1762", scheme="ASTM", display="Full Document")
FORMAT_CODE = Code(code=DS, scheme="URN", display="Default Signature Style")
EVENT_CODE = Code(code=PURPOSE_SOURCE, scheme="1.2.840.10065.1.12", display="Source")


def _c14n(node: etree._Element) -> bytes:
    return etree.tostring(node, method="c14n", exclusive=True, with_comments=False)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _el(parent, ns: str, tag: str, text: str | None = None, **attrs) -> etree._Element:
    node = etree.SubElement(parent, f"{{{ns}}}{tag}", attrs)
    if text is not None:
        node.text = text
    return node


def _reference(parent, uri: str, digest: bytes, method: str, kind: str | None = None) -> None:
    ref = _el(parent, DS, "Reference", URI=uri, **({"Type": kind} if kind else {}))
    if uri.startswith("#"):
        transforms = _el(ref, DS, "Transforms")
        _el(transforms, DS, "Transform", Algorithm=EXC_C14N)
    _el(ref, DS, "DigestMethod", Algorithm=method)
    _el(ref, DS, "DigestValue", _b64(digest))


class SubmissionSigner:
    """Signs submission sets with the organisation certificate."""

    def __init__(self, cert_pem: bytes, key_pem: bytes):
        self._cert = x509.load_pem_x509_certificate(cert_pem)
        self._key = serialization.load_pem_private_key(key_pem, password=None)

    def sign(self, documents: dict[str, bytes], submission_set_uid: str, now: dt.datetime) -> bytes:
        """The signature document for `documents` (uniqueId → bytes)."""
        sig_id = f"sig-{uuid.uuid4().hex}"
        root = etree.Element(f"{{{DS}}}Signature", nsmap={"ds": DS}, Id=sig_id)
        signed_info = _el(root, DS, "SignedInfo")
        _el(signed_info, DS, "CanonicalizationMethod", Algorithm=EXC_C14N)
        _el(signed_info, DS, "SignatureMethod", Algorithm=RSA_SHA256)
        value = _el(root, DS, "SignatureValue")
        key_info = _el(root, DS, "KeyInfo")
        _el(
            _el(key_info, DS, "X509Data"),
            DS,
            "X509Certificate",
            _b64(self._cert.public_bytes(serialization.Encoding.DER)),
        )
        props = self._qualifying(root, sig_id, now)
        _purpose(root, sig_id, submission_set_uid)
        manifest = _manifest(root, documents)
        _reference(signed_info, "#IHEManifest", hashlib.sha256(_c14n(manifest)).digest(), SHA256, f"{DS}Manifest")
        _reference(
            signed_info,
            f"#{props.get('Id')}",
            hashlib.sha256(_c14n(props)).digest(),
            SHA256,
            "http://uri.etsi.org/01903#SignedProperties",
        )
        signature = self._key.sign(_c14n(signed_info), padding.PKCS1v15(), hashes.SHA256())
        value.text = _b64(signature)
        return etree.tostring(root, xml_declaration=True, encoding="UTF-8")

    def _qualifying(self, root, sig_id: str, now: dt.datetime) -> etree._Element:
        obj = _el(root, DS, "Object")
        qualifying = etree.SubElement(
            obj, f"{{{XADES}}}QualifyingProperties", nsmap={"xades": XADES}, Target=f"#{sig_id}"
        )
        props = _el(qualifying, XADES, "SignedProperties", Id=f"{sig_id}-SignedProperties")
        sig_props = _el(props, XADES, "SignedSignatureProperties")
        _el(sig_props, XADES, "SigningTime", now.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
        cert = _el(_el(sig_props, XADES, "SigningCertificate"), XADES, "Cert")
        digest = _el(cert, XADES, "CertDigest")
        _el(digest, DS, "DigestMethod", Algorithm=SHA256)
        _el(
            digest,
            DS,
            "DigestValue",
            _b64(hashlib.sha256(self._cert.public_bytes(serialization.Encoding.DER)).digest()),
        )
        serial = _el(cert, XADES, "IssuerSerial")
        _el(serial, DS, "X509IssuerName", self._cert.issuer.rfc4514_string())
        _el(serial, DS, "X509SerialNumber", str(self._cert.serial_number))
        policy = _el(sig_props, XADES, "SignaturePolicyIdentifier")
        _el(policy, XADES, "SignaturePolicyImplied")
        return props


def _purpose(root, sig_id: str, submission_set_uid: str) -> None:
    props = _el(_el(root, DS, "Object"), DS, "SignatureProperties")
    _el(props, DS, "SignatureProperty", PURPOSE_SOURCE, Id="purposeOfSignature", Target=f"#{sig_id}")
    _el(props, DS, "SignatureProperty", f"urn:oid:{submission_set_uid}", Id="recordID", Target=f"#{sig_id}")


def _manifest(root, documents: dict[str, bytes]) -> etree._Element:
    manifest = _el(_el(root, DS, "Object"), DS, "Manifest", Id="IHEManifest")
    for unique_id, data in documents.items():
        _reference(manifest, f"urn:oid:{unique_id}", hashlib.sha1(data).digest(), SHA1)
    return manifest


# -- verification (simulator) ------------------------------------------------------------------


@dataclass
class SignatureCheck:
    """Outcome of a submission-set signature check."""

    problems: list[str]
    record_id: str | None = None


def verify(signature_doc: etree._Element, cert_pem: bytes, documents: dict[str, bytes]) -> SignatureCheck:
    """Check SignedInfo digests, the RSA signature with `cert_pem`, and that the Manifest lists
    exactly `documents` with their SHA-1 digests."""
    by_id = {n.get("Id"): n for n in signature_doc.iter() if n.get("Id")}
    signed_info = signature_doc.find(f"{{{DS}}}SignedInfo")
    if signature_doc.tag != f"{{{DS}}}Signature" or signed_info is None:
        return SignatureCheck(["the signature document is not a ds:Signature"])
    problems = [p for ref in signed_info.findall(f"{{{DS}}}Reference") for p in _reference_problems(ref, by_id)]
    problems += _value_problems(signature_doc, signed_info, cert_pem)
    manifest = by_id.get("IHEManifest")
    problems += (
        _manifest_problems(manifest, documents) if manifest is not None else ["no ds:Manifest with Id IHEManifest"]
    )
    record = by_id.get("recordID")
    return SignatureCheck(problems, record.text if record is not None else None)


def _reference_problems(ref, by_id) -> list[str]:
    target = by_id.get(ref.get("URI", "").lstrip("#"))
    if target is None:
        return [f"signed reference {ref.get('URI')} not found"]
    expected = ref.findtext(f"{{{DS}}}DigestValue") or ""
    if _b64(hashlib.sha256(_c14n(target)).digest()) != expected:
        return [f"digest of {ref.get('URI')} does not match (signed content altered)"]
    return []


def _value_problems(root, signed_info, cert_pem: bytes) -> list[str]:
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        signature = base64.b64decode(root.findtext(f"{{{DS}}}SignatureValue") or "")
        cert.public_key().verify(signature, _c14n(signed_info), padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        return ["SignatureValue does not verify with the organisation certificate"]
    return []


def _manifest_problems(manifest, documents: dict[str, bytes]) -> list[str]:
    listed = {
        ref.get("URI", ""): ref.findtext(f"{{{DS}}}DigestValue") for ref in manifest.findall(f"{{{DS}}}Reference")
    }
    problems = []
    for unique_id, data in documents.items():
        digest = listed.pop(f"urn:oid:{unique_id}", None)
        if digest is None:
            problems.append(f"document {unique_id} is not in the signed manifest")
        elif digest != _b64(hashlib.sha1(data).digest()):
            problems.append(f"document {unique_id} differs from its signed digest")
    problems += [f"manifest lists {uri}, absent from the submission" for uri in listed]
    return problems


def signature_metadata(meta, data: bytes, now: dt.datetime, unique_id: str):
    """DocumentEntry metadata of the signature document, derived from the signed CDA's."""
    return meta.model_copy(
        update={
            "unique_id": unique_id,
            "title": "Signature du lot de soumission",
            "language_code": "art",
            "creation_time": now.astimezone(dt.timezone.utc).strftime("%Y%m%d%H%M%S"),
            "type_code": TYPE_CODE,
            "class_code": CLASS_CODE,
            "format_code": FORMAT_CODE,
            "level": "signature",
            "confidentiality_codes": [Code(code="N", scheme="2.16.840.1.113883.5.25", display="Normal")],
            "legal_authenticator": None,
            "legal_authenticator_code": None,
            "event_codes": [EVENT_CODE],
            "reference_ids": [],
            "replaced_document_id": None,
            "hash": hashlib.sha1(data).hexdigest(),
            "size": len(data),
        }
    )
