"""Intake over real sockets on 127.0.0.1: ACK codes, duplicates, charsets, bad input."""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from engine.journal.reader import JournalReader
from engine.mllp.framing import frame
from tests.support import (
    indexed_reader,
    intake_events,
    client_for,
    exchange,
    inbound,
    sample_adt,
    sleep,
    start_engine,
    write_config,
)


@pytest.fixture
def engine_dirs(tmp_path):
    cfg = write_config(
        tmp_path / "cfg",
        {
            "in": inbound(
                accept={"versions": ["2.5", "2.6"], "message_types": ["ADT", "ORU^R01"]},
                max_message_bytes=200_000,
                idle_timeout=30,
            ),
        },
    )
    return cfg, tmp_path / "data"


@pytest_twisted.async_yield_fixture
async def engine(engine_dirs):
    engine = await start_engine(*engine_dirs)
    yield engine
    await engine.stopService()


@pytest_twisted.ensureDeferred
async def test_accepted_message_is_journaled_before_aa(engine):
    client = await client_for(engine, "in")
    ack = await exchange(client, sample_adt("A-1").encode())
    assert (ack.code, ack.control_id) == ("AA", "A-1")
    events = intake_events(await indexed_reader(engine))
    assert [(e.state, e.control_id, e.msg_type) for e in events] == [("received", "A-1", "ADT^A01")]
    stored = (await indexed_reader(engine)).load_message(events[0].message_uid)
    assert stored.raw == sample_adt("A-1").encode()
    client.close()


@pytest_twisted.ensureDeferred
async def test_unsupported_version_is_ae_203_and_kept(engine):
    client = await client_for(engine, "in")
    ack = await exchange(client, sample_adt("V-1", version="2.3").encode())
    assert ack.code == "AE" and ack.control_id == "V-1"
    assert "|MSH^1^12|203^" in ack.errors[0]
    [event] = intake_events(await indexed_reader(engine))
    assert event.state == "rejected" and "2.3" in event.detail
    client.close()


@pytest_twisted.ensureDeferred
async def test_unsupported_type_is_ae_200_and_unknown_trigger_201(engine):
    client = await client_for(engine, "in")
    ack = await exchange(client, sample_adt("T-1", msg_type="ORM^O01^ORM_O01").encode())
    assert ack.code == "AE" and "|200^" in ack.errors[0]
    ack = await exchange(client, sample_adt("T-2", msg_type="ORU^R30^ORU_R30").encode())
    assert ack.code == "AE" and "|201^" in ack.errors[0]
    client.close()


@pytest_twisted.ensureDeferred
async def test_garbage_frame_is_ae_and_quarantined(engine):
    client = await client_for(engine, "in")
    ack = await exchange(client, b"\x00\x01 this is not HL7 \xff")
    assert ack.code == "AE" and "|100^" in ack.errors[0]
    [event] = intake_events(await indexed_reader(engine))
    assert event.state == "rejected"
    assert (await indexed_reader(engine)).load_message(event.message_uid).raw == b"\x00\x01 this is not HL7 \xff"
    client.close()


@pytest_twisted.ensureDeferred
async def test_duplicate_gets_original_ack_and_is_recorded(engine):
    client = await client_for(engine, "in")
    first = await exchange(client, sample_adt("D-1").encode())
    again = await exchange(client, sample_adt("D-1", name="OTHER^Name").encode())
    assert again.raw == first.raw
    states = [e.state for e in intake_events(await indexed_reader(engine))]
    assert states == ["received", "duplicate"]
    # A rejected message does not make its control id a duplicate: the fixed resend is accepted.
    bad = await exchange(client, sample_adt("D-2", version="2.3").encode())
    good = await exchange(client, sample_adt("D-2").encode())
    assert (bad.code, good.code) == ("AE", "AA")
    client.close()


