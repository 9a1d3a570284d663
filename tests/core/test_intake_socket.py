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
from tests.support import intake_events, client_for, exchange, inbound, sample_adt, sleep, start_engine, write_config


@pytest.fixture
def engine_dirs(tmp_path):
    cfg = write_config(tmp_path / "cfg", {
        "in": inbound(accept={"versions": ["2.5", "2.6"], "message_types": ["ADT", "ORU^R01"]},
                      max_message_bytes=200_000, idle_timeout=30),
    })
    return cfg, tmp_path / "data"


@pytest_twisted.async_yield_fixture
async def engine(engine_dirs):
    engine = await start_engine(*engine_dirs)
    yield engine
    await engine.stopService()


def journal(engine) -> JournalReader:
    return JournalReader(engine.journal.data_dir)


@pytest_twisted.ensureDeferred
async def test_accepted_message_is_journaled_before_aa(engine):
    client = await client_for(engine, "in")
    ack = await exchange(client, sample_adt("A-1").encode())
    assert (ack.code, ack.control_id) == ("AA", "A-1")
    events = intake_events(journal(engine))
    assert [(e.state, e.control_id, e.msg_type) for e in events] == [("received", "A-1", "ADT^A01")]
    stored = journal(engine).load_message(events[0].message_uid)
    assert stored.raw == sample_adt("A-1").encode()
    client.close()


@pytest_twisted.ensureDeferred
async def test_unsupported_version_is_ae_203_and_kept(engine):
    # AE: the message itself is wrong, resending it unchanged cannot help (volets §c, ANS example).
    client = await client_for(engine, "in")
    ack = await exchange(client, sample_adt("V-1", version="2.3").encode())
    assert ack.code == "AE" and ack.control_id == "V-1"
    assert "|MSH^1^12|203^" in ack.errors[0]
    [event] = intake_events(journal(engine))
    assert event.state == "rejected" and "2.3" in event.detail
    client.close()


@pytest_twisted.ensureDeferred
async def test_unsupported_type_is_ae_200_and_unknown_trigger_201(engine):
    client = await client_for(engine, "in")
    ack = await exchange(client, sample_adt("T-1", msg_type="ORM^O01^ORM_O01").encode())
    assert ack.code == "AE" and "|200^" in ack.errors[0]
    ack = await exchange(client, sample_adt("T-2", msg_type="ORU^R30^ORU_R30").encode())
    assert ack.code == "AE" and "|201^" in ack.errors[0]


@pytest_twisted.ensureDeferred
async def test_header_errors_are_ae_with_their_table_0357_code(engine):
    client = await client_for(engine, "in")
    no_id = sample_adt("").encode()
    ack = await exchange(client, no_id)
    assert ack.code == "AE" and "|MSH^1^10|101^" in ack.errors[0]
    ack = await exchange(client, sample_adt("PI-1").replace("|PI-1|P|", "|PI-1|X|").encode())
    assert ack.code == "AE" and "|MSH^1^11|202^" in ack.errors[0]
    ack = await exchange(client, sample_adt("MT-1", msg_type="").encode())
    assert ack.code == "AE" and "|MSH^1^9|101^" in ack.errors[0]
    client.close()


@pytest_twisted.ensureDeferred
async def test_garbage_frame_is_ae_and_quarantined(engine):
    client = await client_for(engine, "in")
    ack = await exchange(client, b"\x00\x01 this is not HL7 \xff")
    assert ack.code == "AE" and "|100^" in ack.errors[0]
    [event] = intake_events(journal(engine))
    assert event.state == "rejected"
    assert journal(engine).load_message(event.message_uid).raw == b"\x00\x01 this is not HL7 \xff"
    client.close()


@pytest_twisted.ensureDeferred
async def test_duplicate_gets_original_ack_and_is_recorded(engine):
    client = await client_for(engine, "in")
    first = await exchange(client, sample_adt("D-1").encode())
    again = await exchange(client, sample_adt("D-1", name="OTHER^Name").encode())
    assert again.raw == first.raw
    states = [e.state for e in intake_events(journal(engine))]
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
    [event] = intake_events(journal(engine))
    assert journal(engine).load_message(event.message_uid).raw.decode("iso8859-15").count("CŒUR^Éloïse€ç") == 1
    assert journal(engine).patient_label(event.message_uid) == "IPP001 CŒUR Éloïse€ç"
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
    # AE: the same bytes would be refused again; only a smaller message (or a new limit) passes.
    client = await client_for(engine, "in")
    big = sample_adt("BIG-1") + "NTE|1||" + "x" * 300_000 + "\r"
    ack = await exchange(client, big.encode())
    assert ack.code == "AE" and ack.control_id == "BIG-1" and "exceeds" in ack.errors[0]
    await client.lost  # the engine closes the connection after the NACK
    [event] = intake_events(journal(engine))
    assert event.state == "rejected" and len(journal(engine).load_message(event.message_uid).raw) == 4096


@pytest_twisted.ensureDeferred
async def test_noise_between_frames_is_kept_and_next_frame_served(engine):
    client = await client_for(engine, "in")
    client.transport.write(b"NOISE-BYTES")
    ack = await exchange(client, sample_adt("N-1").encode())
    assert ack.code == "AA"
    states = sorted(e.state for e in intake_events(journal(engine)))
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
    assert [e.control_id for e in intake_events(journal(engine))] == ["X-2"]
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
    [found] = [o for o in gc.get_objects() if isinstance(o, MLLPServerProtocol)
               and o.transport.connected and o.transport.getPeer().port == local_port]
    return found
