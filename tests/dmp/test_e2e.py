"""The DMP client against the simulator over real HTTPS with mutual TLS on 127.0.0.1."""

from __future__ import annotations

import pytest
import pytest_twisted
from lxml import etree
from twisted.internet import reactor

from engine.dmp import ebrim
from engine.dmp.client import DmpClient
from engine.dmp.model import DmpFlags
from engine.dmp.vihf import SAML, VihfIdentity, VihfSigner
from tests.dmp.conftest import MDM_V1, MDM_V2, MDM_V2_DELETE, N1, N3, make_settings, request_for


def _statuses(sim) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for entry in sim.store.all():
        out.setdefault(entry.unique_id, []).append(entry.status.rsplit(":", 1)[1])
    return out


async def _with_client(settings, action):
    dmp = DmpClient(reactor, settings)
    try:
        return await action(dmp)
    finally:
        await dmp.close()


@pytest.mark.parametrize("name", [N3, N1])
@pytest_twisted.ensureDeferred
async def test_initial_publication_of_the_kit_examples(simulator, client, corpus, name):
    cda = corpus(name)
    result = await client.publish(request_for(cda))
    assert result.status == "success" and result.entry_uuid.startswith("urn:uuid:")
    (stored,) = simulator.store.all()
    assert stored.entry_uuid == result.entry_uuid
    assert stored.document == cda  # the attachment arrived byte for byte
    entry = etree.fromstring(stored.metadata)
    assert ebrim.slot_values(entry, "size") == [str(len(cda))]
    assert ebrim.external_value(entry, ebrim.DE["patientId"]).startswith("279035121518989^^^&")


@pytest_twisted.ensureDeferred
async def test_replace_then_delete_of_the_mdm_examples(simulator, client, corpus):
    assert (await client.publish(request_for(corpus(MDM_V1)))).ok
    first = simulator.store.all()[0].entry_uuid
    replaced = await client.publish(request_for(corpus(MDM_V2), "replace"))
    assert replaced.status == "success"
    new = simulator.store.by_uuid(replaced.entry_uuid)
    assert new.unique_id == "1.2.250.1.71.4.2.2.120456789.71024000082"
    assert simulator.store.by_uuid(first).status == ebrim.DEPRECATED
    deleted = await client.publish(request_for(corpus(MDM_V2_DELETE), "delete"))
    assert deleted.status == "success" and deleted.entry_uuid == replaced.entry_uuid
    assert _statuses(simulator) == {
        "1.2.250.1.71.4.2.2.120456789.71024000081": ["Deprecated"],
        "1.2.250.1.71.4.2.2.120456789.71024000082": ["Deleted"],
    }


@pytest_twisted.ensureDeferred
async def test_replace_uses_txa13_when_given(simulator, client, corpus):
    assert (await client.publish(request_for(corpus(N1)))).ok
    # the N3 example's own RPLC parent is unknown; TXA-13 names the N1 version instead
    result = await client.publish(
        request_for(corpus(N3), "replace", replaced_document_id="1.2.250.1.213.1.1.1.45.2024.2.1")
    )
    assert result.status == "success"
    assert _statuses(simulator) == {
        "1.2.250.1.213.1.1.1.45.2024.2.1": ["Deprecated"],
        "1.2.250.1.213.1.1.1.45.2024.1.1": ["Approved"],
    }


@pytest.mark.parametrize("action", ["replace", "delete"])
@pytest_twisted.ensureDeferred
async def test_replace_or_delete_of_an_unknown_document_is_permanent(simulator, client, corpus, action):
    result = await client.publish(request_for(corpus(N3), action))
    assert (result.status, result.transient, result.error_code) == ("error", False, "UNKNOWN_DOCUMENT")
    assert simulator.store.all() == []


@pytest_twisted.ensureDeferred
async def test_incomplete_header_fails_before_any_call(simulator, client, corpus):
    root = etree.fromstring(corpus(N3))
    for node in root.iter("{urn:hl7-org:v3}healthCareFacility"):
        node.remove(node.find("{urn:hl7-org:v3}code"))
    result = await client.publish(request_for(etree.tostring(root)))
    assert (result.status, result.transient, result.error_code) == ("error", False, "CDA_HEADER_INCOMPLETE")
    assert "healthCareFacility/code" in result.detail
    assert simulator.requests_seen == 0


