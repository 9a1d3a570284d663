"""Gates, VIHF signing/verification, MTOM packaging and registry-answer mapping."""

from __future__ import annotations

import datetime as dt

import pytest
from lxml import etree

from engine.dmp import ebrim, soap
from engine.dmp.client import _failure, _result
from engine.dmp.gates import check_publishable
from engine.dmp.vihf import (
    A_LPS_HOMOLOGATION,
    SAML,
    VihfContext,
    VihfError,
    VihfIdentity,
    VihfSigner,
    VihfSubject,
    roles_from_code,
    verify_assertion,
)
from engine.errors import ValidationError
from tests.dmp.conftest import INS, request_for

NOW = dt.datetime(2026, 11, 22, 3, 0, tzinfo=dt.timezone.utc)


# -- gates ---------------------------------------------------------------------------------


class Opposed:
    def is_opposed(self, ins: str) -> bool:
        return ins == INS


@pytest.mark.parametrize(
    "overrides, code",
    [
        ({"ins": " "}, "INS_MISSING"),
        ({"ins_oid": "1.2.3.4"}, "INS_OID_UNKNOWN"),
        ({"ins_qualified": False}, "INS_NOT_QUALIFIED"),
    ],
)
def test_gate_refusals(overrides, code):
    decision = check_publishable(request_for(b"<x/>", **overrides))
    assert not decision.allowed and decision.code == code and decision.reason


def test_gate_refuses_an_opposed_patient():
    decision = check_publishable(request_for(b"<x/>"), Opposed())
    assert (decision.allowed, decision.code) == (False, "PATIENT_OPPOSED")


def test_gate_allows_a_qualified_not_opposed_patient():
    assert check_publishable(request_for(b"<x/>")).allowed


# -- VIHF ----------------------------------------------------------------------------------


def _signer(pair) -> VihfSigner:
    return VihfSigner(
        pair.cert.read_bytes(), pair.key.read_bytes(), VihfIdentity("3.0", "INDIRECTE", "PFI-engine", "0.1.0", "HOM-1")
    )


def _context(secret: bool = False) -> VihfContext:
    return VihfContext(
        "3300017985",
        "SA07^1.2.250.1.71.4.2.4",
        VihfSubject("801234560801", "BIDEAULT Jacques", roles_from_code("G15_10/SM44")),
        f"{INS}^^^&1.2.250.1.213.1.4.10&ISO^NH",
        secret,
    )


def _roundtrip(node) -> etree._Element:
    return etree.fromstring(etree.tostring(node))


def test_roles_from_cda_code():
    assert roles_from_code("G15_10/SM44") == [("10", "1.2.250.1.71.1.2.7"), ("SM44", "1.2.250.1.71.4.2.5")]
    assert roles_from_code(None) == []


def test_vihf_signed_and_verified_against_the_certificate(pki):
    assertion = _roundtrip(_signer(pki.client).assertion(_context(), NOW))
    vihf = verify_assertion(assertion, pki.client.cert.read_bytes())
    assert vihf.name_id == "801234560801"
    assert vihf.attributes["Authentification_Mode"] == ["INDIRECTE"]
    assert vihf.attributes["urn:oasis:names:tc:xacml:2.0:resource:resource-id"] == [
        f"{INS}^^^&1.2.250.1.213.1.4.10&ISO^NH"
    ]
    assert vihf.attributes["Ressource_URN"] == ["urn:dmp"]
    assert ("SM44", "1.2.250.1.71.4.2.5") in vihf.roles
    sig = assertion.find("{http://www.w3.org/2000/09/xmldsig#}Signature")
    assert assertion.index(sig) == 1  # right after Issuer, as SAML requires
    methods = [m.get("Algorithm") for m in sig.iter("{*}SignatureMethod", "{*}CanonicalizationMethod")]
    assert "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256" in methods
    assert "http://www.w3.org/2001/10/xml-exc-c14n#" in methods


def test_secret_connection_adds_the_confidentiality_attribute(pki):
    assertion = _roundtrip(_signer(pki.client).assertion(_context(secret=True), NOW))
    names = [a.get("Name") for a in assertion.iter(f"{{{SAML}}}Attribute")]
    assert "urn:oasis:names:tc:xspa:1.0:resource:patient:hl7:confidentiality-code" in names


def test_tampered_vihf_fails_the_check(pki):
    assertion = _roundtrip(_signer(pki.client).assertion(_context(), NOW))
    assertion.find(f".//{{{SAML}}}NameID").text = "899999999999"
    with pytest.raises(VihfError) as info:
        verify_assertion(assertion, pki.client.cert.read_bytes())
    assert info.value.subcode == "wsse:FailedCheck"


def test_vihf_signed_with_another_key_fails_the_check(pki):
    assertion = _roundtrip(_signer(pki.client_other_ca).assertion(_context(), NOW))
    with pytest.raises(VihfError, match="signature invalid"):
        verify_assertion(assertion, pki.client.cert.read_bytes())


