"""The DMP flow end to end: MLLP in -> route -> DMP simulator (HTTPS + mTLS) -> ZAM^Z01 back to the
creator over MLLP, and the report to the DRIMbox only once the DMP accepted it."""

from __future__ import annotations

import pytest
import pytest_twisted

from engine.hl7.message import Message
from tests.flows.dmp_support import (
    DELETE,
    INITIAL,
    ORU_INITIAL,
    REPLACE,
    V1_ID,
    V2_ID,
    adapt,
    renumber_document,
    start_flow,
    statuses,
)
from tests.routing.peers import until
from tests.support import client_for, exchange


def zam_fields(raw: bytes) -> dict:
    """What the creator reads in a ZAM^Z01: type, status OBX-5, OBX-4 (original MSH-10), ERR-5."""
    msg = Message.parse(raw)
    return {
        "type": msg.get("MSH-9"),
        "status": msg.get("OBX-5.1"),
        "original": msg.get("OBX-4"),
        "error": msg.get("ERR-5.1") or "",
        "error_label": msg.get("ERR-5.2") or "",
        "error_system": msg.get("ERR-5.3") or "",
        "to": msg.get("MSH-5"),
    }


async def send(flow, raw: bytes) -> str:
    client = await client_for(flow.engine, "creator")
    try:
        return (await exchange(client, raw)).code
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_initial_replace_delete_reach_the_dmp_with_zams_and_drimbox(tmp_path, simulator, pki, ans_corpus):
    flow = await start_flow(tmp_path, simulator, pki)
    try:
        steps = [
            ("INIT-1", INITIAL, {V1_ID: ["Approved"]}),
            ("RPLC-1", REPLACE, {V1_ID: ["Deprecated"], V2_ID: ["Approved"]}),
            ("DEL-1", DELETE, {V1_ID: ["Deprecated"], V2_ID: ["Deleted"]}),
        ]
        for n, (control_id, name, expected) in enumerate(steps, 1):
            assert await send(flow, adapt((ans_corpus / name).read_bytes(), control_id)) == "AA"
            await until(
                lambda: len(flow.creator_out.received) == n and len(flow.drimbox.received) == n,
                what=f"ZAM and DRIMbox copy of {control_id}",
            )
            assert statuses(simulator) == expected
            zam = zam_fields(flow.creator_out.received[-1])
            assert zam["type"].startswith("ZAM^Z01") and zam["original"] == control_id
            assert (zam["status"], zam["error"], zam["to"]) == ("Y", "", "RIS-Y")
            assert flow.drimbox.control_ids()[-1] == control_id
    finally:
        await flow.close()


@pytest_twisted.ensureDeferred
async def test_an_oru_whose_cda_the_dmp_mapping_cannot_describe_fails_clearly(tmp_path, simulator, pki, ans_corpus):
    # The ANS ORU examples carry a CR de biologie (LOINC 11502-2): the DMP metadata mapping only
    # knows the CR d'imagerie, so the connector refuses it permanently, naming what is missing.
    flow = await start_flow(tmp_path, simulator, pki)
    try:
        zam = await dead_letter_zam(flow, simulator, adapt((ans_corpus / ORU_INITIAL).read_bytes(), "ORU-1"), "ORU-1")
        assert zam["error"] == "CDA_HEADER_INCOMPLETE" and "classCode" in zam["error_label"]
        assert zam["error_system"] == "99PFI"  # the PFI refused it: not dressed as a DMP error
        assert zam["to"] == "SIL-Y" and simulator.requests_seen == 0
    finally:
        await flow.close()


async def dead_letter_zam(flow, simulator, raw: bytes, control_id: str) -> dict:
    """Send, wait for the failure ZAM; the DRIMbox must get nothing."""
    assert await send(flow, raw) == "AA"
    await until(lambda: len(flow.creator_out.received) == 1, what=f"failure ZAM for {control_id}")
    zam = zam_fields(flow.creator_out.received[0])
    assert zam["type"].startswith("ZAM^Z01") and (zam["status"], zam["original"]) == ("N", control_id)
    assert flow.drimbox.received == [] and simulator.store.all() == []
    dead = [d for s, d in flow.states_of(control_id) if s == "dead-letter"]
    assert len(dead) == 1 and zam["error"] in dead[0]
    return zam


@pytest_twisted.ensureDeferred
async def test_a_dmp_error_code_dead_letters_with_the_code_in_the_zam(tmp_path, simulator, pki, ans_corpus):
    simulator.force_error("DMPClosed", "DMP fermé")
    flow = await start_flow(tmp_path, simulator, pki)
    try:
        zam = await dead_letter_zam(flow, simulator, adapt((ans_corpus / INITIAL).read_bytes(), "CLOSED-1"), "CLOSED-1")
        assert (zam["error"], zam["error_label"], zam["error_system"]) == ("DMPClosed", "DMP fermé", "DMPERRORCODE")
        assert simulator.requests_seen >= 1
    finally:
        await flow.close()