@pytest_twisted.ensureDeferred
async def test_ins_of_the_request_must_match_the_cda(simulator, client, corpus):
    result = await client.publish(request_for(corpus(N3), ins="180036912345678"))
    assert (result.error_code, result.transient) == ("INVALID_INPUT", False)
    assert simulator.requests_seen == 0


@pytest.mark.parametrize("pair", ["client_expired", "client_other_ca"])
@pytest_twisted.ensureDeferred
async def test_refused_client_certificates_are_permanent(simulator, pki, corpus, pair):
    chosen = getattr(pki, pair)
    settings = make_settings(simulator, chosen.cert, chosen.key, pki.ca.cert)
    result = await _with_client(settings, lambda c: c.publish(request_for(corpus(N3))))
    assert (result.status, result.transient, result.error_code) == ("error", False, "TLS_CLIENT_CERT_REFUSED")
    assert simulator.store.all() == [] and simulator.requests_seen == 0


@pytest_twisted.ensureDeferred
async def test_untrusted_server_certificate_is_permanent(simulator, pki, corpus):
    settings = make_settings(simulator, pki.client.cert, pki.client.key, pki.other_ca.cert)
    result = await _with_client(settings, lambda c: c.publish(request_for(corpus(N3))))
    assert (result.transient, result.error_code) == (False, "TLS_SERVER_UNTRUSTED")


@pytest_twisted.ensureDeferred
async def test_simulator_down_is_transient_then_recovers(simulator, client, corpus):
    await simulator.go_down()
    result = await client.publish(request_for(corpus(N3)))
    assert (result.status, result.transient) == ("error", True)
    assert result.error_code in ("CONNECTION_REFUSED", "CONNECTION_FAILED")
    simulator.come_back()
    assert (await client.publish(request_for(corpus(N3)))).status == "success"


@pytest_twisted.ensureDeferred
async def test_outage_with_an_open_connection_is_transient(simulator, client, corpus):
    assert (await client.publish(request_for(corpus(N1)))).ok  # leaves a pooled connection
    await simulator.go_down()
    result = await client.publish(request_for(corpus(N3)))
    assert (result.status, result.transient) == ("error", True)


@pytest_twisted.ensureDeferred
async def test_slow_dmp_times_out_as_transient(simulator, pki, corpus):
    simulator.slow(30)
    settings = make_settings(simulator, pki.client.cert, pki.client.key, pki.ca.cert, response_timeout=0.3)
    result = await _with_client(settings, lambda c: c.publish(request_for(corpus(N3))))
    assert (result.transient, result.error_code) == (True, "TIMEOUT")


@pytest.mark.parametrize("code, transient", [("DMPClosed", False), ("XDSRegistryBusy", True)])
@pytest_twisted.ensureDeferred
async def test_forced_registry_errors(simulator, client, corpus, code, transient):
    simulator.force_error(code, "DMP fermé")
    result = await client.publish(request_for(corpus(N3)))
    assert (result.status, result.error_code, result.transient) == ("error", code, transient)
    assert result.error_label == "DMP fermé"
    assert simulator.store.all() == []


@pytest_twisted.ensureDeferred
async def test_republishing_the_same_bytes_is_idempotent(simulator, client, corpus):
    first = await client.publish(request_for(corpus(N3)))
    again = await client.publish(request_for(corpus(N3)))  # e.g. retry after a lost answer
    assert (again.status, again.entry_uuid) == ("success", first.entry_uuid)
    assert "already registered" in again.detail and len(simulator.store.all()) == 1


@pytest_twisted.ensureDeferred
async def test_same_id_with_other_content_is_a_duplicate(simulator, client, corpus):
    assert (await client.publish(request_for(corpus(N3)))).ok
    other = corpus(N3).replace(b"<title>CR d", b"<title>Autre CR d", 1)
    result = await client.publish(request_for(other))
    assert (result.error_code, result.transient) == ("XDSDuplicateUniqueIdInRegistry", False)


@pytest.mark.parametrize("name", [N3, N1])
@pytest_twisted.ensureDeferred
async def test_delete_of_the_kit_examples_is_idempotent(simulator, client, corpus, name):
    assert (await client.publish(request_for(corpus(name)))).ok
    deleted = await client.publish(request_for(corpus(name), "delete"))
    assert (deleted.status, deleted.detail) == ("success", "")
    assert simulator.store.all()[0].status == ebrim.DMP_DELETED
    again = await client.publish(request_for(corpus(name), "delete"))
    assert again.status == "success" and "already deleted" in again.detail