def test_vihf_missing_attribute_is_reported(pki):
    signer = _signer(pki.client)
    unsigned = signer.unsigned(_context(), NOW)
    for attr in unsigned.iter(f"{{{SAML}}}Attribute"):
        if attr.get("Name") == A_LPS_HOMOLOGATION:
            attr.getparent().remove(attr)
    signed = signer._signer.sign(
        unsigned, key=signer._key, cert=[signer._cert], reference_uri="#" + unsigned.get("ID"), id_attribute="ID"
    )
    with pytest.raises(VihfError) as info:
        verify_assertion(_roundtrip(signed), pki.client.cert.read_bytes())
    assert info.value.subcode == "wsse:InvalidSecurityToken"
    assert A_LPS_HOMOLOGATION in info.value.reason


def test_unsigned_vihf_is_refused(pki):
    unsigned = _signer(pki.client).unsigned(_context(), NOW)
    unsigned.remove(unsigned.find("{http://www.w3.org/2000/09/xmldsig#}Signature"))
    with pytest.raises(VihfError, match="not signed"):
        verify_assertion(unsigned, pki.client.cert.read_bytes())


# -- MTOM ----------------------------------------------------------------------------------


def test_mtom_roundtrip_keeps_binary_bytes():
    blob = bytes(range(256)) * 10 + b"\r\n--not-a-boundary\r\n"
    ctype, body = soap.mtom_pack(b"<soap/>", {"doc1@pfi": blob}, soap.ACTION_ITI41)
    media, params = soap.content_type_params(ctype)
    assert media == "multipart/related" and params["type"] == "application/xop+xml"
    assert params["start-info"] == "application/soap+xml"
    message = soap.mtom_unpack(ctype, body)
    assert message.root == b"<soap/>" and message.parts == {"doc1@pfi": blob}


@pytest.mark.parametrize(
    "mangle, reason",
    [
        (lambda c, b: ("application/soap+xml", b), "multipart/related"),
        (lambda c, b: (c.replace("application/xop+xml", "text/plain"), b), "xop"),
        (lambda c, b: (c, b[: len(b) // 2]), "truncated"),
    ],
)
def test_mtom_errors_are_explicit(mangle, reason):
    ctype, body = soap.mtom_pack(b"<soap/>", {"d@pfi": b"data"}, soap.ACTION_ITI41)
    with pytest.raises(ValidationError, match=reason):
        soap.mtom_unpack(*mangle(ctype, body))


# -- registry answers ----------------------------------------------------------------------


def test_partial_success_maps_to_partial():
    response = ebrim.registry_response(
        ebrim.PARTIAL, [ebrim.RegistryError("XDSRegistryMetadataError", "eventCode ignored", ebrim.SEVERITY_WARNING)]
    )
    result = _result(ebrim.parse_response(_roundtrip(response)), "urn:uuid:1")
    assert (result.status, result.error_code, result.ok) == ("partial", "XDSRegistryMetadataError", True)


@pytest.mark.parametrize(
    "code, transient", [("XDSRegistryBusy", True), ("XDSUnknownPatientId", False), ("DMPClosed", False)]
)
def test_registry_errors_map_to_transient_or_permanent(code, transient):
    response = ebrim.registry_response(ebrim.FAILURE, [ebrim.RegistryError(code, "ctx")])
    result = _failure(ebrim.parse_response(_roundtrip(response)), "ITI-41")
    assert (result.error_code, result.transient, result.status) == (code, transient, "error")


# -- submission-set signature --------------------------------------------------------------


def test_xades_signature_roundtrip_and_tampering(pki):
    from engine.dmp import xades

    signer = xades.SubmissionSigner(pki.client.cert.read_bytes(), pki.client.key.read_bytes())
    docs = {"1.2.3.4": b"<ClinicalDocument/>"}
    data = signer.sign(docs, "2.25.99", NOW)
    root = etree.fromstring(data)
    check = xades.verify(root, pki.client.cert.read_bytes(), docs)
    assert (check.problems, check.record_id) == ([], "urn:oid:2.25.99")
    assert xades.verify(root, pki.client_other_ca.cert.read_bytes(), docs).problems == [
        "SignatureValue does not verify with the organisation certificate"
    ]
    time_node = next(root.iter("{http://uri.etsi.org/01903/v1.3.2#}SigningTime"))
    time_node.text = "2020-01-01T00:00:00Z"
    problems = xades.verify(root, pki.client.cert.read_bytes(), docs).problems
    assert any("signed content altered" in p for p in problems)
    extra = xades.verify(etree.fromstring(data), pki.client.cert.read_bytes(), {**docs, "1.2.3.5": b"x"}).problems
    assert extra == ["document 1.2.3.5 is not in the signed manifest"]