@pytest_twisted.ensureDeferred
async def test_accents_survive_latin9_round_trip(engine):
    client = await client_for(engine, "in")
    raw = sample_adt("L-1", charset="8859/15", name="CŒUR^Éloïse€ç").encode("iso8859-15")
    ack = await exchange(client, raw)
    assert ack.code == "AA"
    assert b"8859/15" in ack.raw  # the ACK is written in the sender's charset
    [event] = intake_events(await indexed_reader(engine))
    assert (await indexed_reader(engine)).load_message(event.message_uid).raw.decode("iso8859-15").count(
        "CŒUR^Éloïse€ç"
    ) == 1
    assert (await indexed_reader(engine)).patient_label(event.message_uid) == "IPP001 CŒUR Éloïse€ç"
    client.close()


@pytest_twisted.ensureDeferred
async def test_pipelined_messages_are_acked_in_order(engine):
    client = await client_for(engine, "in")
    ds = [client.send(sample_adt(f"P-{i}").encode()) for i in range(50)]
    acks = [await d for d in ds]
    assert [a.split(b"MSA|AA|")[1].split(b"\r")[0] for a in acks] == [f"P-{i}".encode() for i in range(50)]
    client.close()


@pytest_twisted.ensureDeferred
async def test_oversized_message_gets_ae_then_close(engine):
    client = await client_for(engine, "in")
    big = sample_adt("BIG-1") + "NTE|1||" + "x" * 300_000 + "\r"
    ack = await exchange(client, big.encode())
    assert ack.code == "AE" and ack.control_id == "BIG-1" and "exceeds" in ack.errors[0]
    await client.lost  # the engine closes the connection after the NACK
    [event] = intake_events(await indexed_reader(engine))
    assert event.state == "rejected" and len((await indexed_reader(engine)).load_message(event.message_uid).raw) == 4096


@pytest_twisted.ensureDeferred
async def test_noise_between_frames_is_kept_and_next_frame_served(engine):
    client = await client_for(engine, "in")
    client.transport.write(b"NOISE-BYTES")
    ack = await exchange(client, sample_adt("N-1").encode())
    assert ack.code == "AA"
    states = sorted(e.state for e in intake_events(await indexed_reader(engine)))
    assert states == ["received", "rejected"]
    client.close()


class RawPeer(Protocol):
    def __init__(self):
        from twisted.internet.defer import Deferred

        self.lost = Deferred()

    def connectionLost(self, reason=connectionDone):
        self.lost.callback(None)


@pytest_twisted.ensureDeferred
async def test_connection_dropped_mid_frame_then_others_still_served(engine):
    peer = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", engine.port_of("in")), RawPeer())
    peer.transport.write(frame(sample_adt("X-1").encode())[:40])
    peer.transport.loseConnection()
    await peer.lost
    client = await client_for(engine, "in")
    assert (await exchange(client, sample_adt("X-2").encode())).code == "AA"
    assert [e.control_id for e in intake_events(await indexed_reader(engine))] == ["X-2"]
    client.close()


@pytest_twisted.ensureDeferred
async def test_client_that_never_reads_acks_is_throttled_not_buffered(engine):
    peer = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", engine.port_of("in")), RawPeer())
    peer.transport.pauseProducing()  # never read our ACKs
    await sleep(0.05)
    server_side = _server_protocol_for(peer)
    # Small kernel buffers so that a few hundred KB of unread ACKs fill them (not megabytes).
    for sock, option in ((peer.transport.socket, socket.SO_RCVBUF), (server_side.transport.socket, socket.SO_SNDBUF)):
        sock.setsockopt(socket.SOL_SOCKET, option, 4096)
    burst = b"".join(frame(sample_adt(f"S-{i}").encode()) for i in range(4000))
    peer.transport.write(burst)
    await sleep(1.5)
    assert server_side._reading_paused, "the engine should stop reading from a peer that does not read"
    assert len(server_side._pending) <= 64, "pending ACKs must stay bounded"
    # The engine keeps serving everybody else meanwhile.
    client = await client_for(engine, "in")
    assert (await exchange(client, sample_adt("OTHER-1").encode())).code == "AA"
    peer.transport.abortConnection()
    client.close()


