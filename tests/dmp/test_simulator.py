"""The simulator's strictness: hand-altered ITI-41 / ITI-18 / ITI-57 requests over real mTLS."""

from __future__ import annotations

import pytest
import pytest_twisted
from lxml import etree
from twisted.internet import defer, reactor

from engine.dmp import ebrim, soap
from engine.dmp.client import DmpClient
from engine.dmp.transport import HttpsPoster
from engine.xmlsafe import parse_untrusted
from tests.dmp.conftest import N3, request_for

E = ebrim.DE


@pytest.fixture()
def poster(settings):
    post = HttpsPoster(reactor, settings)
    yield post
    pytest_twisted.blockon(defer.Deferred.fromCoroutine(post.close()))


def _iti41(client: DmpClient, cda: bytes):
    request = request_for(cda)
    env, attachments = client.iti41_envelope(request, client.metadata(request))
    (cid,) = attachments
    return env, cid


async def _send(poster, settings, env, parts, content_type=None):
    data = etree.tostring(env, xml_declaration=True, encoding="UTF-8")
    ctype, body = soap.mtom_pack(data, parts, soap.ACTION_ITI41)
    answer = await poster.post(
        settings.endpoints.provide_and_register, content_type or ctype, body if content_type is None else data
    )
    if answer.content_type.startswith("multipart/related"):
        root = soap.mtom_unpack(answer.content_type, answer.body).root
    else:
        root = answer.body
    return answer.code, parse_untrusted(root).getroot()


def _errors(root) -> list[str]:
    outcome = ebrim.parse_response(soap.body_child(root))
    return [e.code for e in outcome.errors]


def _entry(env):
    return next(env.iter(ebrim.q(ebrim.RIM, "ExtrinsicObject")))


def _set_slot(entry, name: str, value: str | None):
    for node in entry.findall(ebrim.q(ebrim.RIM, "Slot")):
        if node.get("name") == name:
            if value is None:
                entry.remove(node)
            else:
                node.find(f"{{{ebrim.RIM}}}ValueList/{{{ebrim.RIM}}}Value").text = value


@pytest_twisted.ensureDeferred
async def test_hash_mismatch_is_reported(simulator, client, poster, settings, corpus):
    env, cid = _iti41(client, corpus(N3))
    _set_slot(_entry(env), "hash", "0" * 40)  # breaks nothing else: the VIHF does not sign it
    code, root = await _send(poster, settings, env, {cid: corpus(N3)})
    assert (code, _errors(root)) == (200, ["XDSNonIdenticalHash"])


@pytest_twisted.ensureDeferred
async def test_size_mismatch_and_missing_slot(simulator, client, poster, settings, corpus):
    env, cid = _iti41(client, corpus(N3))
    _set_slot(_entry(env), "size", "12")
    _set_slot(_entry(env), "serviceStartTime", None)
    code, root = await _send(poster, settings, env, {cid: corpus(N3)})
    assert sorted(_errors(root)) == ["XDSNonIdenticalSize", "XDSRegistryMetadataError"]


@pytest_twisted.ensureDeferred
async def test_xop_include_must_reference_a_part(simulator, client, poster, settings, corpus):
    env, cid = _iti41(client, corpus(N3))
    code, root = await _send(poster, settings, env, {"other@pfi": corpus(N3)})
    assert _errors(root) == ["XDSMissingDocument", "XDSMissingDocument"]


@pytest_twisted.ensureDeferred
async def test_patient_id_must_be_an_ins(simulator, client, poster, settings, corpus):
    env, cid = _iti41(client, corpus(N3))
    for node in env.iter(ebrim.q(ebrim.RIM, "ExternalIdentifier")):
        if node.get("identificationScheme") in (E["patientId"], ebrim.SS["patientId"]):
            node.set("value", "279035121518989^^^&1.2.3.4&ISO^NH")
    code, root = await _send(poster, settings, env, {cid: corpus(N3)})
    errors = _errors(root)
    assert "XDSRegistryMetadataError" in errors and "XDSPatientIdDoesNotMatch" in errors


@pytest_twisted.ensureDeferred
async def test_unknown_code_is_outside_the_value_set(simulator, client, poster, settings, corpus):
    env, cid = _iti41(client, corpus(N3))
    for node in ebrim.classifications(_entry(env), E["healthcareFacilityTypeCode"]):
        node.set("nodeRepresentation", "SA99")
    code, root = await _send(poster, settings, env, {cid: corpus(N3)})
    outcome = ebrim.parse_response(soap.body_child(root))
    assert "healthcareFacilityTypeCode SA99" in outcome.errors[0].context


@pytest_twisted.ensureDeferred
async def test_unknown_patient_when_a_patient_list_is_kept(simulator, client, poster, settings, corpus):
    simulator._known_patients = {"180036912345678"}
    env, cid = _iti41(client, corpus(N3))
    code, root = await _send(poster, settings, env, {cid: corpus(N3)})
    assert _errors(root) == ["XDSUnknownPatientId"]


@pytest_twisted.ensureDeferred
async def test_plain_soap_is_refused_for_iti41(simulator, client, poster, settings, corpus):
    env, _ = _iti41(client, corpus(N3))
    code, root = await _send(poster, settings, env, {}, content_type="application/soap+xml")
    fault = soap.parse_fault(root)
    assert code == 400 and fault.sender_side and "MTOM" in fault.reason


