"""VIHF: the signed SAML 2 assertion the DMP requires in the WS-Security header.

Attributes follow the ANS mapping (spec digest §4): VIHF_Version, Authentification_Mode (INDIRECTE
for a PFI), Identifiant_Structure, Secteur_Activite, subject-id, role, resource-id (INS),
Ressource_URN, purposeofuse, LPS_*. Signature: XML-DSig enveloped, RSA-SHA256, exclusive c14n,
with the organisation certificate (signxml).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from lxml import etree
from signxml import XMLSigner, XMLVerifier
from signxml.exceptions import InvalidInput, InvalidSignature

SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
DS = "http://www.w3.org/2000/09/xmldsig#"
HL7 = "urn:hl7-org:v3"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"

A_VERSION = "VIHF_Version"
A_MODE = "Authentification_Mode"
A_STRUCTURE = "Identifiant_Structure"
A_SECTOR = "Secteur_Activite"
A_SUBJECT = "urn:oasis:names:tc:xspa:1.0:subject:subject-id"
A_ROLE = "urn:oasis:names:tc:xacml:2.0:subject:role"
A_RESOURCE = "urn:oasis:names:tc:xacml:2.0:resource:resource-id"
A_RESOURCE_URN = "Ressource_URN"
A_PURPOSE = "urn:oasis:names:tc:xspa:1.0:subject:purposeofuse"
A_CONFIDENTIALITY = "urn:oasis:names:tc:xspa:1.0:resource:patient:hl7:confidentiality-code"
A_LPS_NAME = "LPS_Nom"
A_LPS_VERSION = "LPS_Version"
A_LPS_HOMOLOGATION = "LPS_ID_HOMOLOGATION_DMP"
A_LPS_ID = "LPS_ID"
REQUIRED_ATTRIBUTES = (
    A_VERSION,
    A_MODE,
    A_STRUCTURE,
    A_SECTOR,
    A_SUBJECT,
    A_ROLE,
    A_RESOURCE,
    A_RESOURCE_URN,
    A_PURPOSE,
    A_LPS_NAME,
    A_LPS_VERSION,
    A_LPS_HOMOLOGATION,
)
PROFESSION_OID = "1.2.250.1.71.1.2.7"
SPECIALTY_OID = "1.2.250.1.71.4.2.5"


class VihfError(Exception):
    """The VIHF is missing, unsigned, badly signed or incomplete; `subcode` is the WS-Security
    fault subcode the DMP side answers with."""

    def __init__(self, subcode: str, reason: str):
        self.subcode = subcode
        self.reason = reason
        super().__init__(f"{subcode}: {reason}")


@dataclass
class VihfSubject:
    """Who acts: NameID (national id), display name, and role CE values (code, codeSystem)."""

    name_id: str
    name: str
    roles: list[tuple[str, str]]


@dataclass
class VihfContext:
    """Per-request VIHF values."""

    structure_id: str
    activity_sector: str
    subject: VihfSubject
    resource_id: str
    secret_connection: bool = False


@dataclass
class VihfIdentity:
    """Per-channel VIHF values."""

    version: str
    auth_mode: str
    lps_name: str
    lps_version: str
    lps_homologation_id: str
    lps_id: str | None = None


def roles_from_code(code: str | None) -> list[tuple[str, str]]:
    """`G15_10/SM44` (CDA author/legalAuthenticator code) → profession 10 + specialty SM44."""
    if not code:
        return []
    profession, _, specialty = code.partition("/")
    roles = [(profession.split("_")[-1], PROFESSION_OID)]
    if specialty:
        roles.append((specialty, SPECIALTY_OID))
    return roles


class VihfSigner:
    """Builds and signs assertions with one organisation key pair (loaded once)."""

    def __init__(self, cert_pem: bytes, key_pem: bytes, identity: VihfIdentity):
        # parsed once: signxml re-parses PEM on every call otherwise
        self._cert = x509.load_pem_x509_certificate(cert_pem)
        self._key = serialization.load_pem_private_key(key_pem, password=None)
        self._issuer = self._cert.subject.rfc4514_string()
        self._identity = identity
        self._signer = XMLSigner(signature_algorithm="rsa-sha256", digest_algorithm="sha256", c14n_algorithm=EXC_C14N)

    def assertion(self, context: VihfContext, now: dt.datetime) -> etree._Element:
        """A signed VIHF assertion for `context`."""
        unsigned = self.unsigned(context, now)
        return self._signer.sign(
            unsigned, key=self._key, cert=[self._cert], reference_uri="#" + unsigned.get("ID"), id_attribute="ID"
        )

    def unsigned(self, context: VihfContext, now: dt.datetime) -> etree._Element:
        """The assertion before signing (a ds:Signature placeholder right after Issuer)."""
        instant = now.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        root = etree.Element(
            f"{{{SAML}}}Assertion",
            nsmap={"saml2": SAML},
            ID=f"_{uuid.uuid4().hex}",
            IssueInstant=instant,
            Version="2.0",
        )
        issuer = etree.SubElement(
            root, f"{{{SAML}}}Issuer", Format="urn:oasis:names:tc:SAML:1.1:nameid-format:X509SubjectName"
        )
        issuer.text = self._issuer
        etree.SubElement(root, f"{{{DS}}}Signature", nsmap={"ds": DS}, Id="placeholder")
        subject = etree.SubElement(root, f"{{{SAML}}}Subject")
        name_id = etree.SubElement(
            subject, f"{{{SAML}}}NameID", Format="urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified"
        )
        name_id.text = context.subject.name_id
        _authn(root, instant)
        self._attributes(etree.SubElement(root, f"{{{SAML}}}AttributeStatement"), context)
        return root

    def _attributes(self, statement, context: VihfContext) -> None:
        ident = self._identity
        for name, value in (
            (A_VERSION, ident.version),
            (A_MODE, ident.auth_mode),
            (A_STRUCTURE, context.structure_id),
            (A_SECTOR, context.activity_sector),
            (A_SUBJECT, context.subject.name),
        ):
            _text_attribute(statement, name, value)
        role = _attribute(statement, A_ROLE)
        for code, system in context.subject.roles:
            _ce(etree.SubElement(role, f"{{{SAML}}}AttributeValue"), "Role", code, system)
        _text_attribute(statement, A_RESOURCE, context.resource_id)
        _text_attribute(statement, A_RESOURCE_URN, "urn:dmp")
        purpose = etree.SubElement(_attribute(statement, A_PURPOSE), f"{{{SAML}}}AttributeValue")
        _ce(purpose, "PurposeOfUse", "normal", "1.2.250.1.213.1.1.4.248")
        if context.secret_connection:
            value = etree.SubElement(_attribute(statement, A_CONFIDENTIALITY), f"{{{SAML}}}AttributeValue")
            _ce(value, "ConfidentialityCode", "R", "2.16.840.1.113883.5.25")
        if ident.lps_id:
            _text_attribute(statement, A_LPS_ID, ident.lps_id)
        _text_attribute(statement, A_LPS_NAME, ident.lps_name)
        _text_attribute(statement, A_LPS_VERSION, ident.lps_version)
        _text_attribute(statement, A_LPS_HOMOLOGATION, ident.lps_homologation_id)


def _authn(root, instant: str) -> None:
    authn = etree.SubElement(root, f"{{{SAML}}}AuthnStatement", AuthnInstant=instant)
    ctx = etree.SubElement(authn, f"{{{SAML}}}AuthnContext")
    etree.SubElement(ctx, f"{{{SAML}}}AuthnContextClassRef").text = "urn:oasis:names:tc:SAML:2.0:ac:classes:TLSClient"


def _attribute(statement, name: str) -> etree._Element:
    return etree.SubElement(statement, f"{{{SAML}}}Attribute", Name=name)


def _text_attribute(statement, name: str, value: str) -> None:
    etree.SubElement(_attribute(statement, name), f"{{{SAML}}}AttributeValue").text = value


def _ce(parent, tag: str, code: str, system: str) -> None:
    node = etree.SubElement(parent, f"{{{HL7}}}{tag}", nsmap={None: HL7, "xsi": XSI}, code=code, codeSystem=system)
    node.set(f"{{{XSI}}}type", "CE")


# -- verification (simulator side) -----------------------------------------------------------


@dataclass
class VerifiedVihf:
    """Attributes of a VIHF whose signature checked out."""

    name_id: str
    attributes: dict[str, list[str]]
    roles: list[tuple[str, str]]


def verify_assertion(assertion: etree._Element, cert_pem: bytes) -> VerifiedVihf:
    """Check the enveloped signature against `cert_pem` (the TLS client certificate) and the
    presence of every required attribute; raise VihfError otherwise."""
    data = etree.tostring(assertion)
    signed_info = assertion.find(f"{{{DS}}}Signature")
    if signed_info is None:
        raise VihfError("wsse:InvalidSecurity", "VIHF assertion is not signed")
    try:
        result = XMLVerifier().verify(data, x509_cert=cert_pem.decode(), id_attribute="ID")
    except (InvalidSignature, InvalidInput) as exc:
        raise VihfError("wsse:FailedCheck", f"VIHF signature invalid: {exc}") from exc
    signed = result.signed_xml
    if signed is None or signed.tag != f"{{{SAML}}}Assertion":
        raise VihfError("wsse:FailedCheck", "the signature does not cover the assertion")
    return _read_attributes(signed)


def _read_attributes(signed: etree._Element) -> VerifiedVihf:
    attributes: dict[str, list[str]] = {}
    roles: list[tuple[str, str]] = []
    for attr in signed.iter(f"{{{SAML}}}Attribute"):
        values = []
        for value in attr.iter(f"{{{SAML}}}AttributeValue"):
            coded = next(iter(value.iterchildren(tag=etree.Element)), None)
            if coded is not None:
                values.append(coded.get("code", ""))
                if attr.get("Name") == A_ROLE:
                    roles.append((coded.get("code", ""), coded.get("codeSystem", "")))
            else:
                values.append((value.text or "").strip())
        attributes[attr.get("Name")] = values
    missing = [name for name in REQUIRED_ATTRIBUTES if not any(attributes.get(name, []))]
    if missing:
        raise VihfError("wsse:InvalidSecurityToken", "VIHF attributes missing: " + ", ".join(missing))
    name_id = signed.findtext(f"{{{SAML}}}Subject/{{{SAML}}}NameID") or ""
    if not name_id.strip():
        raise VihfError("wsse:InvalidSecurityToken", "VIHF Subject/NameID missing")
    return VerifiedVihf(name_id=name_id, attributes=attributes, roles=roles)