def _server_protocol_for(peer):
    import gc

    from engine.mllp.server import MLLPServerProtocol

    local_port = peer.transport.getHost().port
    [found] = [
        o
        for o in gc.get_objects()
        if isinstance(o, MLLPServerProtocol) and o.transport.connected and o.transport.getPeer().port == local_port
    ]
    return found


@pytest_twisted.ensureDeferred
async def test_msh_without_field_separator_is_answered_and_the_pipeline_survives(engine):
    """`MSH\\r` used to raise in the scanner: connection dropped, no ACK, nothing journaled, the
    frame pipelined behind it lost and the AA of the frame before it never sent."""
    peer = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", engine.port_of("in")), Collector())
    broken = [b"MSH\rPID|1\r", b"MSH", b"MSH\x00^~\\&|X", b"MSH|\xe9\xe8\\&|X|Y", b"MSH||", b"MSH|^|"]
    stream = frame(sample_adt("P-1").encode()) + b"".join(frame(b) for b in broken) + frame(sample_adt("P-2").encode())
    peer.transport.write(stream)
    answers = await peer.wait_for(len(broken) + 2)
    codes = [a.split(b"\r")[1].split(b"|")[1] for a in answers]
    assert codes == [b"AA"] + [b"AE"] * len(broken) + [b"AA"]
    # ERR-3 names what is wrong: 101 a missing MSH-1/MSH-2, 102 an invalid one, 100 no MSH at all
    err3 = [a.split(b"\rERR|")[1].split(b"|")[2].split(b"^")[0] for a in answers[1:-1]]
    assert err3 == [b"101", b"100", b"102", b"102", b"100", b"100"]
    assert not peer.closed
    stored = {
        (await indexed_reader(engine)).load_message(e.message_uid).raw
        for e in intake_events(await indexed_reader(engine))
        if e.state == "rejected"
    }
    assert stored == set(broken)
    peer.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_an_internal_fault_is_ar_207_journaled_and_the_connection_survives(engine, monkeypatch):
    import engine.mllp.intake as intake_module

    real_judge = intake_module.judge

    def faulty(policy, header):
        if header.control_id == "BUG-1":
            raise RuntimeError("a bug in the checks")
        return real_judge(policy, header)

    monkeypatch.setattr(intake_module, "judge", faulty)
    client = await client_for(engine, "in")
    ack = await exchange(client, sample_adt("BUG-1").encode())
    assert ack.code == "AR" and "|207^" in ack.errors[0] and "RuntimeError" in ack.errors[0]
    assert (await exchange(client, sample_adt("BUG-2").encode())).code == "AA"
    [rejected] = [e for e in intake_events(await indexed_reader(engine)) if e.state == "rejected"]
    assert (await indexed_reader(engine)).load_message(rejected.message_uid).raw == sample_adt("BUG-1").encode()
    client.close()


class Collector(Protocol):
    def __init__(self):
        from engine.mllp.framing import MLLPDecoder

        self.decoder = MLLPDecoder()
        self.answers: list[bytes] = []
        self.closed = False

    def dataReceived(self, data):
        from engine.mllp.framing import Frame

        self.answers += [e.payload for e in self.decoder.feed(data) if isinstance(e, Frame)]

    def connectionLost(self, reason=connectionDone):
        self.closed = True

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[bytes]:
        for _ in range(int(timeout / 0.02)):
            if len(self.answers) >= count or self.closed:
                break
            await sleep(0.02)
        return self.answers


