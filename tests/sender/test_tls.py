"""MLLPSender over mutual TLS against a real TLS MLLP peer (throw-away PKI from engine.pki)."""

from __future__ import annotations

import pytest
import pytest_twisted
from cryptography.x509.oid import NameOID
from twisted.internet import defer, reactor, task

from engine.config.channels import TlsSettings
from engine.mllp.framing import frame
from engine.mllp.sender import MLLPSender
from engine.pki import generate_test_pki
from tests.sender.peers import Peer, ack, control_id, hold, message


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return generate_test_pki(tmp_path_factory.mktemp("pki"))


def server_tls(pki) -> TlsSettings:
    return TlsSettings(
        certificate=str(pki.server.cert), key=str(pki.server.key), ca=str(pki.ca.cert), require_client_certificate=True
    )


def client_tls(pki, pair=None, ca=None) -> TlsSettings:
    pair = pair or pki.client
    return TlsSettings(certificate=str(pair.cert), key=str(pair.key), ca=str(ca or pki.ca.cert))


def answer_with_client_cn(peer, payload):
    """AA, recording the CN of the client certificate the peer saw."""
    subject = peer.transport.getPeerCertificate().to_cryptography().subject
    peer.factory.client_names.append(subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    peer.transport.write(frame(ack(control_id(payload))))


async def send_over_tls(pki, tls: TlsSettings):
    peer = Peer(answer_with_client_cn).listen(server_tls(pki))
    peer.client_names = []
    sender = MLLPSender(reactor, peer.settings(tls=tls))
    try:
        outcomes = [await sender.send(message("T001")), await sender.send(message("T002"))]
    finally:
        await sender.close()
        await peer.stop()
    return outcomes, peer


@pytest_twisted.ensureDeferred
async def test_mutual_tls_delivers_with_the_client_certificate(pki):
    outcomes, peer = await send_over_tls(pki, client_tls(pki))
    assert [(o.action, o.ack) for o in outcomes] == [("done", ack("T001")), ("done", ack("T002"))]
    assert peer.client_names == ["3300017985 ORG", "3300017985 ORG"]
    assert len(peer.connections) == 1


@pytest_twisted.ensureDeferred
async def test_destination_not_trusted_is_retry_without_sending(pki):
    outcomes, peer = await send_over_tls(pki, client_tls(pki, ca=pki.other_ca.cert))
    assert {(o.action, o.kind) for o in outcomes} == {("retry", "refused")}
    assert outcomes[0].reason.startswith("TLS handshake failed: ")
    assert peer.received == []


@pytest_twisted.ensureDeferred
async def test_client_certificate_refused_by_destination_is_retry(pki):
    outcomes, peer = await send_over_tls(pki, client_tls(pki, pair=pki.client_other_ca))
    assert {o.action for o in outcomes} == {"retry"}
    assert {o.kind for o in outcomes} <= {"refused", "lost"}  # TLS 1.3 reports it after the handshake
    assert peer.received == [] and peer.client_names == []


@pytest_twisted.ensureDeferred
async def test_destination_that_never_completes_the_handshake_is_retry(pki):
    clock = task.Clock()
    plain = Peer(hold).listen()  # accepts TCP, reads our ClientHello, never answers it
    sender = MLLPSender(reactor, plain.settings(tls=client_tls(pki), connect_timeout=3), clock=clock)
    pending = defer.ensureDeferred(sender.send(message("T101")))
    hello = await plain.first_bytes
    clock.advance(3)
    outcome = await pending
    await sender.close()
    await plain.stop()
    assert hello[:1] == b"\x16"  # a TLS handshake record
    assert (outcome.action, outcome.kind) == ("retry", "refused")
    assert outcome.reason.startswith("TLS handshake failed: TimeoutError")
    # The message never went out in clear. (The ClientHello's random bytes may by chance hold a
    # VT ... FS CR run that the peer's MLLP decoder reads as a frame: that is not a message.)
    assert not any(payload.startswith(b"MSH") for _, payload in plain.received)
