"""Real MLLP destinations on 127.0.0.1 for the sender tests: each answers as the test scripts it."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer, protocol, reactor

from engine.config.channels import MllpOutSettings
from engine.mllp.framing import Frame, MLLPDecoder, frame
from engine.tls import server_context


def message(control_id: str) -> bytes:
    """A small ORU with a fictional patient and the given MSH-10."""
    return (
        f"MSH|^~\\&|PFI|CHU-X|DEST|TELERAD|20261122101010||ORU^R01^ORU_R01|{control_id}|P|2.5\r"
        "PID|1||IPP001^^^CHU-X^PI||TESTPATIENT^Fictif||19800101|F\r"
        "OBR|1||ACC1|CR^Compte rendu\r"
        "OBX|1|TX|CR^Compte rendu||Texte fictif||||||F\r"
    ).encode()


def ack(control_id: str, code: str = "AA", error: str = "") -> bytes:
    """An HL7 ACK as a destination would answer `control_id`."""
    text = (
        f"MSH|^~\\&|DEST|TELERAD|PFI|CHU-X|20261122101011||ACK^R01^ACK|A{control_id}|P|2.5\rMSA|{code}|{control_id}\r"
    )
    if error:
        text += f"ERR|||207^Application internal error^HL70357|E|||{error}\r"
    return text.encode()


def control_id(payload: bytes) -> str:
    return payload.split(b"\r", 1)[0].split(b"|")[9].decode()


def answer_with(code: str) -> Callable:
    """Behaviour: answer every message with `code` at once."""

    def behave(peer: "PeerProtocol", payload: bytes) -> None:
        peer.transport.write(frame(ack(control_id(payload), code)))

    return behave


def hold(peer: "PeerProtocol", payload: bytes) -> None:
    """Behaviour: accept the message and never answer (the test may answer later)."""


class PeerProtocol(protocol.Protocol):
    def connectionMade(self):
        self.decoder = MLLPDecoder()
        self.closed = defer.Deferred()
        self.factory.connections.append(self)

    def dataReceived(self, data: bytes):
        if not self.factory.first_bytes.called:
            self.factory.first_bytes.callback(data)
        for event in self.decoder.feed(data):
            if isinstance(event, Frame):
                self.factory.arrived(self, event.payload)

    def connectionLost(self, reason=protocol.connectionDone):
        self.closed.callback(None)


class Peer(protocol.ServerFactory):
    """A destination: `behave(peer_protocol, payload)` decides the answer to each message."""

    protocol = PeerProtocol

    def __init__(self, behave: Callable):
        self.behave = behave
        self.connections: list[PeerProtocol] = []
        self.received: list[tuple[PeerProtocol, bytes]] = []
        self._waiters: dict[int, defer.Deferred] = {}
        self.first_bytes = defer.Deferred()  # fires with the first bytes any client sends
        self.port = None

    def listen(self, tls=None) -> "Peer":
        if tls is None:
            self.port = reactor.listenTCP(0, self, interface="127.0.0.1")
        else:
            self.port = reactor.listenSSL(0, self, server_context(tls), interface="127.0.0.1")
        return self

    def arrived(self, peer: PeerProtocol, payload: bytes) -> None:
        self.received.append((peer, payload))
        waiter = self._waiters.pop(len(self.received) - 1, None)
        self.behave(peer, payload)
        if waiter is not None:
            waiter.callback((peer, payload))

    def nth(self, index: int) -> defer.Deferred:
        """Fires with (connection, payload) once the `index`-th message (from 0) has arrived."""
        if index < len(self.received):
            return defer.succeed(self.received[index])
        return self._waiters.setdefault(index, defer.Deferred())

    def settings(self, **overrides) -> MllpOutSettings:
        values = dict(
            name="dest",
            type="mllp-out",
            host="127.0.0.1",
            port=self.port.getHost().port,
            ack_timeout=10.0,
            connect_timeout=5.0,
        )
        values.update(overrides)
        return MllpOutSettings(**values)

    async def stop(self) -> None:
        await self.port.stopListening()
        for conn in self.connections:
            if not conn.closed.called:
                conn.transport.abortConnection()
        await defer.DeferredList([c.closed for c in self.connections])