class _Tampering:
    """Signs properly, then changes the patient (resource-id) inside the signed assertion."""

    def __init__(self, signer):
        self._signer = signer

    def assertion(self, context, now):
        signed = self._signer.assertion(context, now)
        for value in signed.iter(f"{{{SAML}}}AttributeValue"):
            if value.text and value.text.startswith("279035121518989^^^"):
                value.text = value.text.replace("279035121518989", "180036912345678")
        return signed


@pytest_twisted.ensureDeferred
async def test_vihf_tampering_is_detected(simulator, client, corpus):
    client._signer = _Tampering(client._signer)
    result = await client.publish(request_for(corpus(N3)))
    assert (result.status, result.transient, result.error_code) == ("error", False, "wsse:FailedCheck")
    assert simulator.store.all() == []


@pytest_twisted.ensureDeferred
async def test_vihf_signed_with_a_key_other_than_the_tls_certificate(simulator, client, pki, corpus):
    client._signer = VihfSigner(
        pki.client_other_ca.cert.read_bytes(),
        pki.client_other_ca.key.read_bytes(),
        VihfIdentity("3.0", "INDIRECTE", "x", "1", "H"),
    )
    result = await client.publish(request_for(corpus(N1)))
    assert result.error_code == "wsse:FailedCheck" and not result.transient


@pytest_twisted.ensureDeferred
async def test_masking_flags_reach_the_registry_and_visibility_is_restored(simulator, client, corpus):
    hidden = request_for(corpus(N3), flags=DmpFlags(invisible_patient=True, masque_ps=True))
    assert (await client.publish(hidden)).ok
    codes = _confidentiality(simulator.store.all()[0].metadata)
    assert codes == ["N", "MASQUE_PS", "INVISIBLE_PATIENT"]
    result = await client.set_visibility(request_for(corpus(N3), flags=DmpFlags(masque_ps=True)))
    assert result.status == "success", result
    old, new = simulator.store.all()
    assert (old.status, new.status, new.version, new.lid) == (ebrim.DEPRECATED, ebrim.APPROVED, 2, old.lid)
    assert _confidentiality(new.metadata) == ["N", "MASQUE_PS"]


def _confidentiality(metadata: bytes) -> list[str]:
    entry = etree.fromstring(metadata)
    return [c.get("nodeRepresentation") for c in ebrim.classifications(entry, ebrim.DE["confidentialityCode"])]


class _Stale:
    """Signs assertions dated one hour ago."""

    def __init__(self, signer):
        self._signer = signer

    def assertion(self, context, now):
        import datetime as dt

        return self._signer.assertion(context, now - dt.timedelta(hours=1))


@pytest_twisted.ensureDeferred
async def test_stale_vihf_is_refused(simulator, client, corpus):
    client._signer = _Stale(client._signer)
    result = await client.publish(request_for(corpus(N3)))
    assert (result.error_code, result.transient) == ("wsse:MessageExpired", False)


RIS = "hl7V2-exemples/Vague 2/RIS"


@pytest_twisted.ensureDeferred
async def test_ris_example_with_a_modality_outside_the_jdv_is_refused(simulator, client, corpus):
    # the RIS examples code MR as "RM" (known defect, corpus MANIFEST): the DMP side says so
    result = await client.publish(request_for(corpus(f"{RIS}/transmission_initiale_cr_imagerie.xml")))
    assert (result.error_code, result.transient) == ("XDSRegistryMetadataError", False)
    assert "eventCodeList RM" in result.error_label


@pytest_twisted.ensureDeferred
async def test_ris_triplet_without_jdv_checks(pki, corpus, tmp_path):
    from engine.sim.dmp import DmpSimulator

    sim = DmpSimulator(reactor, pki_dir=pki.directory)  # built-in value sets only
    sim.start()
    try:
        settings = make_settings(sim, pki.client.cert, pki.client.key, pki.ca.cert)

        async def run(dmp):
            outcomes = []
            for name, action in (
                ("transmission_initiale", "initial"),
                ("remplacement", "replace"),
                ("suppression", "delete"),
            ):
                cda = corpus(f"{RIS}/{name}_cr_imagerie.xml")
                outcomes.append((await dmp.publish(request_for(cda, action))).status)
            return outcomes

        assert await _with_client(settings, run) == ["success"] * 3
        assert _statuses(sim) == {"1.2.250.1.213.4.5.4.402": ["Deprecated"], "1.2.250.1.213.4.5.4.403": ["Deleted"]}
    finally:
        await sim.stop()


