"""A destination MLLP peer for routing tests: records what it gets, answers by a policy."""

from __future__ import annotations

import time

from twisted.internet import defer, protocol, reactor

from engine.hl7.scan import scan
from engine.mllp.framing import Frame, MLLPDecoder, frame


class RecordingPeer(protocol.ServerFactory):
    def __init__(self, answer=lambda raw, n: "AA"):
        self.received: list[bytes] = []
        self.answer = answer
        self.port = None

    def buildProtocol(self, addr):
        self.connections = getattr(self, "connections", 0) + 1
        p = _PeerProtocol()
        p.factory = self
        return p

    async def listen(self) -> int:
        self.port = reactor.listenTCP(0, self, interface="127.0.0.1")
        return self.port.getHost().port

    async def close(self):
        await self.port.stopListening()

    def send_ack(self, transport, ack: bytes) -> None:
        transport.write(ack)

    def control_ids(self) -> list[str]:
        return [scan(m).control_id for m in self.received]


class HoldingPeer(RecordingPeer):
    """A RecordingPeer whose ACKs can be held back (`hold`) and let go (`release`)."""

    def __init__(self, answer=lambda raw, n: "AA"):
        super().__init__(answer)
        self.held: list | None = None

    def hold(self) -> None:
        self.held = []

    def release(self) -> None:
        held, self.held = self.held or [], None
        for transport, ack in held:
            transport.write(ack)  # a no-op on a connection closed meanwhile

    def send_ack(self, transport, ack: bytes) -> None:
        if self.held is None:
            transport.write(ack)
        else:
            self.held.append((transport, ack))


class SilentPeer(protocol.ServerFactory):
    """Like the reference DRIMbox: reads until the peer closes, never answers."""

    def __init__(self):
        self.received: list[bytes] = []
        self.connections = 0
        self.port = None

    def buildProtocol(self, addr):
        self.connections += 1
        reader = protocol.Protocol()
        buffer = bytearray()
        reader.dataReceived = buffer.extend
        reader.connectionLost = lambda reason=None: self.received.extend(
            e.payload for e in MLLPDecoder().feed(bytes(buffer)) if isinstance(e, Frame))
        return reader

    async def listen(self) -> int:
        self.port = reactor.listenTCP(0, self, interface="127.0.0.1")
        return self.port.getHost().port

    async def close(self):
        await self.port.stopListening()

    def control_ids(self) -> list[str]:
        return [scan(m).control_id for m in self.received]


class _PeerProtocol(protocol.Protocol):
    def connectionMade(self):
        self.decoder = MLLPDecoder()

    def dataReceived(self, data):
        for event in self.decoder.feed(data):
            if isinstance(event, Frame):
                self._answer(event.payload)

    def _answer(self, raw: bytes):
        f = self.factory
        code = f.answer(raw, len(f.received))
        if code in ("AA",):
            f.received.append(raw)
        if code is None:
            return  # never answers
        ctrl = scan(raw).control_id
        f.send_ack(self.transport, frame(f"MSH|^~\\&|PEER|X|PFI|Y|20260101||ACK|{ctrl}A|P|2.5\rMSA|{code}|{ctrl}\r".encode()))


async def until(condition, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        d = defer.Deferred()
        reactor.callLater(0.01, d.callback, None)
        await d
