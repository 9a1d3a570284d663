"""DRIMbox consistency: a destination that sends no ACK (the reference DRIMbox reads until the
connection closes), the IPP where it reads it (PID-3 repetition 2), what it gets when the DMP took
a replace as the first version, and a clear refusal when a report lacks what a KOS needs."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor

from engine.config.channels import MllpOutSettings
from engine.docrequest.asinitial import as_initial
from engine.hl7.pid3 import place_ipp
from engine.mllp.sender import MLLPSender
from engine.routing.context import MessageContext
from engine.routing.plan import _check_for_drimbox
from tests.routing.peers import RecordingPeer, SilentPeer, until
from tests.routing.test_delivery import _engine, out, states
from tests.support import ROOT, client_for, exchange, inbound, sample_adt


@pytest_twisted.ensureDeferred
async def test_a_destination_without_acks_gets_each_message_once_on_its_own_connection():
    drimbox = SilentPeer()
    port = reactor.listenTCP(0, drimbox, interface="127.0.0.1")
    settings = MllpOutSettings(
        name="drimbox", type="mllp-out", host="127.0.0.1", port=port.getHost().port, expect_ack=False, ack_timeout=2
    )
    sender = MLLPSender(reactor, settings)
    try:
        outcomes = [await sender.send(sample_adt(f"K-{i}").encode()) for i in range(3)]
        await until(lambda: len(drimbox.received) == 3, what="three messages read")
    finally:
        await sender.close()
        await port.stopListening()
    assert [(o.action, o.kind) for o in outcomes] == [("done", "written")] * 3  # no ACK awaited, no retry
    assert drimbox.connections == 3 and [m.split(b"|")[9] for m in drimbox.received] == [b"K-0", b"K-1", b"K-2"]


def test_the_ipp_goes_to_the_pid3_repetition_the_drimbox_reads():
    ipp, ins = b"IPP1^^^CAB&1.2.3&ISO^PI", b"279035121518989^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS"
    message = b"MSH|^~\\&|A|B|C|D|1||ORU^R01|1|P|2.5\rPID|1||" + ipp + b"~" + ins + b"||X\rOBX|1\r"
    moved = place_ipp(message, 2)
    assert moved.split(b"\r")[1] == b"PID|1||" + ins + b"~" + ipp + b"||X"
    assert place_ipp(moved, 2) == moved and place_ipp(message.replace(b"^PI", b"^XX"), 2).count(b"^XX") == 1


def test_a_replace_taken_as_first_version_reaches_the_drimbox_as_a_new_document():
    from engine.demo import fictional_replacement

    initial = as_initial(fictional_replacement("R-1", 11, 12))
    segments = {s[:3]: s.split(b"|") for s in initial.split(b"\r") if s}
    assert segments[b"MSH"][8] == b"MDM^T02^MDM_T02" and segments[b"ORC"][1] == b"NW"
    assert segments[b"TXA"][13] == b"" and segments[b"OBX"][11] == b"F"


@pytest.mark.parametrize(
    "old, new",
    [
        (b"ps3-20:accessionNumber", b"ps3-20:otherNumber"),
        (
            b'code="DX" displayName="Radiographie num\xc3\xa9rique" codeSystem="1.2.840.10008.2.16.4"',
            b'code="DX" displayName="Radiographie num\xc3\xa9rique" codeSystem="9.9.9"',
        ),
    ],
)
def test_a_report_without_what_a_kos_needs_is_refused_clearly(old, new):
    import base64

    from engine.errors import EngineError

    raw = (ROOT / "samples" / "mdm_t02_fictional.hl7").read_bytes()
    start = raw.index(b"^Base64^") + 8
    end = raw.index(b"|", start)
    cda = base64.b64decode(raw[start:end] + b"=" * (-len(raw[start:end]) % 4))
    assert old in cda
    damaged = cda.replace(old, new)
    raw = raw[:start] + base64.b64encode(damaged) + raw[end:]
    ctx = MessageContext("u", "in", raw, 0.0)
    with pytest.raises(EngineError, match="not sendable to a DRIMbox, missing"):
        _check_for_drimbox(ctx)
    _check_for_drimbox(MessageContext("u", "in", (ROOT / "samples" / "mdm_t02_fictional.hl7").read_bytes(), 0.0))


@pytest_twisted.ensureDeferred
async def test_after_a_superseded_initial_the_next_destination_gets_the_first_version(tmp_path):
    from engine.demo import fictional_report, fictional_replacement

    first, after = RecordingPeer(), RecordingPeer()
    pf, pa = await first.listen(), await after.listen()
    routes = [
        {
            "name": "r",
            "match": {"channel": "in"},
            "steps": [
                {
                    "label": "to-first",
                    "deliver": {"to": "first", "delay": "1s", "key": "PID-3.1"},
                    "on_success": [{"deliver": {"to": "after", "key": "PID-3.1"}}],
                }
            ],
        }
    ]
    engine = await _engine(tmp_path, {"in": inbound(), "first": out(pf), "after": out(pa)}, routes)
    client = await client_for(engine, "in")
    try:
        assert (await exchange(client, fictional_report("I-1", 21))).code == "AA"
        assert (await exchange(client, fictional_replacement("R-1", 21, 22))).code == "AA"  # within the delay
        await until(lambda: len(after.received) == 1, what="the next destination served")
        assert first.control_ids() == ["R-1"] and b"MDM^T02" in after.received[0]
        assert b"\rORC|NW" in after.received[0]
        assert ("I-1", "cancelled") in states(engine)
    finally:
        client.close()
        await engine.stopService()
        await first.close()
        await after.close()


def test_the_drimbox_channel_refuses_a_report_without_ipp_or_not_a_document_with_a_coded_reason():
    from engine.connectors.mllp import drimbox_refusal

    report = (ROOT / "samples" / "mdm_t02_fictional.hl7").read_bytes()
    assert drimbox_refusal(report, need_ipp=True) is None
    no_ipp = report.replace(b"~IPP-FICT-0001^^^CABINET-FICT&1.2.250.1.999.7.9&ISO^PI", b"")
    assert drimbox_refusal(no_ipp, need_ipp=False) is None  # PID-3 left as received: no IPP needed
    missing = drimbox_refusal(no_ipp, need_ipp=True)
    assert (missing.action, missing.code, missing.local) == ("dead", "DRIMBOX_DATA_MISSING", False)
    assert (
        missing.reason == "DRIMBOX_DATA_MISSING: not sendable to a DRIMbox, missing: IPP (PID-3 identifier of type PI)"
    )
    assert drimbox_refusal(sample_adt("A-1").encode(), need_ipp=True).code == "DOCUMENT_REQUEST_INVALID"
    assert drimbox_refusal(b"MSH|^~\\&|garbage", need_ipp=True).code in (
        "DOCUMENT_REQUEST_INVALID",
        "DRIMBOX_DATA_MISSING",
    )
