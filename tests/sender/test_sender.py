"""MLLPSender against real MLLP peers on 127.0.0.1 (ACK timeouts on an injected task.Clock)."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from engine.mllp.client import read_ack
from engine.mllp.framing import frame
from engine.mllp.sender import MLLPSender, SendOutcome
from tests.sender.peers import Peer, ack, answer_with, control_id, hold, message


async def exchange_once(behave, **settings) -> tuple[SendOutcome, Peer]:
    peer = Peer(behave).listen()
    sender = MLLPSender(reactor, peer.settings(**settings))
    try:
        return await sender.send(message("1001")), peer
    finally:
        await sender.close()
        await peer.stop()


@pytest_twisted.ensureDeferred
async def test_aa_is_done_and_carries_the_ack():
    outcome, peer = await exchange_once(answer_with("AA"))
    assert (outcome.action, outcome.kind, outcome.ack_code) == ("done", "AA", "AA")
    assert b"MSA|AA|1001" in outcome.ack
    assert [payload for _, payload in peer.received] == [message("1001")]


@pytest_twisted.ensureDeferred
async def test_ar_for_ever_is_retry_each_time():
    peer = Peer(answer_with("AR")).listen()
    sender = MLLPSender(reactor, peer.settings())
    outcomes = [await sender.send(message(f"20{i}")) for i in range(3)]
    await sender.close()
    await peer.stop()
    assert [(o.action, o.ack_code) for o in outcomes] == [("retry", "AR")] * 3
    assert len(peer.connections) == 1  # an AR answer keeps the stream in step


@pytest_twisted.ensureDeferred
async def test_ack_written_in_fragments_is_reassembled():
    def dribble(peer, payload, wire=None):
        # 7 bytes per reactor turn, so that the ACK reaches the sender in several reads
        wire = frame(ack(control_id(payload))) if wire is None else wire
        peer.transport.write(wire[:7])
        if wire[7:]:
            reactor.callLater(0, dribble, peer, payload, wire[7:])

    outcome, _ = await exchange_once(dribble)
    assert (outcome.action, outcome.ack) == ("done", ack("1001"))


@pytest_twisted.ensureDeferred
async def test_ae_is_dead_with_the_err_text_in_the_reason():
    def reject(peer, payload):
        peer.transport.write(frame(ack(control_id(payload), "AE", error="unknown patient")))

    outcome, _ = await exchange_once(reject)
    assert (outcome.action, outcome.ack_code) == ("dead", "AE")
    assert outcome.reason.startswith("AE from destination") and "unknown patient" in outcome.reason


@pytest_twisted.ensureDeferred
async def test_reply_policy_overrides_defaults():
    outcome, _ = await exchange_once(answer_with("AE"), reply_policy={"AE": "retry"})
    assert (outcome.action, outcome.kind) == ("retry", "AE")


@pytest_twisted.ensureDeferred
async def test_silent_destination_times_out_and_late_ack_is_never_paired():
    clock = task.Clock()
    first_held = []

    def hold_first(peer, payload):
        if not first_held:
            first_held.append(peer)  # accepts TCP and the message, answers only much later
        else:
            answer_with("AA")(peer, payload)

    peer = Peer(hold_first).listen()
    sender = MLLPSender(reactor, peer.settings(ack_timeout=0.2), clock=clock)
    first = defer.ensureDeferred(sender.send(message("3001")))
    await peer.nth(0)
    clock.advance(0.2)
    timed_out = await first
    # The late ACK for 3001 is written now, after the timeout: it must not reach the next send.
    first_held[0].transport.write(frame(ack("3001")))
    second = await sender.send(message("3002"))
    await sender.close()
    await peer.stop()
    assert (timed_out.action, timed_out.kind) == ("retry", "timeout")
    assert timed_out.reason == "timeout: no ACK within 0.2 s"
    assert (second.action, second.kind) == ("done", "AA")
    assert b"MSA|AA|3002" in second.ack
    assert len(peer.connections) == 2  # the timed-out connection was dropped, not reused


@pytest_twisted.ensureDeferred
async def test_timeout_policy_can_dead_letter():
    clock = task.Clock()
    peer = Peer(hold).listen()
    sender = MLLPSender(reactor, peer.settings(ack_timeout=5, reply_policy={"timeout": "dead"}), clock=clock)
    pending = defer.ensureDeferred(sender.send(message("3101")))
    await peer.nth(0)
    clock.advance(4.9)
    assert not pending.called
    clock.advance(0.1)
    outcome = await pending
    await sender.close()
    await peer.stop()
    assert (outcome.action, outcome.kind) == ("dead", "timeout")


@pytest_twisted.ensureDeferred
async def test_stale_ack_on_the_new_connection_is_a_mismatch():
    # A destination that queues its answers across connections: after our timeout it sends the
    # ACK of the old message first on the new connection.
    clock = task.Clock()
    seen: list[str] = []

    def answer_previous(peer, payload):
        seen.append(control_id(payload))
        if len(seen) > 1:
            peer.transport.write(frame(ack(seen[-2])))

    peer = Peer(answer_previous).listen()
    sender = MLLPSender(reactor, peer.settings(ack_timeout=1), clock=clock)
    first = defer.ensureDeferred(sender.send(message("4001")))
    await peer.nth(0)
    clock.advance(1)
    await first
    second = await sender.send(message("4002"))
    await sender.close()
    await peer.stop()
    assert (second.action, second.kind, second.ack_code) == ("retry", "mismatch", "AA")
    assert second.reason == "mismatch: ACK for MSH-10 '4001', sent '4002'"


@pytest_twisted.ensureDeferred
async def test_wrong_msa2_is_mismatch_and_drops_the_connection():
    def wrong_id(peer, payload):
        peer.transport.write(frame(ack("SOMETHING-ELSE")))

    peer = Peer(wrong_id).listen()
    sender = MLLPSender(reactor, peer.settings(reply_policy={"mismatch": "dead"}))
    outcomes = [await sender.send(message("5001")), await sender.send(message("5002"))]
    await sender.close()
    await peer.stop()
    assert [(o.action, o.kind) for o in outcomes] == [("dead", "mismatch")] * 2
    assert len(peer.connections) == 2


@pytest.mark.parametrize(
    "answer, what",
    [
        (frame(b"HELLO, this is not HL7"), "no MSH segment"),
        (frame(b"MSH|^~\\&|DEST|X|PFI|X|20261122||ACK|A1|P|2.5\r"), "MSA-1 ''"),
        (frame(b"MSH|^~\\&|DEST|X|PFI|X|20261122||ACK|A1|P|2.5\rMSA|OK|6001\r"), "MSA-1 'OK'"),
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "unframed bytes"),
        (frame(b"MSH|" + b"x" * (1024 * 1024 + 1)), "an oversized frame"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_garbage_answers(answer, what):
    outcome, _ = await exchange_once(lambda peer, payload: peer.transport.write(answer))
    assert (outcome.action, outcome.kind) == ("retry", "garbage")
    assert outcome.reason == f"garbage: answer is not an HL7 ACK: {what}"


@pytest_twisted.ensureDeferred
async def test_connection_refused_is_retry_with_reason():
    closed = Peer(hold).listen()
    settings = closed.settings()
    await closed.stop()  # nothing listens on that port any more
    sender = MLLPSender(reactor, settings)
    outcome = await sender.send(message("7001"))
    await sender.close()
    assert (outcome.action, outcome.kind) == ("retry", "refused")
    assert outcome.reason.startswith("connection refused: "), outcome.reason
    assert "ConnectionRefusedError" in outcome.reason


@pytest_twisted.ensureDeferred
async def test_peer_closing_mid_exchange_is_retry_then_reconnects():
    def close_first(peer, payload):
        if len(peer.factory.received) == 1:
            peer.transport.loseConnection()
        else:
            answer_with("AA")(peer, payload)

    peer = Peer(close_first).listen()
    sender = MLLPSender(reactor, peer.settings())
    lost = await sender.send(message("8001"))
    again = await sender.send(message("8001"))
    await sender.close()
    await peer.stop()
    assert (lost.action, lost.kind) == ("retry", "lost")
    assert lost.reason.startswith("connection lost before the ACK")
    assert (again.action, again.kind) == ("done", "AA")
    assert len(peer.connections) == 2


@pytest_twisted.ensureDeferred
async def test_connection_is_reused_across_sends():
    peer = Peer(answer_with("AA")).listen()
    sender = MLLPSender(reactor, peer.settings())
    outcomes = [await sender.send(message(f"90{i}")) for i in range(5)]
    await sender.close()
    await peer.stop()
    assert {o.action for o in outcomes} == {"done"}
    assert len(peer.connections) == 1 and sender.connections_made == 1


@pytest_twisted.ensureDeferred
async def test_unsolicited_frame_between_sends_forces_a_new_connection():
    def ack_twice(peer, payload):
        peer.transport.write(frame(ack(control_id(payload))) + frame(ack(control_id(payload))))

    peer = Peer(ack_twice).listen()
    sender = MLLPSender(reactor, peer.settings())
    outcomes = [await sender.send(message("9101")), await sender.send(message("9102"))]
    await sender.close()
    await peer.stop()
    assert [(o.action, o.ack) for o in outcomes] == [("done", ack("9101")), ("done", ack("9102"))]
    assert len(peer.connections) == 2


@pytest_twisted.ensureDeferred
async def test_concurrent_sends_are_serialised_in_order():
    peer = Peer(hold).listen()
    sender = MLLPSender(reactor, peer.settings())
    ids = [f"10{i:02d}" for i in range(6)]
    pending = [defer.ensureDeferred(sender.send(message(cid))) for cid in ids]
    for index, cid in enumerate(ids):
        conn, payload = await peer.nth(index)
        assert len(peer.received) == index + 1  # nothing else written before this ACK
        assert control_id(payload) == cid
        conn.transport.write(frame(ack(cid)))
    outcomes = [await d for d in pending]
    await sender.close()
    await peer.stop()
    assert [o.ack for o in outcomes] == [ack(cid) for cid in ids]
    assert len(peer.connections) == 1


@pytest_twisted.ensureDeferred
async def test_message_without_msh10_is_dead_and_not_sent():
    peer = Peer(answer_with("AA")).listen()
    sender = MLLPSender(reactor, peer.settings())
    outcome = await sender.send(b"MSH|^~\\&|PFI|X|DEST|Y|20261122||ORU^R01|||P|2.5\rPID|1\r")
    not_hl7 = await sender.send(b"just text")
    await sender.close()
    await peer.stop()
    assert (outcome.action, outcome.kind) == ("dead", "invalid")
    assert (not_hl7.action, not_hl7.kind) == ("dead", "invalid")
    assert peer.connections == []


@pytest_twisted.ensureDeferred
async def test_close_during_a_send_returns_retry_and_later_sends_are_refused():
    peer = Peer(hold).listen()
    sender = MLLPSender(reactor, peer.settings())
    pending = defer.ensureDeferred(sender.send(message("1101")))
    await peer.nth(0)
    await sender.close()
    interrupted = await pending
    after = await sender.send(message("1102"))
    await peer.stop()
    assert (interrupted.action, interrupted.kind) == ("retry", "lost")
    assert (after.action, after.reason) == ("retry", "sender closed")


@pytest.mark.parametrize(
    "raw, code, control, errors",
    [
        (b"MSH|^~\\&|R|F|P|X|2026||ACK|A1|P|2.5\rMSA|AA|C1\r", "AA", "C1", ()),
        # LF separators, ERR segments kept whole, the last MSA wins
        (b"MSH|^~\\&|R\nMSA|AE|C2\nERR|||207^x|E\nERR|||101|E\n", "AE", "C2", ("ERR|||207^x|E", "ERR|||101|E")),
        # segment names are whole fields: MSAX and ERRR are other segments
        (b"MSH|^~\\&|R\rMSAX|AA|no\rERRR|1\rMSA|AR|C3\r", "AR", "C3", ()),
        # the field separator is the one MSH declares
        (b"MSH#^~\\&#R\rMSA#CA#C4\rMSA|AA|no\r", "CA", "C4", ()),
        (b"MSH|^~\\&|R\rPID|1\r", "", "", ()),
        (b"MSA\r", "", "", ()),
    ],
)
def test_reading_an_ack(raw, code, control, errors):
    info = read_ack(raw)
    assert (info.code, info.control_id, info.errors, info.raw) == (code, control, errors, raw)