@pytest_twisted.ensureDeferred
async def test_a_failure_zam_resumed_after_a_crash_still_carries_the_dmp_code(
    tmp_path, simulator, pki, ans_corpus, monkeypatch
):
    # The DMP refuses the report (DMPClosed); the first attempt to apply the failure ZAM's plan
    # is refused (what a crash or a full disk leaves: the follow-up still due), then the
    # follow-up is resumed from the journal. Its ZAM says what the DMP said, as the live one
    # does; before, the code was only in memory and a resumed ZAM said DELIVERY_FAILED.
    from tests.routing.peers import refuse_first_follow_up_apply

    refused = refuse_first_follow_up_apply(monkeypatch)
    simulator.force_error("DMPClosed", "DMP fermé")
    flow = await start_flow(tmp_path, simulator, pki)
    try:
        assert await send(flow, adapt((ans_corpus / INITIAL).read_bytes(), "CLOSED-2")) == "AA"
        await until(lambda: refused, what="the failure's follow-up, refused once")
        assert flow.creator_out.received == []
        await flow.engine.dispatcher.resume_follow_ups()  # what the sweep and a restart run
        await until(lambda: len(flow.creator_out.received) == 1, what="the resumed failure ZAM")
        zam = zam_fields(flow.creator_out.received[0])
        assert (zam["status"], zam["original"]) == ("N", "CLOSED-2")
        assert (zam["error"], zam["error_label"], zam["error_system"]) == ("DMPClosed", "DMP fermé", "DMPERRORCODE")
    finally:
        await flow.close()


@pytest_twisted.ensureDeferred
async def test_an_unqualified_identity_waits_then_goes_once_a_pam_update_qualifies_it(
    tmp_path, simulator, pki, ans_corpus
):
    # DESTDMP=Y with PID-32 PROV: the request is valid (the report still matters to the RIS); the
    # DMP send waits, held and visible, instead of being dead-lettered, and leaves by itself when
    # the identity feed qualifies the patient (the registry's status, not only the sender's PID-32).
    from tests.patients.messages import TEST_INS, adt

    flow = await start_flow(tmp_path, simulator, pki)
    try:
        assert await send(flow, adapt((ans_corpus / INITIAL).read_bytes(), "PROV-1", status="PROV")) == "AA"
        await until(
            lambda: any(s == "held" and "INS_NOT_QUALIFIED" in d for s, d in flow.states_of("PROV-1")),
            what="the DMP send held for the identity",
        )
        assert simulator.requests_seen == 0 and flow.creator_out.received == []
        assert not any(s == "dead-letter" for s, _ in flow.states_of("PROV-1"))
        gam = await client_for(flow.engine, "gam")
        try:
            assert (await exchange(gam, adt(control="ADT-VALI", ins=TEST_INS, status="VALI"))).code == "AA"
        finally:
            gam.close()
        await until(lambda: len(flow.creator_out.received) == 1, what="published once qualified")
        zam = zam_fields(flow.creator_out.received[0])
        assert (zam["status"], zam["original"]) == ("Y", "PROV-1") and simulator.requests_seen >= 1
        assert any(s == "released" for s, _ in flow.states_of("PROV-1"))
    finally:
        await flow.close()


@pytest_twisted.ensureDeferred
async def test_a_patient_opposed_to_dmp_feeding_is_blocked(tmp_path, simulator, pki, ans_corpus):
    from tests.patients.messages import TEST_INS, adt

    flow = await start_flow(tmp_path, simulator, pki)
    try:
        gam = await client_for(flow.engine, "gam")
        try:
            assert (await exchange(gam, adt(control="ADT-IO", ins=TEST_INS, feeding="IO"))).code == "AA"
        finally:
            gam.close()
        await until(
            lambda: any(
                s == "patient-updated" and "opposed" in d and "not opposed" not in d
                for s, d in flow.states_of("ADT-IO")
            ),
            what="consent recorded",
        )
        zam = await dead_letter_zam(flow, simulator, adapt((ans_corpus / INITIAL).read_bytes(), "IO-1"), "IO-1")
        assert (zam["error"], zam["error_system"]) == ("PATIENT_OPPOSED", "99PFI")
        assert simulator.requests_seen == 0
    finally:
        await flow.close()


