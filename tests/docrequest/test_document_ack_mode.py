"""ack_mode `document-request` over real MLLP sockets on 127.0.0.1, with the ANS examples."""

from __future__ import annotations

import pytest
import pytest_twisted

from tests.docrequest.corpus import GOOD, INS_MISMATCH, V20_MDM, V20_ORU, with_control_id
from tests.support import (
    indexed_reader,
    intake_events,
    client_for,
    exchange,
    inbound,
    sample_adt,
    start_engine,
    write_config,
)


@pytest_twisted.async_yield_fixture
async def engine(tmp_path):
    config = write_config(
        tmp_path / "cfg",
        {
            "docs": inbound(ack_mode="document-request", idle_timeout=30),
            "plain": inbound(idle_timeout=30),
        },
    )
    engine = await start_engine(config, tmp_path / "data")
    yield engine
    await engine.stopService()


async def events_by_control_id(engine) -> dict:
    return {e.control_id: e for e in intake_events(await indexed_reader(engine))}


@pytest_twisted.ensureDeferred
async def test_ins_mismatch_gets_ae_207_with_err_and_is_journaled_rejected(engine):
    raw = with_control_id(INS_MISMATCH.read_bytes(), "INS-1")
    client = await client_for(engine, "docs")
    ack = await exchange(client, raw)
    client.close()
    assert (ack.code, ack.control_id) == ("AE", "INS-1")
    [err] = ack.errors
    fields = err.split("|")
    assert fields[2:5] == ["PID^1^3", "207^Application internal error^HL70357", "E"]
    assert fields[5] == "INS_MISMATCH^INS in PID-3 differs from the CDA recordTarget^99PFI"
    assert "differs from the INS of the CDA recordTarget of OBX\\S\\1" in fields[8]  # ^ escaped
    event = (await events_by_control_id(engine))["INS-1"]
    assert event.state == "rejected" and "INS_MISMATCH at PID^1^3" in event.detail
    assert (await indexed_reader(engine)).load_message(event.message_uid).raw == raw


@pytest.mark.parametrize("path", [V20_ORU, V20_MDM], ids=["oru-2.0", "mdm-2.0"])
@pytest_twisted.ensureDeferred
async def test_superseded_profiles_get_ae_203_on_msh_21(engine, path):
    raw = with_control_id(path.read_bytes(), "V20-1")
    client = await client_for(engine, "docs")
    ack = await exchange(client, raw)
    client.close()
    assert (ack.code, ack.control_id) == ("AE", "V20-1")
    [err] = ack.errors
    assert err.split("|")[2:5] == ["MSH^1^21", "203^Unsupported version id^HL70357", "E"]
    assert "is superseded" in err
    [event] = (await indexed_reader(engine)).events_after(0)
    assert event.state == "rejected" and (await indexed_reader(engine)).load_message(event.message_uid).raw == raw


@pytest_twisted.ensureDeferred
async def test_good_v21_examples_get_aa_and_are_received(engine):
    client = await client_for(engine, "docs")
    for name, path in GOOD.items():
        ack = await exchange(client, with_control_id(path.read_bytes(), name))
        assert (name, ack.code, ack.errors) == (name, "AA", ())
    client.close()
    events = await events_by_control_id(engine)
    assert {cid: e.state for cid, e in events.items()} == {name: "received" for name in GOOD}


@pytest_twisted.ensureDeferred
async def test_other_messages_on_the_channel_are_handled_as_in_receipt_mode(engine):
    client = await client_for(engine, "docs")
    adt = await exchange(client, sample_adt("ADT-1").encode())
    # An ORU without the CI-SIS profile is not a document request: receipt behaviour (AA).
    no_profile = await exchange(client, sample_adt("ORU-1", msg_type="ORU^R01^ORU_R01").encode())
    version = await exchange(client, sample_adt("OLD-1", version="2.1").encode())
    client.close()
    assert (adt.code, no_profile.code) == ("AA", "AA")
    assert version.code == "AE" and "|203^" in version.errors[0]  # judged by MSH as before


@pytest_twisted.ensureDeferred
async def test_receipt_mode_answers_aa_to_the_same_defective_request(engine):
    client = await client_for(engine, "plain")
    ack = await exchange(client, with_control_id(INS_MISMATCH.read_bytes(), "RCPT-1"))
    client.close()
    assert (ack.code, ack.errors) == ("AA", ())
    assert (await events_by_control_id(engine))["RCPT-1"].state == "received"


@pytest_twisted.ensureDeferred
async def test_pipelined_messages_keep_their_order_in_acks_and_journal(engine):
    sequence = [
        ("P-1", GOOD["mdm-init"].read_bytes()),
        ("P-2", sample_adt("P-2").encode()),
        ("P-3", INS_MISMATCH.read_bytes()),
        ("P-4", GOOD["mdm-rplc"].read_bytes()),
        ("P-5", sample_adt("P-5").encode()),
    ]
    client = await client_for(engine, "docs")
    pending = [client.send(with_control_id(raw, cid)) for cid, raw in sequence]
    acks = [await d for d in pending]
    client.close()
    codes = [a.split(b"MSA|")[1].split(b"\r")[0].decode() for a in acks]
    assert codes == ["AA|P-1", "AA|P-2", "AE|P-3", "AA|P-4", "AA|P-5"]
    events = intake_events(await indexed_reader(engine))
    assert [(e.control_id, e.state) for e in events] == [
        ("P-1", "received"),
        ("P-2", "received"),
        ("P-3", "rejected"),
        ("P-4", "received"),
        ("P-5", "received"),
    ]
