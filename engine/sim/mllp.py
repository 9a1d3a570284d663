"""An MLLP system standing in for a RIS, a teleradiology platform or a DRIMbox (`pfi sim mllp`):
it records every message it receives, with the time, and answers each one by a policy (AA by
default; AE/AR, no answer, or held ACKs let go later). The demo, the benchmarks and the tests use
this one peer."""

from __future__ import annotations

import time
from typing import Callable

from twisted.internet import protocol

from engine.hl7.encode import escape
from engine.hl7.scan import scan
from engine.mllp.directwrite import write_now
from engine.mllp.framing import Frame, MLLPDecoder, frame

#: (raw message, how many were received before it) -> MSA-1 code, or None to never answer
Answer = Callable[[bytes, int], "str | None"]


def always(code: str) -> Answer:
    return lambda raw, n: code


def ack_for(raw: bytes, code: str, sender: str = "PEER") -> bytes:
    """The ACK a destination sends for `raw` (MSA-2 = its MSH-10)."""
    return ack_for_control_id(scan(raw).control_id, code, sender)


def ack_for_control_id(control_id: str, code: str, sender: str = "PEER") -> bytes:
    """The ACK of the message whose MSH-10 is `control_id` (for a peer that scanned it already)."""
    control_id = escape(control_id[:199])
    return (
        f"MSH|^~\\&|{sender}|X|PFI|Y|{time.strftime('%Y%m%d%H%M%S')}||ACK|A{control_id}|P|2.5\r"
        f"MSA|{code}|{control_id}\r"
    ).encode()


class MllpPeer(protocol.ServerFactory):
    """Records each message (`received`, with its arrival time in `times`); `answer` decides its
    ACK code, `ack(raw, code)` writes the ACK (default: `ack_for`); `keep(code)` says which
    messages count as received (all by default; a test may keep the accepted ones only)."""

    def __init__(
        self,
        name: str = "PEER",
        answer: Answer = always("AA"),
        keep: Callable[[str | None], bool] = lambda code: True,
        ack: Callable[[bytes, str], bytes] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.name, self.answer, self.keep, self.clock = name, answer, keep, clock
        self.ack = ack or (lambda raw, code: ack_for(raw, code, name))
        self.received: list[bytes] = []
        self.times: list[float] = []
        self.connections = 0
        self.held: list | None = None  # ACKs held back by `hold` until `release`
        self.port = None

    def buildProtocol(self, addr):
        self.connections += 1
        peer = _PeerProtocol()
        peer.factory = self
        return peer

    def listen(self, reactor, port: int = 0, interface: str = "127.0.0.1") -> int:
        self.port = reactor.listenTCP(port, self, interface=interface)
        return self.port.getHost().port

    def close(self):
        return self.port.stopListening()

    def hold(self) -> None:
        self.held = []

    def release(self) -> None:
        held, self.held = self.held or [], None
        for transport, ack in held:
            transport.write(ack)  # a no-op on a connection closed meanwhile

    def control_ids(self) -> list[str]:
        return [scan(raw).control_id for raw in self.received]

    def summary(self) -> list[str]:
        return [f"{h.message_type} {h.control_id}" for h in map(scan, self.received)]

    def on_message(self, transport, raw: bytes) -> None:
        code = self.answer(raw, len(self.received))
        if self.keep(code):
            self.received.append(raw)
            self.times.append(self.clock())
        if code is None:
            return
        ack = frame(self.ack(raw, code))
        if self.held is None:
            write_now(transport, ack)  # a simulator shares the machine with the engine it serves
        else:
            self.held.append((transport, ack))


class _PeerProtocol(protocol.Protocol):
    factory: MllpPeer

    def connectionMade(self):
        self.decoder = MLLPDecoder()

    def dataReceived(self, data):
        for event in self.decoder.feed(data):
            if isinstance(event, Frame):
                self.factory.on_message(self.transport, event.payload)