@pytest_twisted.ensureDeferred
async def test_dmp_outage_queues_in_order_then_drains_with_nothing_lost(tmp_path, simulator, pki, ans_corpus):
    initial = (ans_corpus / INITIAL).read_bytes()
    others = [renumber_document(initial, V1_ID, V1_ID[:-2] + f"9{n}") for n in (1, 2, 3)]
    messages = [
        ("OUT-1", initial),
        *((f"OUT-{n}", raw) for n, raw in enumerate(others, 2)),
        ("OUT-5", (ans_corpus / REPLACE).read_bytes()),
    ]  # replaces OUT-1's document
    flow = await start_flow(tmp_path, simulator, pki)
    try:
        await simulator.go_down()
        for control_id, raw in messages:
            assert await send(flow, adapt(raw, control_id)) == "AA"
        await until(
            lambda: len([s for s, _ in flow.states_of("OUT-1") if s == "retry"]) >= 3, what="retries during the outage"
        )
        retry_reasons = [d for s, d in flow.states_of("OUT-1") if s == "retry"]
        assert all("CONNECTION_REFUSED: DMP unreachable" in d for d in retry_reasons), retry_reasons
        assert simulator.store.all() == [] and flow.creator_out.received == [] and flow.drimbox.received == []
        # FIFO per patient: the later documents wait behind the first, never attempted
        assert all(s != "retry" for c, _ in messages[1:] for s, _ in flow.states_of(c))
        simulator.come_back()
        await until(
            lambda: len(flow.creator_out.received) == 5 and len(flow.drimbox.received) == 5, what="the queue drained"
        )
        order = [c for c, _ in messages]
        assert [zam_fields(z)["original"] for z in flow.creator_out.received] == order
        assert [zam_fields(z)["status"] for z in flow.creator_out.received] == ["Y"] * 5
        assert flow.drimbox.control_ids() == order
        stored = [e.unique_id for e in simulator.store.all()]
        assert stored == [V1_ID, *(V1_ID[:-2] + f"9{n}" for n in (1, 2, 3)), V2_ID]
        assert statuses(simulator)[V1_ID] == ["Deprecated"]
    finally:
        await flow.close()


# -- the connector's HL7 -> PublishRequest mapping, on the same ANS examples ------------------------


def _request(ans_corpus, name: str):
    from engine.docrequest import parse_document_request

    return parse_document_request(Message.parse(adapt((ans_corpus / name).read_bytes(), "MAP-1")))


def test_mapping_of_replace_and_delete_uses_the_entity_id_of_txa13(ans_corpus):
    from engine.connectors.dmp import publish_request

    replace = publish_request(_request(ans_corpus, REPLACE), "replace")
    assert (replace.action, replace.replaced_document_id) == ("replace", V1_ID)  # not `…^Organisation-Y`
    delete = publish_request(_request(ans_corpus, DELETE), "delete")
    assert delete.action == "delete"
    assert (delete.ins, delete.ins_oid, delete.ins_qualified) == ("279035121518989", "1.2.250.1.213.1.4.10", True)


def test_mapping_of_the_sender_person_roles_and_organisation(ans_corpus):
    from engine.connectors.dmp import publish_request

    roles = (("10", "1.2.250.1.71.1.2.7"), ("SM44", "1.2.250.1.71.4.2.5"))
    publish = publish_request(_request(ans_corpus, INITIAL), "initial", roles)
    assert (publish.sender.id, publish.sender.family, publish.sender.roles) == ("801234564895", "Eric", roles)
    # PRT-8 `FINEG^^^300017985`: a FINESS number, sent to the DMP as IDNST 1 + FINESS
    assert (publish.sender_organisation.id, publish.sender_organisation.id_type) == ("1300017985", "IDNST")
    assert publish.message_control_id == "MAP-1" and publish.patient_class == "I"


def test_organisation_ids_already_national_are_kept():
    from types import SimpleNamespace

    from engine.connectors.dmp import organisation

    idnst = organisation(SimpleNamespace(name="Org", id="3300017985", id_type="IDNST"))
    assert (idnst.id, idnst.id_type) == ("3300017985", "IDNST")
    siret = organisation(SimpleNamespace(name="Org", id="12345678900011", id_type="SIRET"))
    assert (siret.id, siret.id_type) == ("312345678900011", "IDNST")


def test_sender_roles_setting_is_checked(pki, simulator):
    import pydantic

    from engine.config.dmp import DmpChannel
    from tests.flows.dmp_support import dmp_channel

    channel = DmpChannel.model_validate({"name": "dmp", **dmp_channel(simulator, pki)})
    assert channel.role_pairs() == (("10", "1.2.250.1.71.1.2.7"), ("SM44", "1.2.250.1.71.4.2.5"))
    with pytest.raises(pydantic.ValidationError, match="code\\^codeSystem"):
        DmpChannel.model_validate({"name": "dmp", **dmp_channel(simulator, pki), "sender_roles": ["10"]})


@pytest_twisted.ensureDeferred
async def test_retries_exhausted_while_the_dmp_is_down_give_a_zam_with_the_last_code(
    tmp_path, simulator, pki, ans_corpus
):
    await simulator.go_down()
    flow = await start_flow(
        tmp_path, simulator, pki, retry={"initial": 0.05, "maximum": 0.1, "jitter": 0.0, "max_attempts": 3}
    )
    try:
        zam = await dead_letter_zam(flow, simulator, adapt((ans_corpus / INITIAL).read_bytes(), "DOWN-1"), "DOWN-1")
        assert (zam["error"], zam["error_system"]) == ("CONNECTION_REFUSED", "99PFI")
        assert zam["error_label"] == "DMP unreachable (gave up after 3 attempts)"
        assert len([s for s, _ in flow.states_of("DOWN-1") if s == "retry"]) == 2
    finally:
        simulator.come_back()
        await flow.close()
