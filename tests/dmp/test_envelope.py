"""What the client puts on the wire: envelope, WS-Addressing, VIHF, ebRIM structure."""

from __future__ import annotations

import pytest
import pytest_twisted
from lxml import etree
from twisted.internet import defer, reactor

from engine.dmp import ebrim, soap
from engine.dmp.client import DmpClient
from engine.dmp.config import DmpChannelSettings, DmpEndpoints, LpsIdentity
from engine.dmp.vihf import SAML, verify_assertion
from tests.dmp.conftest import N1, N3, request_for

BASE = "https://dmp.invalid/si-dmp-server/v2/services"
RIM = ebrim.RIM


@pytest.fixture()
def offline_client(pki):
    settings = DmpChannelSettings(
        endpoints=DmpEndpoints.from_base(BASE),
        client_cert=pki.client.cert,
        client_key=pki.client.key,
        ca_bundle=pki.ca.cert,
        structure_id="3300017985",
        source_oid="1.2.250.1.999.1",
        lps=LpsIdentity(homologation_id="HOM-1"),
    )
    client = DmpClient(reactor, settings)
    yield client
    pytest_twisted.blockon(defer.Deferred.fromCoroutine(client.close()))


def _envelope(client, request, replaces=None):
    env, attachments = client.iti41_envelope(request, client.metadata(request), replaces)
    return env, attachments


def test_iti41_addressing_and_security(offline_client, corpus, pki):
    env, attachments = _envelope(offline_client, request_for(corpus(N3)))
    header = env.find(f"{{{soap.SOAP}}}Header")
    action = header.find(f"{{{soap.WSA}}}Action")
    assert action.text == "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"
    assert action.get(f"{{{soap.SOAP}}}mustUnderstand") == "true"
    assert header.findtext(f"{{{soap.WSA}}}To") == f"{BASE}/repository"
    assert header.findtext(f"{{{soap.WSA}}}MessageID").startswith("urn:uuid:")
    assertion = header.find(f"{{{soap.WSSE}}}Security/{{{SAML}}}Assertion")
    vihf = verify_assertion(etree.fromstring(etree.tostring(assertion)), pki.client.cert.read_bytes())
    assert vihf.attributes["Identifiant_Structure"] == ["3300017985"]
    assert vihf.attributes["urn:oasis:names:tc:xspa:1.0:subject:subject-id"] == ["BIDEAULT Jacques"]
    (cid,) = attachments
    include = next(env.iter(f"{{{ebrim.XOP}}}Include"))
    assert include.get("href") == f"cid:{cid}" and attachments[cid] == corpus(N3)


def test_iti41_registry_objects(offline_client, corpus):
    request = request_for(corpus(N3), patient_class="I")
    env, _ = _envelope(offline_client, request, replaces="urn:uuid:previous")
    objects = next(env.iter(f"{{{RIM}}}RegistryObjectList"))
    (entry,) = objects.findall(f"{{{RIM}}}ExtrinsicObject")
    (package,) = objects.findall(f"{{{RIM}}}RegistryPackage")
    assert entry.get("objectType") == ebrim.STABLE_DE and entry.get("mimeType") == "text/xml"
    assert ebrim.external_value(package, ebrim.SS["sourceId"]) == "1.2.250.1.999.1"
    (content,) = ebrim.classifications(package, ebrim.SS["contentTypeCode"])
    assert content.get("nodeRepresentation") == "03"  # PV1-2 = I
    (author,) = ebrim.classifications(package, ebrim.SS["author"])
    assert ebrim.slot_values(author, "authorPerson")[0].startswith("801234560801^BIDEAULT")
    assert ebrim.slot_values(author, "authorInstitution") == [
        "Centre de radiologie Ambroise^^^^^&1.2.250.1.71.4.2.2&ISO^IDNST^^^3300017985"
    ]
    kinds = {a.get("associationType"): a for a in objects.findall(f"{{{RIM}}}Association")}
    assert ebrim.slot_values(kinds[ebrim.HAS_MEMBER], "SubmissionSetStatus") == ["Original"]
    assert (kinds[ebrim.RPLC].get("sourceObject"), kinds[ebrim.RPLC].get("targetObject")) == (
        entry.get("id"),
        "urn:uuid:previous",
    )
    flagged = [c for c in objects.findall(f"{{{RIM}}}Classification") if c.get("classificationNode") == ebrim.SS_NODE]
    assert [c.get("classifiedObject") for c in flagged] == [package.get("id")]


def test_vihf_subject_falls_back_to_the_legal_authenticator(offline_client, corpus, pki):
    env, _ = _envelope(offline_client, request_for(corpus(N1), sender=None, sender_organisation=None))
    assertion = next(env.iter(f"{{{SAML}}}Assertion"))
    vihf = verify_assertion(etree.fromstring(etree.tostring(assertion)), pki.client.cert.read_bytes())
    assert vihf.name_id == "801234560801"
    assert vihf.attributes["Identifiant_Structure"] == ["3300017985"]  # channel default
    assert ("SM44", "1.2.250.1.71.4.2.5") in vihf.roles