@pytest_twisted.ensureDeferred
async def test_echoed_fields_are_bounded_and_cannot_split_the_ack_frame(engine):
    peer = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", engine.port_of("in")), Collector())
    fs_end = sample_adt("E-1").replace("|E-1|", "|E-1\x1c|").replace("|GAM|", "|GAM\x1c\x0b|")
    huge_charset = sample_adt("E-2", charset="UNICODE UTF-8" + "x" * 150_000)
    latin_sep = sample_adt("E-3").encode().replace(b"|", b"\xa6")
    peer.transport.write(frame(fs_end.encode()) + frame(huge_charset.encode()) + frame(latin_sep))
    answers = await peer.wait_for(3)
    assert len(answers) == 3 and not peer.closed  # no ACK split into extra frames
    assert all(b"\x1c" not in a and b"\x0b" not in a for a in answers)
    first = answers[0].split(b"\r")
    assert first[0].split(b"|")[4] == b"GAM" and first[1] == b"MSA|AA|E-1"
    assert len(answers[1]) < 2_000  # MSH-18 of 150 KB is not echoed whole
    # A non-ASCII field separator is refused (AE), answered with the standard delimiters.
    assert answers[2].startswith(b"MSH|^~\\&|") and b"MSA|AE|" in answers[2]
    peer.transport.loseConnection()


def test_ack_keeps_the_senders_delimiters():
    from engine.hl7.ack import AckError, build_ack
    from engine.hl7.scan import scan

    raw = sample_adt("D-9").replace("|", "#").replace("^~\\&", "!*$%").encode()
    ack = build_ack(scan(raw), "AE", "1", "20260101", (AckError(203, "MSH^1^12", "bad#one!"),))
    msh, msa, err = ack.decode().strip("\r").split("\r")
    assert msh.startswith("MSH#!*$%#") and msa == "MSA#AE#D-9"
    assert err.endswith("bad$F$one$S$") and "MSH!1!12" in err


@pytest_twisted.ensureDeferred
async def test_a_doubled_start_block_is_tolerated(engine):
    peer = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", engine.port_of("in")), Collector())
    peer.transport.write(b"\x0b" + frame(sample_adt("VT-1").encode()))
    [answer] = await peer.wait_for(1)
    assert b"MSA|AA|VT-1" in answer
    assert [e.state for e in intake_events(await indexed_reader(engine))] == ["received"]
    peer.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_rejected_frames_beyond_the_hourly_quota_keep_head_size_and_hash(tmp_path):
    import hashlib

    from engine.journal.deliveries import requeue_message

    cfg = write_config(
        tmp_path / "cfg", {"in": inbound(accept={"versions": ["2.5"]}, rejected_quota=12_000, rejected_head=500)}
    )
    engine = await start_engine(cfg, tmp_path / "data")
    try:
        client = await client_for(engine, "in")
        bad = [(sample_adt(f"Q-{i}", version="9.9") + "NTE|1||" + "y" * 5_000 + "\r").encode() for i in range(4)]
        for raw in bad:
            assert (await exchange(client, raw)).code == "AE"
        client.close()
        reader = JournalReader(engine.journal.data_dir)
        rows = [e for e in intake_events(reader) if e.state == "rejected"]
        kept = [reader.load_message(e.message_uid).raw for e in rows]
        assert kept[:2] == bad[:2]  # whole while under the quota
        assert kept[2:] == [bad[2][:500], bad[3][:500]]
        assert rows[2].detail.startswith(
            f"[truncated: first 500 of {len(bad[2])} bytes kept, sha256 {hashlib.sha256(bad[2]).hexdigest()}]"
        )
        labels = {"channel": "in", "node": engine.node}
        assert engine.metrics.registry.get_sample_value("pfi_rejected_truncated_total", labels) == 2.0
        replayed = await engine.journal.submit(
            lambda conn, store: [requeue_message(conn, e.message_uid, "test", 0.0) for e in rows]
        )
        assert replayed == [True, True, False, False]  # a partial frame is never replayed
    finally:
        await engine.stopService()