@pytest.mark.parametrize(
    "breakage, subcode",
    [
        ("no-security", "wsse:InvalidSecurity"),
        ("no-action", "wsa:MessageAddressingHeaderRequired"),
        ("wrong-action", "wsa:ActionNotSupported"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_envelope_faults(simulator, client, poster, settings, corpus, breakage, subcode):
    env, cid = _iti41(client, corpus(N3))
    header = env.find(f"{{{soap.SOAP}}}Header")
    if breakage == "no-security":
        header.remove(header.find(f"{{{soap.WSSE}}}Security"))
    elif breakage == "no-action":
        header.remove(header.find(f"{{{soap.WSA}}}Action"))
    else:
        header.find(f"{{{soap.WSA}}}Action").text = soap.ACTION_ITI57
    code, root = await _send(poster, settings, env, {cid: corpus(N3)})
    assert (code, soap.parse_fault(root).subcode) == (400, subcode)
    assert simulator.store.all() == []


@pytest_twisted.ensureDeferred
async def test_soap11_envelope_is_a_version_mismatch(simulator, poster, settings):
    body = b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body/></s:Envelope>'
    answer = await poster.post(settings.endpoints.registry_stored_query, "application/soap+xml; charset=UTF-8", body)
    assert soap.parse_fault(parse_untrusted(answer.body).getroot()).code == "soap:VersionMismatch"


@pytest_twisted.ensureDeferred
async def test_unknown_stored_query(simulator, client, poster, settings, corpus):
    request = request_for(corpus(N3))
    meta = client.metadata(request)
    body = ebrim.stored_query("urn:uuid:00000000-0000-0000-0000-000000000000", {})
    env = client._envelope(soap.ACTION_ITI18, settings.endpoints.registry_stored_query, body, request, meta)
    answer = await poster.post(
        settings.endpoints.registry_stored_query,
        f'application/soap+xml; action="{soap.ACTION_ITI18}"',
        etree.tostring(env),
    )
    root = parse_untrusted(answer.body).getroot()
    assert _errors(root) == ["XDSUnknownStoredQuery"]


@pytest_twisted.ensureDeferred
async def test_find_documents_only_shows_the_vihf_patient(simulator, client, poster, settings, corpus):
    request = request_for(corpus(N3))
    assert (await client.publish(request)).ok
    meta = client.metadata(request)
    body = ebrim.stored_query(
        ebrim.FIND_DOCUMENTS,
        {
            "$XDSDocumentEntryPatientId": [f"'{meta.patient_id}'"],
            "$XDSDocumentEntryStatus": [ebrim.query_list([ebrim.APPROVED])],
        },
    )
    env = client._envelope(soap.ACTION_ITI18, settings.endpoints.registry_stored_query, body, request, meta)
    answer = await poster.post(
        settings.endpoints.registry_stored_query,
        f'application/soap+xml; action="{soap.ACTION_ITI18}"',
        etree.tostring(env),
    )
    outcome = ebrim.parse_response(soap.body_child(parse_untrusted(answer.body).getroot()))
    assert outcome.status == ebrim.SUCCESS
    assert [ebrim.external_value(o, E["uniqueId"]) for o in outcome.objects] == [meta.unique_id]


@pytest.mark.parametrize(
    "content_type, body",
    [
        ('multipart/related; boundary=x; type="application/xop+xml"', b"garbage"),
        ("application/soap+xml", b""),
        ("application/soap+xml", b"\x00\xff not xml"),
        ("application/soap+xml", b"<a/>"),
        ("text/plain", b"hello"),
        ("application/soap+xml", b'<!DOCTYPE a [<!ENTITY e "x">]><a>&e;</a>'),
    ],
)
@pytest_twisted.ensureDeferred
async def test_garbage_gets_a_sender_fault_not_a_crash(simulator, poster, settings, content_type, body):
    for url in (settings.endpoints.provide_and_register, settings.endpoints.registry_stored_query):
        answer = await poster.post(url, content_type, body)
        fault = soap.parse_fault(parse_untrusted(answer.body).getroot())
        assert answer.code == 400 and fault.sender_side, (url, fault)


@pytest.mark.parametrize(
    "breakage", ["entry-id", "document-id", "registry-object-list", "all-classifications", "external-ids"]
)
@pytest_twisted.ensureDeferred
async def test_mangled_metadata_is_a_registry_error(simulator, client, poster, settings, corpus, breakage):
    env, cid = _iti41(client, corpus(N3))
    entry = _entry(env)
    if breakage == "entry-id":
        del entry.attrib["id"]
    elif breakage == "document-id":
        del next(env.iter(ebrim.q(ebrim.XDSB, "Document"))).attrib["id"]
    elif breakage == "registry-object-list":
        objects = entry.getparent()
        objects.getparent().remove(objects)
    else:
        tag = "Classification" if breakage == "all-classifications" else "ExternalIdentifier"
        for node in list(env.iter(ebrim.q(ebrim.RIM, tag))):
            node.getparent().remove(node)
    code, root = await _send(poster, settings, env, {cid: corpus(N3)})
    outcome = ebrim.parse_response(soap.body_child(root))
    assert code == 200 and outcome.status == ebrim.FAILURE and outcome.errors
    assert simulator.store.all() == []
