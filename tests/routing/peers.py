"""A destination MLLP peer for routing tests: records what it gets, answers by a policy."""

from __future__ import annotations


from twisted.internet import protocol, reactor

from engine.hl7.scan import scan
from engine.mllp.framing import Frame, MLLPDecoder
from engine.sim.mllp import MllpPeer


class RecordingPeer(MllpPeer):
    """The shared MLLP peer (engine/sim/mllp.py), keeping the messages it accepted (AA)."""

    def __init__(self, answer=lambda raw, n: "AA"):
        super().__init__("PEER", answer, keep=lambda code: code == "AA")

    async def listen(self) -> int:
        return super().listen(reactor)

    async def close(self):
        await super().close()


#: ACKs held back (`hold`) and let go (`release`): the shared peer does both
HoldingPeer = RecordingPeer


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
            e.payload for e in MLLPDecoder().feed(bytes(buffer)) if isinstance(e, Frame)
        )
        return reader

    async def listen(self) -> int:
        self.port = reactor.listenTCP(0, self, interface="127.0.0.1")
        return self.port.getHost().port

    async def close(self):
        await self.port.stopListening()

    def control_ids(self) -> list[str]:
        return [scan(m).control_id for m in self.received]


def refuse_first_follow_up_apply(monkeypatch) -> list:
    """The first follow-up plan's journal write is refused (what a full disk does); the list
    returned gets its delivery id. Later applies go through."""
    from engine.errors import JournalError
    from engine.routing import dispatcher as dispatching

    real_apply, refused = dispatching._apply_follow_up, []

    def apply_refused_once(journal, conn, plan, delivery_id, *rest):
        if not refused:
            refused.append(delivery_id)
            raise JournalError("journal write failed: disk full")
        return real_apply(journal, conn, plan, delivery_id, *rest)

    monkeypatch.setattr(dispatching, "_apply_follow_up", apply_refused_once)
    return refused


from tests.support import until  # noqa: E402,F401 - where the routing tests import it from