@pytest_twisted.ensureDeferred
async def test_destination_gates_before_any_send(simulator, client, settings, corpus):
    from engine.dmp.destination import DmpDestination

    class Opposed:
        def is_opposed(self, ins):
            return True

    blocked = DmpDestination(reactor, settings, consent=Opposed(), client=client)
    assert (await blocked.deliver(request_for(corpus(N3)))).error_code == "PATIENT_OPPOSED"
    assert simulator.requests_seen == 0
    destination = DmpDestination(reactor, settings, client=client)
    refused = await destination.deliver(request_for(corpus(N3), ins_qualified=False))
    assert refused.error_code == "INS_NOT_QUALIFIED" and not refused.from_dmp
    assert (await destination.deliver(request_for(corpus(N3)))).status == "success"
    await simulator.go_down()
    assert (await destination.deliver(request_for(corpus(N1)))).transient


@pytest.fixture()
def signing_settings(simulator, pki):
    return make_settings(simulator, pki.client.cert, pki.client.key, pki.ca.cert, submission_signature=True)


@pytest.mark.parametrize("name", [N3, N1])
@pytest_twisted.ensureDeferred
async def test_submission_signature_is_registered_and_checked(simulator, signing_settings, corpus, name):
    simulator.require_submission_signature = True
    result = await _with_client(signing_settings, lambda c: c.publish(request_for(corpus(name))))
    assert result.status == "success", result
    cda, signature = simulator.store.all()
    assert cda.document == corpus(name)
    entry = etree.fromstring(signature.metadata)
    codes = {c.get("nodeRepresentation") for c in entry.findall(ebrim.q(ebrim.RIM, "Classification"))}
    assert {"E1762", "http://www.w3.org/2000/09/xmldsig#", "urn:oid:1.3.6.1.4.1.19376.1.2.1.1.1"} <= codes
    assert b"urn:oid:" + cda.unique_id.encode() in signature.document


@pytest_twisted.ensureDeferred
async def test_required_submission_signature_missing(simulator, client, corpus):
    simulator.require_submission_signature = True
    result = await client.publish(request_for(corpus(N3)))
    assert (result.error_code, result.transient) == ("XDSRegistryMetadataError", False)
    assert "signature document missing" in result.error_label


@pytest_twisted.ensureDeferred
async def test_submission_signature_over_other_bytes_is_refused(simulator, signing_settings, corpus):
    async def run(dmp):
        original = dmp._submission_signer.sign

        def sign_other(documents, ss_uid, now):  # signs a different version of the CDA
            return original({k: v + b" " for k, v in documents.items()}, ss_uid, now)

        dmp._submission_signer.sign = sign_other
        return await dmp.publish(request_for(corpus(N1)))

    result = await _with_client(signing_settings, run)
    assert result.error_code == "XDSRegistryMetadataError"
    assert "differs from its signed digest" in result.detail
    assert simulator.store.all() == []


@pytest_twisted.ensureDeferred
async def test_simulator_keeps_documents_across_restarts(pki, corpus, tmp_path):
    from engine.sim.dmp import DmpSimulator

    first = DmpSimulator(reactor, pki_dir=pki.directory, data_dir=tmp_path / "sim")
    first.start()
    settings = make_settings(first, pki.client.cert, pki.client.key, pki.ca.cert)
    assert (await _with_client(settings, lambda c: c.publish(request_for(corpus(N1))))).ok
    await first.stop()
    second = DmpSimulator(reactor, pki_dir=pki.directory, data_dir=tmp_path / "sim")
    second.start()
    try:
        settings = make_settings(second, pki.client.cert, pki.client.key, pki.ca.cert)
        deleted = await _with_client(settings, lambda c: c.publish(request_for(corpus(N1), "delete")))
        assert deleted.status == "success"
        assert [e.status for e in second.store.all()] == [ebrim.DMP_DELETED]
    finally:
        await second.stop()


@pytest_twisted.ensureDeferred
async def test_closed_dmp_is_a_permanent_dmp_error(simulator, client, corpus):
    simulator.closed_patients.add("279035121518989")
    result = await client.publish(request_for(corpus(N1)))
    assert (result.error_code, result.error_label, result.transient) == ("DMPClosed", "DMP fermé", False)
